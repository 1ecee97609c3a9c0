"""Convolution backward (csrc/kernels/conv2d_backward.cuh): the input, weight
and bias gradients of conv2d and of conv_transpose2d, and the ReLU mask.
"""

from .. import _backend
from .. import _validate as V
from .conv2d import conv2d_default_variant, conv_out

__all__ = ["relu_backward", "conv2d_grad_input", "conv2d_grad_weight", "bias_grad", "conv_transpose2d_grad_input",
           "conv_transpose2d_grad_weight"]

def _relu_mask(relu_y, grad_y, be):
    """The forward ReLU output whose (y > 0) masks grad_y, validated; None passes through."""
    if relu_y is None:
        return None
    relu_y = V.array(relu_y, "relu_y", ndim=4, be=be)
    if relu_y.shape != grad_y.shape:
        raise ValueError(f"relu_y must have grad_y's shape {tuple(grad_y.shape)}, got {tuple(relu_y.shape)}")
    return relu_y


def relu_backward(grad_y, y):
    """grad_y * (y > 0): the gradient through y = relu(...), from its output y."""
    be = _backend.active()
    grad_y = V.array(grad_y, "grad_y", be=be)
    y = V.array(y, "y", be=be)
    if y.shape != grad_y.shape:
        raise ValueError(f"y must have grad_y's shape {tuple(grad_y.shape)}, got {tuple(y.shape)}")
    V.fits_int32(grad_y.size + 255, "grad_x (rounded up to whole blocks)")
    out = be.empty(grad_y.shape)
    be.ext.relu_backward(be.ptr(grad_y), be.ptr(y), be.ptr(out), grad_y.size, be.stream())
    return out


def conv2d_grad_input(grad_y, w, x_shape, stride=1, padding=0, relu_y=None):
    """The gradient of ``conv2d(x, w, b, stride, padding)`` with respect to x:
    == torch.nn.grad.conv2d_input(x_shape, w, grad_y, stride, padding).

    grad_y: N x K x P x Q, w: K x C x R x S, x_shape: (N, C, H, W); P, Q must
    be conv2d's output size for x_shape. It is a transposed convolution of
    grad_y: at stride 1 with padding < R, S (every FCN layer but conv1_1,
    whose input gradient training never needs), the convolution of grad_y by
    the flipped filters on conv2d's igemm kernel; otherwise the gather kernel
    of ops.conv_transpose2d. No atomics either way. Rows and columns of x
    that no window covered ((H + 2p - R) % s != 0) get 0.
    relu_y: the output y of the forward conv2d(..., relu=True) (grad_y's
    shape): grad_y is then masked by (y > 0) as it is read, i.e. the result
    is conv2d_grad_input(relu_backward(grad_y, relu_y), ...) in one pass.
    """
    be = _backend.active()
    grad_y = V.array(grad_y, "grad_y", ndim=4, shape_hint="N x K x P x Q", be=be)
    w = V.array(w, "w", ndim=4, shape_hint="K x C x R x S", be=be)
    n, c, h, wd = V.shape4(x_shape, "x_shape")
    k, cw, r, s = w.shape
    if grad_y.shape[0] != n or grad_y.shape[1] != k:
        raise ValueError(f"grad_y must be N x K x P x Q with N = {n} (x_shape) and K = {k} (w), "
                         f"got shape {tuple(grad_y.shape)}")
    if cw != c:
        raise ValueError(f"w has {cw} input channels (shape {tuple(w.shape)}) but x_shape has {c}")
    sh, sw = V.pair(stride, "stride", minimum=1)
    ph, pw = V.pair(padding, "padding", minimum=0)
    if max(h + 2 * ph, wd + 2 * pw, sh, sw) > V.INT32_LIMIT:
        raise ValueError(f"padding {(ph, pw)} / stride {(sh, sw)} exceed 32-bit indexing")
    p, q = conv_out(h, r, sh, ph), conv_out(wd, s, sw, pw)
    if (p, q) != tuple(grad_y.shape[2:]):
        raise ValueError(f"grad_y is {tuple(grad_y.shape[2:])} but conv2d of an x of shape {(n, c, h, wd)} with "
                         f"a {r} x {s} kernel, stride {(sh, sw)}, padding {(ph, pw)} gives {(p, q)}")
    mask = _relu_mask(relu_y, grad_y, be)
    V.fits_int32(n * c * h * wd, "grad_x")
    dx = be.empty((n, c, h, wd))
    # Stride 1 with padding below the filter size: the convolution of grad_y
    # by the flipped filters (conv2d_igemm, w flipped into wf first).
    wf = be.empty((c, k, r, s)) if (sh, sw) == (1, 1) and ph < r and pw < s else None
    g = be.ext.ConvShape((n, c, h, wd), w.shape, (sh, sw), (ph, pw))
    be.ext.conv2d_grad_input(g, be.ptr(grad_y), be.ptr(w), be.ptr(mask) if mask is not None else 0, be.ptr(dx),
                             be.ptr(wf) if wf is not None else 0, be.stream())
    return dx


