"""The study ladder's stable radix sort of key-value pairs
(csrc/kernels/sort.cuh), which the dense CRF's lattice sorts its keys with."""

import numpy as np

from .. import _backend
from .. import _validate as V

__all__ = ["sort_pairs"]


def sort_pairs(keys, values, bits=64):
    """(keys, values) sorted stably by the low `bits` bits of the keys (a
    radix sort, 4 bits a pass): uint64 keys, int32 values of the same
    length; the bits above `bits` travel with their key unsorted. Returns
    new arrays; the inputs are only read."""
    be = _backend.active()
    keys = V.array(keys, "keys", ndim=1, dtype=np.uint64, be=be)
    values = V.array(values, "values", ndim=1, dtype=np.int32, be=be)
    if keys.shape != values.shape:
        raise ValueError(f"keys and values must have the same shape, got {keys.shape} and {values.shape}")
    bits = V.integer(bits, "bits", minimum=1, maximum=64)
    n = keys.size
    if n > V.INT32_LIMIT - 31:  # a thread's chunk of 32 keys ends past the last key in int
        raise ValueError(f"keys has {n} elements; the sort takes at most {V.INT32_LIMIT - 31}")
    k, v = keys.copy(), values.copy()
    k_alt, v_alt = be.empty((n,), np.uint64), be.empty((n,), np.int32)
    ws = be.empty((be.ext.sort_pairs_workspace(n),), np.int32)
    if be.ext.sort_pairs(be.ptr(k), be.ptr(v), be.ptr(k_alt), be.ptr(v_alt), be.ptr(ws), n, bits, be.stream()):
        return k_alt, v_alt
    return k, v
