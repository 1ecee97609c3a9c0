"""The reference's input transform (csrc/kernels/preprocess.cuh).
"""

import numpy as np

from .. import _backend
from .. import _validate as V

__all__ = ["preprocess", "MEAN_BGR"]

# The reference's per-channel mean in BGR order (Caffe FCN / pytorch-fcn).
MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)


def preprocess(img):
    """The reference's input transform: an H x W x 3 uint8 RGB image (or a
    batch N x H x W x 3) -> float32 1 x 3 x H x W (N x 3 x H x W), channels
    in BGR order minus MEAN_BGR, values in 0..255 minus the mean."""
    be = _backend.active()
    img = V.array(img, "img", dtype=np.uint8, be=be)  # also refuses > 2**31 - 1 bytes: out has as many floats
    if img.ndim not in (3, 4) or img.shape[-1] != 3:
        raise ValueError(f"img must be H x W x 3 or N x H x W x 3 (RGB, channels last), got shape {tuple(img.shape)}")
    batch = img if img.ndim == 4 else img[None]
    n, h, w, _ = batch.shape
    out = be.empty((n, 3, h, w))
    be.ext.preprocess(be.ptr(batch), be.ptr(out), n, h * w, *MEAN_BGR, be.stream())
    return out
