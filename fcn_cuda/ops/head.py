"""FCN's last stage fused (csrc/kernels/head.cuh): the final upsample, its
crop and the softmax / argmax over classes in one kernel.
"""

import numpy as np

from .. import _backend
from .. import _validate as V
from .upsample import is_diagonal, transpose_args, window_args

__all__ = ["upsample_argmax"]

def upsample_argmax(x, w, stride, out_h, out_w, offset, probs=False, *, trusted=False):
    """FCN's last stage in one kernel (csrc/kernels/head.cuh): the labels
    ``argmax(softmax(conv_transpose2d_window(x, w, stride, out_h, out_w, offset)))``,
    an N x out_h x out_w int32 map, computed without ever storing the
    N x C x out_h x out_w upsampled scores. probs=True returns (labels,
    probabilities), the softmax over channels (N x C x out_h x out_w).

    x: N x C x H x W coarse scores; w: C x C x R x S per-channel weights
    (w[i, j] == 0 for i != j: FCN's bilinear upsampling); stride and offset:
    int or (vertical, horizontal); the window must lie within the full
    (H - 1) * s + R output. w is checked on the device (a host sync on a GPU)
    unless trusted=True, as for conv_transpose2d's 'bilinear' variant. The
    upsampled values are those of conv_transpose2d_window bit for bit, so the
    labels equal ops.argmax of the unfused sequence exactly: ties go to the
    lowest channel, the first NaN wins.
    """
    be = _backend.active()
    x, w, _, stride, full = transpose_args(x, w, None, stride, None, be)
    out_h, out_w, (oy, ox) = window_args(out_h, out_w, offset, full)
    probs, trusted = V.flag(probs, "probs"), V.flag(trusted, "trusted")
    n, c = x.shape[:2]
    V.fits_int32(n * out_h * out_w, "the labels")
    if probs:
        V.fits_int32(n * c * out_h * out_w, "probs")
    if not (trusted or is_diagonal(be, w)):
        raise ValueError(f"w must be per-channel for upsample_argmax (C_in == C_out and w[i, j] == 0 for "
                         f"i != j), got w of shape {tuple(w.shape)} that is not; use conv_transpose2d_window "
                         f"and argmax")
    labels = be.empty((n, out_h, out_w), dtype=np.int32)
    p = be.empty((n, c, out_h, out_w)) if probs else None
    t = be.ext.TransposeShape(x.shape, w.shape, stride, (oy, ox), (out_h, out_w))
    be.ext.upsample_argmax(t, be.ptr(x), be.ptr(w), be.ptr(labels), be.ptr(p) if probs else 0, be.stream())
    return (labels, p) if probs else labels
