"""Softmax and argmax over the channels of a score map (csrc/kernels/softmax.cuh).
"""

import numpy as np

from .. import _backend
from .. import _validate as V

__all__ = ["softmax", "argmax", "softmax_argmax", "SOFTMAX_VARIANTS"]

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
