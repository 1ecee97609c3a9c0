"""The kernels as functions: validated arguments, one launch each.

Arrays are NCHW float32, C-contiguous, of the active backend (NumPy on
'host', CuPy on 'cuda'); anything ``xp.asarray`` takes is accepted, arrays of
the other backend are refused. Each function checks its arguments here
(fcn_cuda/_validate.py), allocates the output and calls the matching
launcher in csrc/ops through csrc/bindings.cpp. Semantics are PyTorch's
(see each docstring), checked in tests/ against torch in float64.
"""

import numpy as np

from . import _backend
from . import _validate as V

__all__ = []

# ---- conv2d

# ---- max_pool2d

# ---- conv_transpose2d and bilinear upsampling

# ---- crop_add and the fused score head

# ---- softmax / argmax

SOFTMAX_VARIANTS = ("scalar", "float4")


def _score_map(x, variant, be):
    """Validated N x C x H x W scores and the variant that will run them."""
    V.choice(variant, "variant", ("auto",) + SOFTMAX_VARIANTS)
    # V.array refuses an x beyond 32-bit indexing; no output is larger than x.
    x = V.array(x, "x", ndim=4, shape_hint="N x C x H x W", be=be)
    h, w = x.shape[2:]
    # float4 moves four pixels per load: H*W must split into whole groups
    # and x must start on a 16-byte boundary (outputs are fresh, aligned
    # allocations of NumPy / CuPy).
    vectorizable = (h * w) % 4 == 0 and be.ptr(x) % 16 == 0
    if variant == "auto":
        variant = "float4" if vectorizable else "scalar"
    elif variant == "float4" and not vectorizable:
        raise ValueError(f"variant 'float4' needs x with H*W a multiple of 4 and a 16-byte aligned start, "
                         f"got H x W = {h} x {w} at address offset {be.ptr(x) % 16}")
    return x, variant


def _softmax_argmax(x, variant, probs, labels):
    be = _backend.active()
    x, variant = _score_map(x, variant, be)
    n, c, h, w = x.shape
    p = be.empty(x.shape) if probs else None
    lab = be.empty((n, h, w), dtype=np.int32) if labels else None
    be.ext.softmax_argmax(variant, be.ptr(x), be.ptr(p) if probs else 0, be.ptr(lab) if labels else 0,
                          n, c, h * w, be.stream())
    return p, lab


def softmax(x, variant="auto"):
    """Softmax over the channels (dim 1) of N x C x H x W float32 scores,
    == torch.softmax(x, 1). variant: 'auto' (float4 where H*W % 4 == 0
    and x is 16-byte aligned, else scalar), 'scalar' or 'float4'. A NaN or +inf logit makes its
    pixel's probabilities NaN, -inf logits get probability 0 (as torch)."""
    return _softmax_argmax(x, variant, True, False)[0]


def argmax(x, variant="auto"):
    """Channel index of the maximum of N x C x H x W float32 scores: an
    N x H x W int32 label map, == torch.argmax(x, 1). Ties go to the lowest
    channel; NaN counts as the maximum (the first NaN wins), as in torch."""
    return _softmax_argmax(x, variant, False, True)[1]


def softmax_argmax(x, variant="auto"):
    """(softmax(x), argmax(x)) from one launch: the labels come out of the
    pass that finds each pixel's max and sum (see those functions)."""
    return _softmax_argmax(x, variant, True, True)


__all__ += ["softmax", "argmax", "softmax_argmax", "SOFTMAX_VARIANTS"]

# ---- preprocessing

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


__all__ += ["preprocess", "MEAN_BGR"]
