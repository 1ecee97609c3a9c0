"""Dropout from a counter-based generator, Philox4x32-10 (csrc/kernels/dropout.cuh).
"""

import numpy as np

from .. import _backend
from .. import _validate as V

__all__ = ["dropout", "dropout_backward", "philox4x32_10"]

_UINT32 = 2**32


def dropout_args(p, seed, step):
    p = V.real(p, "p")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p must be in [0, 1), got {p}")
    seed = V.integer(seed, "seed", minimum=0, maximum=_UINT32 - 1)
    step = V.integer(step, "step", minimum=0, maximum=_UINT32 - 1)
    return p, seed, step


def _dropout(x, name, p, seed, step, offset):
    be = _backend.active()
    x = V.array(x, name, be=be)
    p, seed, step = dropout_args(p, seed, step)
    offset = V.integer(offset, "offset", minimum=0, maximum=2**62)
    V.fits_int32(x.size + 4 * 256, f"{name} (rounded up to whole blocks)")
    y = be.empty(x.shape)
    threshold = int(p * _UINT32)  # P(word >= threshold) = 1 - p, to 2^-32
    be.ext.dropout(be.ptr(x), be.ptr(y), x.size, offset, seed, step, threshold, float(np.float32(1.0 / (1.0 - p))),
                   be.stream())
    return y


def dropout(x, p, seed, step, offset=0):
    """Training-mode dropout: x / (1 - p) where kept, 0 where dropped, any
    shape. The mask is Philox4x32-10 (philox4x32_10) keyed by (seed, step)
    with counter (g // 4 mod 2^32, g // 4 // 2^32, 0, 0) for element i at
    g = offset + i (flat index), word g % 4; element i is kept when that word
    >= floor(p * 2^32). `offset` (default 0) places x within a larger batch:
    dropout(x[k:], ..., offset=k * x[0].size) draws dropout(x)[k:]'s mask, as
    a data-parallel rank holding images k.. of the batch needs. Nothing is
    stored: dropout_backward recomputes the mask from (p, seed, step, offset).
    seed and step: ints in [0, 2^32); p in [0, 1); offset in [0, 2^62]."""
    return _dropout(x, "x", p, seed, step, offset)


def dropout_backward(grad_y, p, seed, step, offset=0):
    """The gradient of dropout(x, p, seed, step, offset): grad_y masked and
    scaled by the same mask (recomputed, not stored)."""
    return _dropout(grad_y, "grad_y", p, seed, step, offset)


def philox4x32_10(counters, keys):
    """Random123's Philox4x32-10 as dropout computes it on the device:
    counters: n x 4 uint32, keys: n x 2 uint32 -> n x 4 uint32."""
    be = _backend.active()
    counters = V.array(counters, "counters", ndim=2, dtype=np.uint32, be=be)
    keys = V.array(keys, "keys", ndim=2, dtype=np.uint32, be=be)
    if counters.shape[1] != 4 or keys.shape != (counters.shape[0], 2):
        raise ValueError(f"counters must be n x 4 and keys n x 2, got {tuple(counters.shape)} and "
                         f"{tuple(keys.shape)}")
    V.fits_int32(counters.shape[0] * 6 + 255, "counters")
    packed = be.xp.ascontiguousarray(be.xp.concatenate([counters, keys], axis=1))
    out = be.empty(counters.shape, dtype=np.uint32)
    be.ext.philox_probe(be.ptr(packed), be.ptr(out), counters.shape[0], be.stream())
    return out
