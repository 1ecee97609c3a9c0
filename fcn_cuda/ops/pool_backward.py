"""Max pooling backward (csrc/kernels/pool_backward.cuh).
"""

import numpy as np

from .. import _backend
from .. import _validate as V
from .pool import pool_size

__all__ = ["max_pool2d_backward"]

def max_pool2d_backward(grad_y, indices, x_shape, kernel_size=2, stride=2):
    """The gradient of ``max_pool2d(x, kernel_size, stride, ceil_mode)`` with
    respect to x, from the int32 indices it returned (return_indices=True).

    grad_y, indices: N x C x Ho x Wo; x_shape: (N, C, H, W); kernel_size and
    stride as in max_pool2d (the gather form needs them to find the windows
    that contain an input; Ho, Wo must be max_pool2d's size in ceil or floor
    mode). Overlapping windows (kernel > stride) add up, in a fixed order, no
    atomics. An index outside its own window matches nothing and is dropped.
    """
    be = _backend.active()
    grad_y = V.array(grad_y, "grad_y", ndim=4, shape_hint="N x C x Ho x Wo", be=be)
    indices = V.array(indices, "indices", ndim=4, dtype=np.int32, shape_hint="N x C x Ho x Wo", be=be)
    n, c, h, w = V.shape4(x_shape, "x_shape")
    kh, kw = V.pair(kernel_size, "kernel_size", minimum=1)
    sh, sw = (kh, kw) if stride is None else V.pair(stride, "stride", minimum=1)
    if indices.shape != grad_y.shape:
        raise ValueError(f"indices must have grad_y's shape {tuple(grad_y.shape)}, got {tuple(indices.shape)}")
    ho, wo = grad_y.shape[2:]
    sizes = {(pool_size(h, kh, sh, m), pool_size(w, kw, sw, m)) for m in (True, False)}
    if grad_y.shape[:2] != (n, c) or (ho, wo) not in sizes:
        raise ValueError(f"grad_y is {tuple(grad_y.shape)} but max_pool2d of x_shape {(n, c, h, w)} with "
                         f"kernel_size {(kh, kw)}, stride {(sh, sw)} gives N x C x {' or '.join(map(str, sizes))}")
    V.fits_int32(n * c * h * w + 255, "grad_x (rounded up to whole blocks)")
    dx = be.empty((n, c, h, w))
    g = be.ext.PoolShape(n * c, (h, w), (ho, wo), (kh, kw), (sh, sw))
    be.ext.max_pool2d_backward(g, be.ptr(grad_y), be.ptr(indices), be.ptr(dx), be.stream())
    return dx
