"""The first rungs of the study ladder: small kernels that show how the
execution model works and seed the real ops (csrc/kernels/elementwise.cuh,
reduce.cuh, gemm.cuh, scan.cuh, sort.cuh). Each runs on the active backend.
"""

import numpy as np

from . import _backend
from . import _validate as V

__all__ = ["axpy", "block_sum", "warp_segment_sum", "warp_shuffle", "gemm", "exclusive_scan", "sort_pairs",
           "AXPY_VARIANTS", "GEMM_VARIANTS", "SHUFFLE_KINDS"]

SHUFFLE_KINDS = {"idx": 0, "up": 1, "down": 2, "xor": 3}
AXPY_VARIANTS = ("scalar", "float4")
GEMM_VARIANTS = ("naive", "tiled", "wmma_tf32", "wmma_f16", "wmma_bf16")


def axpy(a, x, y, variant="auto"):
    """Returns a * x + y (float32 vectors) from a barrier-free kernel.
    variant: 'float4' (16-byte loads: x must start on a 16-byte boundary),
    'scalar', or 'auto': float4 where x allows it. A view such as x[1:] is
    contiguous but 4 bytes off, and a float4 load from it faults on a GPU."""
    be = _backend.active()
    V.choice(variant, "variant", ("auto",) + AXPY_VARIANTS)
    x = V.array(x, "x", ndim=1, be=be)
    y = V.array(y, "y", ndim=1, be=be)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {x.shape} and {y.shape}")
    out = y.copy()
    aligned = be.ptr(x) % 16 == 0 and be.ptr(out) % 16 == 0
    if variant == "auto":
        variant = "float4" if aligned else "scalar"
    elif variant == "float4" and not aligned:
        raise ValueError(f"variant 'float4' needs x to start on a 16-byte boundary, got address offset "
                         f"{be.ptr(x) % 16}; use variant 'scalar' (or 'auto')")
    be.ext.axpy(variant, x.size, float(a), be.ptr(x), be.ptr(out), be.stream())
    return out


def block_sum(x):
    """Sum of a float32 vector: shared-memory tree per block, then one block over the partials.
    Returns a 1-element array of the backend."""
    be = _backend.active()
    x = V.array(x, "x", ndim=1, be=be)
    partial = be.empty(be.ext.block_sum_partials(x.size))
    out = be.empty(1)
    be.ext.block_sum(be.ptr(x), be.ptr(partial), be.ptr(out), x.size, be.stream())
    return out


def _warp_args(x, kind, width, be):
    x = V.array(x, "x", ndim=1, be=be)
    if x.size % 32:
        raise ValueError(f"x must hold whole warps (a multiple of 32 values), got {x.size}")
    V.choice(kind, "kind", SHUFFLE_KINDS)
    width = V.integer(width, "width", minimum=1, maximum=32)
    if width & (width - 1):
        raise ValueError(f"width must be a power of two, got {width}")
    return x, width


def warp_segment_sum(x, kind="xor", width=32):
    """Sums of consecutive `width`-long segments of x, reduced with one kind of
    warp shuffle ('xor', 'down', 'up' or 'idx')."""
    be = _backend.active()
    x, width = _warp_args(x, kind, width, be)
    if width < 2:
        raise ValueError("width must be at least 2 for a reduction")
    sums = be.empty(x.size // width)
    be.ext.warp_segment_sum(be.ptr(x), be.ptr(sums), x.size, SHUFFLE_KINDS[kind], width, be.stream())
    return sums


def warp_shuffle(x, kind, arg, width=32):
    """What each lane receives from one __shfl_*_sync(0xffffffff, x[lane], arg, width)."""
    be = _backend.active()
    x, width = _warp_args(x, kind, width, be)
    arg = V.integer(arg, "arg", minimum=0, maximum=2**31 - 1)
    y = be.empty(x.size)
    be.ext.warp_shuffle(be.ptr(x), be.ptr(y), x.size, SHUFFLE_KINDS[kind], arg, width, be.stream())
    return y


def gemm(a, b, variant="tiled"):
    """C = A @ B for float32 row-major matrices; variant in GEMM_VARIANTS."""
    be = _backend.active()
    V.choice(variant, "variant", GEMM_VARIANTS)
    a = V.array(a, "a", ndim=2, be=be)
    b = V.array(b, "b", ndim=2, be=be)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"a is {a.shape} and b is {b.shape}: inner dimensions differ")
    m, k = a.shape
    n = b.shape[1]
    V.fits_int32(m * n, "the product")
    c = be.empty((m, n))
    be.ext.gemm(variant, be.ptr(a), be.ptr(b), be.ptr(c), m, n, k, be.stream())
    return c


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
