"""Crop and add, and the fused score head (csrc/kernels/crop.cuh).
"""

import numpy as np

from .. import _backend
from .. import _validate as V

__all__ = ["crop_add", "score_crop_add"]

def crop_offset(offset, h, w, hb, wb, name_small, name_big):
    oy, ox = V.pair(offset, "offset", minimum=0)
    if oy + h > hb or ox + w > wb:
        raise ValueError(f"offset {(oy, ox)} puts the {h} x {w} window of {name_small} outside "
                         f"{name_big} ({hb} x {wb})")
    return oy, ox


def crop_add(a, b, offset):
    """a + b[:, :, oy:oy+Ha, ox:ox+Wa] as a new array; offset int or (oy, ox).
    N and C of a and b must match and the window must fit in b."""
    be = _backend.active()
    a = V.array(a, "a", ndim=4, shape_hint="N x C x H x W", be=be)
    b = V.array(b, "b", ndim=4, shape_hint="N x C x H x W", be=be)
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"b must have the N x C of a {a.shape[:2]}, got {b.shape[:2]}")
    n, c, h, w = a.shape
    oy, ox = crop_offset(offset, h, w, b.shape[2], b.shape[3], "a", "b")
    out = be.empty(a.shape)
    be.ext.crop_add(be.ptr(a), be.ptr(b), be.ptr(out), n * c, h, w, b.shape[2], b.shape[3], oy, ox, be.stream())
    return out


def score_crop_add(up, feat, w, b, offset, scale=1.0):
    """up + F.conv2d(scale * feat, w, b)[:, :, oy:oy+H, ox:ox+W] in one kernel.

    FCN's score_pool4 / score_pool3 + crop + sum: the 1x1 convolution (w:
    K x C x 1 x 1, b: K or None) runs only on the window of feat (N x C x Hf
    x Wf) that the crop keeps and is added to up (N x K x H x W). scale
    multiplies feat first (FCN-8s at-once: 0.01 for pool4, 1e-4 for pool3).
    """
    be = _backend.active()
    up = V.array(up, "up", ndim=4, shape_hint="N x K x H x W", be=be)
    feat = V.array(feat, "feat", ndim=4, shape_hint="N x C x Hf x Wf", be=be)
    w = V.array(w, "w", ndim=4, shape_hint="K x C x 1 x 1", be=be)
    n, k, h, wd = up.shape
    c = feat.shape[1]
    if n > 65535 or -(-k // 8) > 65535:  # the launch grid's y (8 classes each) and z (images) limits
        raise ValueError(f"up: at most 65535 images and 524280 classes, got N = {n}, K = {k}")
    if feat.shape[0] != n:
        raise ValueError(f"feat must have the batch size of up ({n}), got {feat.shape[0]}")
    if w.shape != (k, c, 1, 1):
        raise ValueError(f"w must be K x C x 1 x 1 = {(k, c, 1, 1)} (K from up, C from feat), got {w.shape}")
    if b is not None:
        b = V.array(b, "b", ndim=1, be=be)
        if b.shape[0] != k:
            raise ValueError(f"b must have K = {k} values, got {b.shape[0]}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"scale must be a real number, got {type(scale).__name__}")
    oy, ox = crop_offset(offset, h, wd, feat.shape[2], feat.shape[3], "up", "feat")
    out = be.empty(up.shape)
    g = be.ext.ScoreCropShape(up.shape, feat.shape, (oy, ox))
    be.ext.score_crop_add(g, be.ptr(up), be.ptr(feat), be.ptr(w), be.ptr(b) if b is not None else 0, be.ptr(out),
                          float(scale), be.stream())
    return out
