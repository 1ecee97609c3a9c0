"""The kernels as functions: validated arguments, one launch each.

Arrays are NCHW float32, C-contiguous, of the active backend (NumPy on
'host', CuPy on 'cuda'); anything ``xp.asarray`` takes is accepted, arrays of
the other backend are refused. Each function checks its arguments here
(fcn_cuda/_validate.py), allocates the output and calls the matching
launcher in csrc/ops through csrc/bindings.cpp. Semantics are PyTorch's
(see each docstring), checked in tests/ against torch in float64.
"""

import numpy as np

from . import _backend
from . import _validate as V

__all__ = []

# ---- conv2d

CONV2D_VARIANTS = ("direct", "igemm")
__all__ += ["conv2d", "CONV2D_VARIANTS"]


def _conv2d_tile_use(m, k, crs):
    """The useful fraction of the work igemm does in its 64 x 64 x 16 tiles
    (GEMM rows m = N*P*Q, columns k = K, depth crs = C*R*S)."""
    padded = lambda v, tile: -(-v // tile) * tile
    return m * k * crs / (padded(m, 64) * padded(k, 64) * padded(crs, 16))


def _conv2d_default_variant(be, m, k, crs):
    """igemm; on the host, direct where most of igemm's tile work would be
    zero-fill: the emulator runs direct faster below about 20% tile use
    (`python benchmarks/emu_conv2d.py --sweep`). Not yet measured on a GPU."""
    if be.name == "host" and _conv2d_tile_use(m, k, crs) < 0.2:
        return "direct"
    return "igemm"


def conv2d(x, w, b=None, stride=1, padding=0, relu=False, variant=None):
    """``F.relu?(F.conv2d(x, w, b, stride, padding))`` (csrc/kernels/conv2d.cuh).

    x: N x C x H x W, w: K x C x R x S, b: K or None; stride (>= 1) and
    padding (>= 0) are an int or an (h, w) pair. Returns N x K x P x Q with
    P = (H + 2*padding[0] - R) // stride[0] + 1, Q likewise.
    variant: one of CONV2D_VARIANTS, or None for the fastest for the backend
    and shape (igemm, but direct on the host when igemm's tiles are mostly
    padding, e.g. a handful of output pixels or channels).
    """
    be = _backend.active()
    if variant is not None:
        V.choice(variant, "variant", CONV2D_VARIANTS)
    x = V.array(x, "x", ndim=4, shape_hint="N x C x H x W", be=be)
    w = V.array(w, "w", ndim=4, shape_hint="K x C x R x S", be=be)
    n, c, h, wd = x.shape
    k, cw, r, s = w.shape
    if cw != c:
        raise ValueError(f"w has {cw} input channels (shape {tuple(w.shape)}) but x has {c} "
                         f"(shape {tuple(x.shape)})")
    if k > 65535 * 64:  # igemm puts 64-channel tiles on grid.y
        raise ValueError(f"w has {k} output channels; conv2d supports at most {65535 * 64}")
    if b is not None:
        b = V.array(b, "b", ndim=1, be=be)
        if b.shape[0] != k:
            raise ValueError(f"b must hold one value per output channel of w ({k}), got {b.shape[0]}")
    sh, sw = V.pair(stride, "stride", minimum=1)
    ph, pw = V.pair(padding, "padding", minimum=0)
    if not isinstance(relu, (bool, np.bool_)):
        raise TypeError(f"relu must be a bool, got {type(relu).__name__}")
    if max(sh, sw) > V.INT32_LIMIT:
        raise ValueError(f"stride must be at most {V.INT32_LIMIT}, got {(sh, sw)}")
    if max(h + 2 * ph, wd + 2 * pw) > V.INT32_LIMIT:
        raise ValueError(f"padding {(ph, pw)} makes the padded input {h + 2 * ph} x {wd + 2 * pw}, "
                         f"beyond 32-bit indexing ({V.INT32_LIMIT})")
    p = (h + 2 * ph - r) // sh + 1
    q = (wd + 2 * pw - s) // sw + 1
    if p <= 0 or q <= 0:
        raise ValueError(f"output size would be {p} x {q}: the {r} x {s} kernel of w is larger than x's "
                         f"{h} x {wd} image with padding {(ph, pw)}")
    # The launchers round the output up to whole 256-thread blocks in int arithmetic.
    limit = V.INT32_LIMIT - 255
    if n * k * p * q > limit:
        raise ValueError(f"the output (N x K x P x Q = {n} x {k} x {p} x {q}) would have {n * k * p * q} "
                         f"elements; the kernels index with 32-bit ints (at most {limit} here)")
    variant = variant or _conv2d_default_variant(be, n * p * q, k, c * r * s)
    y = be.empty((n, k, p, q))
    be.ext.conv2d(variant, be.ptr(x), be.ptr(w), be.ptr(b) if b is not None else 0, be.ptr(y),
                  n, c, h, wd, k, r, s, sh, sw, ph, pw, bool(relu), be.stream())
    return y

# ---- max_pool2d

# ---- conv_transpose2d and bilinear upsampling

# ---- crop_add and the fused score head

# ---- softmax / argmax

# ---- preprocessing
