"""The reference's SGD step with momentum and weight decay (csrc/kernels/sgd.cuh).
"""

from .. import _backend
from .. import _validate as V

__all__ = ["sgd_step"]

def sgd_step(w, g, v, lr, momentum, weight_decay):
    """The reference's SGD update, in place on w and v (same shape as g):
    v = momentum * v + lr * (g + weight_decay * w); w -= v. Pass each
    parameter's effective lr and weight_decay (FCN: biases 2x lr, no decay).
    w and v must be arrays of the active backend (they are written); returns None."""
    be = _backend.active()
    for a, name in ((w, "w"), (v, "v")):
        if not be.owns(a):
            raise TypeError(f"{name} is updated in place, so it must be a {be.xp.__name__} array of the "
                            f"'{be.name}' backend, got {type(a).__name__}")
    w = V.array(w, "w", be=be)
    v = V.array(v, "v", be=be)
    g = V.array(g, "g", be=be)
    if g.shape != w.shape or v.shape != w.shape:
        raise ValueError(f"g and v must have w's shape {tuple(w.shape)}, got {tuple(g.shape)} and {tuple(v.shape)}")
    # Both are C-contiguous, so each is one address range, and comparing the
    # two is exact and free (xp.shares_memory builds and sorts an address per
    # element on a GPU, gigabytes for fc6, and older CuPy does not have it).
    if be.ptr(w) < be.ptr(v) + v.nbytes and be.ptr(v) < be.ptr(w) + w.nbytes:
        raise ValueError("w and v must not overlap")
    lr, momentum, weight_decay = V.real(lr, "lr"), V.real(momentum, "momentum"), V.real(weight_decay, "weight_decay")
    V.fits_int32(w.size + 255, "w (rounded up to whole blocks)")
    be.ext.sgd_step(be.ptr(w), be.ptr(g), be.ptr(v), w.size, lr, momentum, weight_decay, be.stream())
