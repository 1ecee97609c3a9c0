"""The study ladder's matrix product (csrc/kernels/gemm.cuh): naive, tiled in
shared memory, and on the tensor cores (WMMA) in tf32, fp16 and bf16."""

from .. import _backend
from .. import _validate as V

__all__ = ["gemm", "GEMM_VARIANTS"]

GEMM_VARIANTS = ("naive", "tiled", "wmma_tf32", "wmma_f16", "wmma_bf16")


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
