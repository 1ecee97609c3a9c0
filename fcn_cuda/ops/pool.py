"""Max pooling forward (csrc/kernels/pool.cuh).
"""

import numpy as np

from .. import _backend
from .. import _validate as V

__all__ = ["max_pool2d"]

def pool_size(size, k, s, ceil_mode):
    """PyTorch's pooling output size with padding 0; in ceil mode the last
    window must still start inside the input."""
    out = (size - k + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size:
        out -= 1
    return out


def max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True, return_indices=False):
    """== F.max_pool2d(x, kernel_size, stride, padding=0, ceil_mode=ceil_mode).

    kernel_size and stride: int or (vertical, horizontal); stride None means
    kernel_size, as in torch. With return_indices, also returns the argmax of
    each window as int32 flat indices h * W + w within each (n, c) plane (the
    values torch returns, as int32). Ties pick the first maximum in row-major
    order; NaN propagates, with the index of the window's last NaN, as in torch.
    """
    be = _backend.active()
    x = V.array(x, "x", ndim=4, shape_hint="N x C x H x W", be=be)
    kh, kw = V.pair(kernel_size, "kernel_size", minimum=1)
    sh, sw = (kh, kw) if stride is None else V.pair(stride, "stride", minimum=1)
    ceil_mode, return_indices = V.flag(ceil_mode, "ceil_mode"), V.flag(return_indices, "return_indices")
    n, c, h, w = x.shape
    ho, wo = pool_size(h, kh, sh, ceil_mode), pool_size(w, kw, sw, ceil_mode)
    if ho < 1 or wo < 1:
        raise ValueError(f"kernel_size {(kh, kw)} with stride {(sh, sw)} leaves no output for a {h} x {w} input "
                         f"(ceil_mode={ceil_mode})")
    V.fits_int32(n * c * ho * wo, "the output")
    y = be.empty((n, c, ho, wo))
    indices = be.empty((n, c, ho, wo), dtype=np.int32) if return_indices else None
    g = be.ext.PoolShape(n * c, (h, w), (ho, wo), (kh, kw), (sh, sw))
    be.ext.max_pool2d(g, be.ptr(x), be.ptr(y), be.ptr(indices) if return_indices else 0, be.stream())
    return (y, indices) if return_indices else y
