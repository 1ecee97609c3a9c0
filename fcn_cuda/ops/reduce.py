"""The study ladder's reductions (csrc/kernels/reduce.cuh): a shared-memory
tree per block, and warp shuffles of each kind."""

from .. import _backend
from .. import _validate as V

__all__ = ["block_sum", "warp_segment_sum", "warp_shuffle", "SHUFFLE_KINDS"]

SHUFFLE_KINDS = {"idx": 0, "up": 1, "down": 2, "xor": 3}


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