def launch_grad_weight(be, x, dy, mask, k, r, s, stride, padding, alpha=1.0):
    """dw (K x C x R x S) = alpha * sum over n, p, q of dy x im2col(x): the
    split-depth kernel plus, when it splits, its workspace. x and dy are
    arrays of `be` already checked to fit each other (the caller's job, as
    for the launchers of csrc/ops); padding may be negative (a crop)."""
    n, c = x.shape[:2]
    p, q = dy.shape[2:]
    if -(-k // 64) > 65535:
        raise ValueError(f"at most {65535 * 64} output channels, got {k}")
    crs = c * r * s
    V.fits_int32(k * crs + 255, "the weight gradient (rounded up to whole blocks)")
    splits = be.ext.conv2d_grad_weight_splits(n * p * q, k, crs)
    V.fits_int32(splits * k * crs + 255, "the weight gradient's split workspace")
    ws = be.empty((splits * k * crs,)) if splits > 1 else None
    dw = be.empty((k, c, r, s))
    g = be.ext.ConvShape(x.shape, (k, c, r, s), stride, padding, out=(p, q))
    be.ext.conv2d_grad_weight(g, be.ptr(x), be.ptr(dy), be.ptr(mask) if mask is not None else 0, be.ptr(dw),
                              be.ptr(ws) if ws is not None else 0, float(alpha), be.stream())
    return dw


def launch_bias_grad(be, dy, mask):
    """db (K) = dy (N x K x P x Q, an array of `be`) summed over n, p, q,
    masked by (mask > 0) where a ReLU output `mask` is given."""
    n, k, p, q = dy.shape
    db = be.empty((k,))
    be.ext.bias_grad(be.ptr(dy), be.ptr(mask) if mask is not None else 0, be.ptr(db), n, k, p * q, be.stream())
    return db


def bias_grad(grad_y):
    """grad_y (N x K x P x Q) summed over n, p, q: the gradient of the bias
    of a convolution or transposed convolution, == grad_y.sum((0, 2, 3)).
    The kernel conv2d_grad_weight runs for its grad_b: one block per
    channel, a fixed order, the same bits every run."""
    be = _backend.active()
    grad_y = V.array(grad_y, "grad_y", ndim=4, shape_hint="N x K x P x Q", be=be)
    return launch_bias_grad(be, grad_y, None)


def conv2d_grad_weight(x, grad_y, kernel_size, stride=1, padding=0, relu_y=None):
    """The gradients of ``conv2d(x, w, b, stride, padding)`` with respect to
    w and b: (grad_w: K x C x R x S, grad_b: K), == torch.nn.grad.conv2d_weight
    and grad_y.sum((0, 2, 3)).

    x: N x C x H x W, grad_y: N x K x P x Q (conv2d's output size);
    kernel_size: int or (R, S). An implicit GEMM over the N*P*Q pixels, split
    into fixed chunks summed in a fixed order (no atomics): the same inputs
    give the same bits on every run. relu_y: as in conv2d_grad_input, the
    forward ReLU output; grad_y is masked by (relu_y > 0) as it is read.
    """
    be = _backend.active()
    x = V.array(x, "x", ndim=4, shape_hint="N x C x H x W", be=be)
    grad_y = V.array(grad_y, "grad_y", ndim=4, shape_hint="N x K x P x Q", be=be)
    r, s = V.pair(kernel_size, "kernel_size", minimum=1)
    sh, sw = V.pair(stride, "stride", minimum=1)
    ph, pw = V.pair(padding, "padding", minimum=0)
    n, c, h, wd = x.shape
    if grad_y.shape[0] != n:
        raise ValueError(f"grad_y must have x's batch size {n}, got shape {tuple(grad_y.shape)}")
    if max(h + 2 * ph, wd + 2 * pw, sh, sw, r, s) > V.INT32_LIMIT:
        raise ValueError(f"padding {(ph, pw)} / stride {(sh, sw)} / kernel_size {(r, s)} exceed 32-bit indexing")
    p, q = conv_out(h, r, sh, ph), conv_out(wd, s, sw, pw)
    if p < 1 or q < 1:
        raise ValueError(f"kernel_size {(r, s)} is larger than x's {h} x {wd} image with padding {(ph, pw)}")
    if (p, q) != tuple(grad_y.shape[2:]):
        raise ValueError(f"grad_y is {tuple(grad_y.shape[2:])} but conv2d of x {tuple(x.shape)} with kernel_size "
                         f"{(r, s)}, stride {(sh, sw)}, padding {(ph, pw)} gives {(p, q)}")
    mask = _relu_mask(relu_y, grad_y, be)
    k = grad_y.shape[1]
    return (launch_grad_weight(be, x, grad_y, mask, k, r, s, (sh, sw), (ph, pw)), launch_bias_grad(be, grad_y, mask))


def _transpose_grad_args(x_or_shape, grad_y, r, s, stride, padding):
    """Checks grad_y's size against conv_transpose2d's (H - 1) * s - 2p + R."""
    sy, sx = V.pair(stride, "stride", minimum=1)
    py, px = V.pair(padding, "padding", minimum=0)
    h, wd = x_or_shape[2:]
    if max((h - 1) * sy + r, (wd - 1) * sx + s) > V.INT32_LIMIT:
        raise ValueError(f"stride {(sy, sx)} makes the full output {(h - 1) * sy + r} x {(wd - 1) * sx + s}; "
                         f"the kernels index with 32-bit ints (at most {V.INT32_LIMIT})")
    full = ((h - 1) * sy + r - 2 * py, (wd - 1) * sx + s - 2 * px)
    if full != tuple(grad_y.shape[2:]):
        raise ValueError(f"grad_y is {tuple(grad_y.shape[2:])} but conv_transpose2d of a {h} x {wd} input with a "
                         f"{r} x {s} kernel, stride {(sy, sx)}, padding {(py, px)} gives {full}")
    return (sy, sx), (py, px)


def conv_transpose2d_grad_input(grad_y, w, stride, padding, x_shape):
    """The gradient of ``conv_transpose2d(x, w, b, stride, padding)`` with
    respect to x: == F.conv2d(grad_y, w, None, stride, padding), and it runs
    ops.conv2d's kernels. grad_y: N x C_out x Ho x Wo, w: C_in x C_out x R x S,
    x_shape: (N, C_in, H, W) with Ho = (H - 1) * s - 2p + R.
    """
    be = _backend.active()
    grad_y = V.array(grad_y, "grad_y", ndim=4, shape_hint="N x C_out x Ho x Wo", be=be)
    w = V.array(w, "w", ndim=4, shape_hint="C_in x C_out x R x S", be=be)
    n, cin, h, wd = V.shape4(x_shape, "x_shape")
    if w.shape[0] != cin:
        raise ValueError(f"w must be C_in x C_out x R x S with C_in = {cin} (x_shape), got shape {tuple(w.shape)}")
    if grad_y.shape[:2] != (n, w.shape[1]):
        raise ValueError(f"grad_y must be N x C_out x Ho x Wo with N = {n}, C_out = {w.shape[1]}, "
                         f"got shape {tuple(grad_y.shape)}")
    if cin > 65535 * 64:
        raise ValueError(f"w has {cin} input channels; at most {65535 * 64}")
    r, s = w.shape[2:]
    stride, padding = _transpose_grad_args((n, cin, h, wd), grad_y, r, s, stride, padding)
    V.fits_int32(n * cin * h * wd + 255, "grad_x (rounded up to whole blocks)")
    dx = be.empty((n, cin, h, wd))
    variant = conv2d_default_variant(n * h * wd, cin, grad_y.shape[1] * r * s, be.name)
    g = be.ext.ConvShape(grad_y.shape, w.shape, stride, padding)  # conv2d's P x Q: H x W
    be.ext.conv2d(variant, g, be.ptr(grad_y), be.ptr(w), be.ext.WeightType.fp32, 0, be.ptr(dx), False, be.stream())
    return dx


def conv_transpose2d_grad_weight(x, grad_y, kernel_size, stride, padding):
    """The gradient of ``conv_transpose2d(x, w, b, stride, padding)`` with
    respect to w: C_in x C_out x R x S (the bias gradient, where there is one,
    is grad_y.sum((0, 2, 3)); FCN's deconvolutions have none). x: N x C_in x
    H x W, grad_y: N x C_out x Ho x Wo. conv2d_grad_weight's kernel with x and
    grad_y in each other's place: deterministic, no atomics.
    """
    be = _backend.active()
    x = V.array(x, "x", ndim=4, shape_hint="N x C_in x H x W", be=be)
    grad_y = V.array(grad_y, "grad_y", ndim=4, shape_hint="N x C_out x Ho x Wo", be=be)
    r, s = V.pair(kernel_size, "kernel_size", minimum=1)
    if grad_y.shape[0] != x.shape[0]:
        raise ValueError(f"grad_y must have x's batch size {x.shape[0]}, got shape {tuple(grad_y.shape)}")
    stride, padding = _transpose_grad_args(x.shape, grad_y, r, s, stride, padding)
    return launch_grad_weight(be, grad_y, x, None, x.shape[1], r, s, stride, padding)
