"""The study ladder's first rung (csrc/kernels/elementwise.cuh): a
barrier-free kernel, one element per thread, with and without 16-byte loads."""

from .. import _backend
from .. import _validate as V

__all__ = ["axpy", "AXPY_VARIANTS"]

AXPY_VARIANTS = ("scalar", "float4")


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
