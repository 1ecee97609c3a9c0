"""The study ladder's prefix sum (csrc/kernels/scan.cuh), on which the radix
sort and the dense CRF's lattice place their entries."""

import numpy as np

from .. import _backend
from .. import _validate as V

__all__ = ["exclusive_scan"]


def exclusive_scan(counts):
    """The exclusive prefix sum of int32 counts (out[i] = counts[0] + ... +
    counts[i-1]) and their total, a 1-element int32 array of the backend.
    The counts must be >= 0 and their total fit an int32, as where the dense
    CRF and the radix sort use it; checking that reads them once more (on
    the cuda backend, a wait on the device)."""
    be = _backend.active()
    counts = V.array(counts, "counts", ndim=1, dtype=np.int32, be=be)
    if int(counts.min()) < 0:
        raise ValueError(f"counts must be >= 0, got {int(counts.min())}")
    total = int(counts.sum(dtype=np.int64))
    if total > V.INT32_LIMIT:
        raise ValueError(f"counts sum to {total}; the scan adds in int32 (at most {V.INT32_LIMIT})")
    out = counts.copy()
    ws = be.empty((be.ext.scan_workspace(out.size),), np.int32)
    total_out = be.empty((1,), np.int32)
    be.ext.exclusive_scan(be.ptr(out), out.size, be.ptr(ws), be.ptr(total_out), be.stream())
    return out, total_out
