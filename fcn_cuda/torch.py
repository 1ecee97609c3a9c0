"""fcn_cuda's kernels as PyTorch operators, with autograd through the
hand-written backward kernels, and an nn.Module FCN built from them.

    import fcn_cuda.torch as fct
    y = fct.conv2d(x, weight, bias, padding=1, relu=True)   # x: a CPU or CUDA torch tensor
    net = fct.FCN.from_model(fcn_cuda.load_model(path))    # an nn.Module: torch.optim, torch.compile

Every operator is a torch.library.custom_op in the namespace ``fcn_cuda``
(torch.ops.fcn_cuda.<name>; OPS maps names to them). Its kernel hands the
tensors to fcn_cuda.ops without a copy — CPU tensors as NumPy arrays, run by
the host emulation; CUDA tensors through DLPack as CuPy arrays, launched on
torch's current stream — and fcn_cuda.ops validates them (docs/design.md,
'Bad input') before anything runs. Each has a fake (meta) implementation that gives
the output shapes, so it traces under torch.compile. The differentiable
ones have a backward made of fcn_cuda's own backward kernels, registered as
operators too (conv2d_grad_input, ...), so the backward traces as well.
Torch computes none of the math: its part is dispatch, autograd's
bookkeeping, .contiguous() on incoming gradients and, for the loss, the
chain rule's product with the incoming scalar gradient (1.0 when the loss
itself is backpropagated).

A new operator is one `_op` registration plus its fake, its autograd (if
any) and its wrapper.
"""

import contextlib
import functools
import inspect

try:
    import torch
except ImportError as e:
    raise ImportError("fcn_cuda.torch needs PyTorch >= 2.4 (torch.library.custom_op): pip install torch, "
                      "or a CPU-only build: pip install torch --index-url https://download.pytorch.org/whl/cpu"
                      ) from e

import numpy as np
from torch import nn

from . import _backend, crf, ops
from . import _validate as V
from .ops.conv2d import conv2d_relu_maxpool_variant, conv_out
from .ops.dropout import dropout_args
from .ops.loss import softmax_cross_entropy_on_device
from .ops.pool import pool_size
from .geometry import AT_ONCE_SCALE, CONV1_PAD, HEADS, SKIPS, VARIANTS, VGG16_BLOCKS, head_geometry
from .model import DROPOUT_P, dropout_key
from .model import FCN as _EngineFCN
from .weights.state_dict import fresh_state_dict, param_shapes, trunk_widths

if torch.__version__ < "2.4":
    raise ImportError(f"fcn_cuda.torch needs PyTorch >= 2.4 (torch.library.custom_op), found {torch.__version__}")

__all__ = ["OPS", "FCN", "conv2d", "conv2d_relu_maxpool", "conv_transpose2d", "conv_transpose2d_window", "max_pool2d",
           "crop_add", "score_crop_add", "softmax", "argmax", "upsample_argmax", "softmax_cross_entropy", "dropout",
           "dense_crf"]

OPS = {}  # name -> torch.library.CustomOpDef, registered in the namespace fcn_cuda


# ----------------------------------------------------------------- tensors in, tensors out
def _device_backend(device):
    """fcn_cuda's backend for a torch device, active in this thread for a
    with-block; on a GPU, CuPy launches go to torch's current stream of that device."""
    return _backend.using("host") if device.type == "cpu" else _on_cuda(device)


@contextlib.contextmanager
def _on_cuda(device):
    with _backend.using("cuda") as be:
        cupy = be.xp
        ptr = torch.cuda.current_stream(device).cuda_stream
        stream = cupy.cuda.Stream.null if ptr == 0 else cupy.cuda.ExternalStream(ptr, device.index)
        with cupy.cuda.Device(device.index), stream:
            yield


def _to_array(t, name, device):
    """A CPU tensor as a NumPy array, a CUDA tensor as a CuPy array (DLPack): the same memory."""
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the first tensor argument is on {device}: "
                         "an fcn_cuda op runs on one device")
    t = t.detach()
    try:
        return t.numpy() if device.type == "cpu" else _backend.active().xp.from_dlpack(t)
    except (TypeError, RuntimeError, BufferError) as e:
        raise TypeError(f"{name}: a {t.dtype} tensor cannot be handed to the kernels ({e})") from None


def _to_tensor(a):
    return torch.from_numpy(a) if isinstance(a, np.ndarray) else torch.from_dlpack(a)


def _on_tensors(fn):
    """fn, written on fcn_cuda arrays, as a kernel on torch tensors: the
    tensors go in and the results come out without a copy."""
    names = tuple(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    def kernel(*args):  # the dispatcher passes every argument positionally (no schema has keyword-only ones)
        device = next(a.device for a in args if isinstance(a, torch.Tensor))
        with _device_backend(device):
            out = fn(*(_to_array(a, k, device) if isinstance(a, torch.Tensor) else a for k, a in zip(names, args)))
            return tuple(map(_to_tensor, out)) if isinstance(out, tuple) else _to_tensor(out)

    return kernel


def _op(schema):
    """Registers the decorated function (on arrays) as fcn_cuda::<name> with
    this schema, for CPU and CUDA tensors; returns the CustomOpDef."""
    name, args = schema.split("(", 1)

    def register(fn):
        op = torch.library.custom_op(f"fcn_cuda::{name}", _on_tensors(fn), mutates_args=(),
                                     device_types=("cpu", "cuda"), schema="(" + args)
        OPS[name] = op
        return op

    return register


def _no_backward(what):
    """A backward that refuses: fcn_cuda has no kernel for this gradient."""
    def backward(ctx, *grads):
        raise NotImplementedError(f"fcn_cuda has no backward kernel for {what}")
    return backward


# ----------------------------------------------------------------- conv2d
@_op("conv2d(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, bool relu) -> Tensor")
def _conv2d(x, weight, bias, stride, padding, relu):
    return ops.conv2d(x, weight, bias, stride, padding, relu)


@_op("conv2d_grad_input(Tensor grad_y, Tensor weight, int[4] x_shape, int[2] stride, int[2] padding, "
     "Tensor? relu_y) -> Tensor")
def _conv2d_grad_input(grad_y, weight, x_shape, stride, padding, relu_y):
    return ops.conv2d_grad_input(grad_y, weight, x_shape, stride, padding, relu_y)


@_op("conv2d_grad_weight(Tensor x, Tensor grad_y, int[2] kernel_size, int[2] stride, int[2] padding, "
     "Tensor? relu_y) -> (Tensor, Tensor)")
def _conv2d_grad_weight(x, grad_y, kernel_size, stride, padding, relu_y):
    return ops.conv2d_grad_weight(x, grad_y, kernel_size, stride, padding, relu_y)


@_op("bias_grad(Tensor grad_y) -> Tensor")
def _bias_grad(grad_y):
    return ops.bias_grad(grad_y)


@_conv2d.register_fake
def _(x, weight, bias, stride, padding, relu):
    n, _, h, w = x.shape
    k, _, r, s = weight.shape
    return x.new_empty((n, k, conv_out(h, r, stride[0], padding[0]), conv_out(w, s, stride[1], padding[1])))


@_conv2d_grad_input.register_fake
def _(grad_y, weight, x_shape, stride, padding, relu_y):
    return grad_y.new_empty(x_shape)


@_conv2d_grad_weight.register_fake
def _(x, grad_y, kernel_size, stride, padding, relu_y):
    k = grad_y.shape[1]
    return x.new_empty((k, x.shape[1], *kernel_size)), x.new_empty((k,))


@_bias_grad.register_fake
def _(grad_y):
    return grad_y.new_empty((grad_y.shape[1],))


def _conv2d_setup(ctx, inputs, output):
    x, weight, bias, stride, padding, relu = inputs
    ctx.save_for_backward(x, weight, output if relu else None)
    ctx.args = (stride, padding, bias is not None)


def _conv2d_backward(ctx, grad_y):
    """ops.conv2d_grad_input and ops.conv2d_grad_weight, the ReLU mask
    (the saved output > 0) applied as they read grad_y."""
    x, weight, relu_y = ctx.saved_tensors
    stride, padding, has_bias = ctx.args
    grad_y = grad_y.contiguous()
    dx = dw = db = None
    if ctx.needs_input_grad[0]:
        dx = _conv2d_grad_input(grad_y, weight, list(x.shape), stride, padding, relu_y)
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        dw, db = _conv2d_grad_weight(x, grad_y, list(weight.shape[2:]), stride, padding, relu_y)
    return dx, dw, db if has_bias else None, None, None, None


_conv2d.register_autograd(_conv2d_backward, setup_context=_conv2d_setup)


@_op("conv2d_relu_maxpool(Tensor x, Tensor weight, Tensor? bias, int padding) -> Tensor")
def _conv2d_relu_maxpool(x, weight, bias, padding):
    """The end of a VGG block at inference, as fcn_cuda.FCN runs it: one
    fused kernel where conv2d's default variant has that epilogue, else
    conv2d then max_pool2d; the same bits either way."""
    variant = x.ndim == 4 and weight.ndim == 4 and conv2d_relu_maxpool_variant(x.shape, weight.shape, padding)
    if variant:
        return ops.conv2d_relu_maxpool(x, weight, bias, padding=padding, variant=variant)
    return ops.max_pool2d(ops.conv2d(x, weight, bias, padding=padding, relu=True), 2, 2, ceil_mode=True)


@_conv2d_relu_maxpool.register_fake
def _(x, weight, bias, padding):
    n, _, h, w = x.shape
    k, _, r, s = weight.shape
    p, q = conv_out(h, r, 1, padding), conv_out(w, s, 1, padding)
    return x.new_empty((n, k, pool_size(p, 2, 2, True), pool_size(q, 2, 2, True)))


_conv2d_relu_maxpool.register_autograd(_no_backward("conv2d_relu_maxpool (train through conv2d and max_pool2d)"))


# ----------------------------------------------------------------- conv_transpose2d
@_op("conv_transpose2d(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding) -> Tensor")
def _conv_transpose2d(x, weight, bias, stride, padding):
    return ops.conv_transpose2d(x, weight, bias, stride, padding)


@_op("conv_transpose2d_window(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] size, int[2] offset) "
     "-> Tensor")
def _conv_transpose2d_window(x, weight, bias, stride, size, offset):
    return ops.conv_transpose2d_window(x, weight, stride, size[0], size[1], offset, b=bias)


@_op("conv_transpose2d_grad_input(Tensor grad_y, Tensor weight, int[4] x_shape, int[2] stride, int[2] padding) "
     "-> Tensor")
def _conv_transpose2d_grad_input(grad_y, weight, x_shape, stride, padding):
    return ops.conv_transpose2d_grad_input(grad_y, weight, stride, padding, x_shape)


@_op("conv_transpose2d_grad_weight(Tensor x, Tensor grad_y, int[2] kernel_size, int[2] stride, int[2] padding) "
     "-> Tensor")
def _conv_transpose2d_grad_weight(x, grad_y, kernel_size, stride, padding):
    return ops.conv_transpose2d_grad_weight(x, grad_y, kernel_size, stride, padding)


def _transposed_size(size, k, s, p):
    return (size - 1) * s - 2 * p + k


@_conv_transpose2d.register_fake
def _(x, weight, bias, stride, padding):
    n, _, h, w = x.shape
    _, cout, r, s = weight.shape
    return x.new_empty((n, cout, _transposed_size(h, r, stride[0], padding[0]),
                        _transposed_size(w, s, stride[1], padding[1])))


@_conv_transpose2d_window.register_fake
def _(x, weight, bias, stride, size, offset):
    return x.new_empty((x.shape[0], weight.shape[1], *size))


@_conv_transpose2d_grad_input.register_fake
def _(grad_y, weight, x_shape, stride, padding):
    return grad_y.new_empty(x_shape)


@_conv_transpose2d_grad_weight.register_fake
def _(x, grad_y, kernel_size, stride, padding):
    return x.new_empty((x.shape[1], grad_y.shape[1], *kernel_size))


def _conv_transpose2d_setup(ctx, inputs, output):
    x, weight, bias, stride, padding = inputs
    ctx.save_for_backward(x, weight)
    ctx.args = (stride, padding, bias is not None)


def _transposed_grads(ctx, grad_y, x, weight, stride, padding, has_bias, grad_bias_from):
    dx = dw = db = None
    if ctx.needs_input_grad[0]:
        dx = _conv_transpose2d_grad_input(grad_y, weight, list(x.shape), stride, padding)
    if ctx.needs_input_grad[1]:
        dw = _conv_transpose2d_grad_weight(x, grad_y, list(weight.shape[2:]), stride, padding)
    if has_bias and ctx.needs_input_grad[2]:
        db = _bias_grad(grad_bias_from)
    return dx, dw, db


def _conv_transpose2d_backward(ctx, grad_y):
    """ops.conv_transpose2d_grad_input (conv2d's kernels), _grad_weight, bias_grad."""
    x, weight = ctx.saved_tensors
    stride, padding, has_bias = ctx.args
    grad_y = grad_y.contiguous()
    return (*_transposed_grads(ctx, grad_y, x, weight, stride, padding, has_bias, grad_y), None, None)


def _conv_transpose2d_window_setup(ctx, inputs, output):
    x, weight, bias, stride, size, offset = inputs
    ctx.save_for_backward(x, weight)
    ctx.args = (stride, size, offset, bias is not None)


def _conv_transpose2d_window_backward(ctx, grad_y):
    """As the engine does for FCN's last upsample: ops.crop_backward puts the
    window's gradient into zeros of the full output, then the transposed
    convolution's gradients."""
    x, weight = ctx.saved_tensors
    stride, size, offset, has_bias = ctx.args
    grad_y = grad_y.contiguous()
    dx = dw = db = None
    if any(ctx.needs_input_grad[:2]):
        n, _, h, w = x.shape
        _, cout, r, s = weight.shape
        full = _crop_backward(grad_y, [n, cout, _transposed_size(h, r, stride[0], 0),
                                       _transposed_size(w, s, stride[1], 0)], offset)
        dx, dw, _ = _transposed_grads(ctx, full, x, weight, stride, [0, 0], False, None)
    if has_bias and ctx.needs_input_grad[2]:
        db = _bias_grad(grad_y)  # the window holds every nonzero of the full gradient
    return dx, dw, db, None, None, None


_conv_transpose2d.register_autograd(_conv_transpose2d_backward, setup_context=_conv_transpose2d_setup)
_conv_transpose2d_window.register_autograd(_conv_transpose2d_window_backward,
                                           setup_context=_conv_transpose2d_window_setup)


# ----------------------------------------------------------------- max_pool2d
@_op("max_pool2d(Tensor x, int[2] kernel_size, int[2] stride, bool ceil_mode) -> Tensor")
def _max_pool2d(x, kernel_size, stride, ceil_mode):
    return ops.max_pool2d(x, kernel_size, stride, ceil_mode)


@_op("max_pool2d_with_indices(Tensor x, int[2] kernel_size, int[2] stride, bool ceil_mode) -> (Tensor, Tensor)")
def _max_pool2d_with_indices(x, kernel_size, stride, ceil_mode):
    return ops.max_pool2d(x, kernel_size, stride, ceil_mode, return_indices=True)


@_op("max_pool2d_backward(Tensor grad_y, Tensor indices, int[4] x_shape, int[2] kernel_size, int[2] stride) "
     "-> Tensor")
def _max_pool2d_backward(grad_y, indices, x_shape, kernel_size, stride):
    return ops.max_pool2d_backward(grad_y, indices, x_shape, kernel_size, stride)


def _pooled_shape(x, kernel_size, stride, ceil_mode):
    n, c, h, w = x.shape
    return (n, c, pool_size(h, kernel_size[0], stride[0], ceil_mode),
            pool_size(w, kernel_size[1], stride[1], ceil_mode))


@_max_pool2d.register_fake
def _(x, kernel_size, stride, ceil_mode):
    return x.new_empty(_pooled_shape(x, kernel_size, stride, ceil_mode))


@_max_pool2d_with_indices.register_fake
def _(x, kernel_size, stride, ceil_mode):
    shape = _pooled_shape(x, kernel_size, stride, ceil_mode)
    return x.new_empty(shape), x.new_empty(shape, dtype=torch.int32)


@_max_pool2d_backward.register_fake
def _(grad_y, indices, x_shape, kernel_size, stride):
    return grad_y.new_empty(x_shape)


def _max_pool2d_setup(ctx, inputs, output):
    x, kernel_size, stride, _ = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])
    ctx.args = (list(x.shape), kernel_size, stride)


def _max_pool2d_backward_fn(ctx, grad_y, _grad_indices):
    """ops.max_pool2d_backward: each input gathers from the windows whose saved argmax it is."""
    (indices,) = ctx.saved_tensors
    x_shape, kernel_size, stride = ctx.args
    return _max_pool2d_backward(grad_y.contiguous(), indices, x_shape, kernel_size, stride), None, None, None


_max_pool2d_with_indices.register_autograd(_max_pool2d_backward_fn, setup_context=_max_pool2d_setup)
_max_pool2d.register_autograd(_no_backward("max_pool2d without indices (max_pool2d_with_indices has one)"))


# ----------------------------------------------------------------- crop_add and the score head
@_op("crop_add(Tensor a, Tensor b, int[2] offset) -> Tensor")
def _crop_add(a, b, offset):
    return ops.crop_add(a, b, offset)


@_op("crop_backward(Tensor grad, int[4] b_shape, int[2] offset) -> Tensor")
def _crop_backward(grad, b_shape, offset):
    return ops.crop_backward(grad, b_shape, offset)


@_op("score_crop_add(Tensor up, Tensor feat, Tensor weight, Tensor? bias, int[2] offset, float scale) -> Tensor")
def _score_crop_add(up, feat, weight, bias, offset, scale):
    return ops.score_crop_add(up, feat, weight, bias, offset, scale)


@_op("score_crop_add_backward(Tensor grad_out, Tensor feat, Tensor weight, int[2] offset, float scale) "
     "-> (Tensor, Tensor, Tensor)")
def _score_crop_add_backward(grad_out, feat, weight, offset, scale):
    return ops.score_crop_add_backward(grad_out, feat, weight, offset, scale)


@_crop_add.register_fake
def _(a, b, offset):
    return a.new_empty(a.shape)


@_crop_backward.register_fake
def _(grad, b_shape, offset):
    return grad.new_empty(b_shape)


@_score_crop_add.register_fake
def _(up, feat, weight, bias, offset, scale):
    return up.new_empty(up.shape)


@_score_crop_add_backward.register_fake
def _(grad_out, feat, weight, offset, scale):
    return feat.new_empty(feat.shape), weight.new_empty(weight.shape), weight.new_empty((weight.shape[0],))


def _crop_add_setup(ctx, inputs, output):
    _, b, offset = inputs
    ctx.args = (list(b.shape), offset)


def _crop_add_backward(ctx, grad):
    """a's gradient is grad itself; b's, ops.crop_backward (grad placed at the offset in zeros)."""
    b_shape, offset = ctx.args
    db = _crop_backward(grad.contiguous(), b_shape, offset) if ctx.needs_input_grad[1] else None
    return grad, db, None


def _score_crop_add_setup(ctx, inputs, output):
    _, feat, weight, bias, offset, scale = inputs
    ctx.save_for_backward(feat, weight)
    ctx.args = (offset, scale, bias is not None)


def _score_crop_add_backward_fn(ctx, grad):
    """up's gradient is grad itself; feat's, the weight's and the bias's,
    ops.score_crop_add_backward (one kernel for feat, conv2d_grad_weight's
    for the weight, bias_grad's for the bias)."""
    feat, weight = ctx.saved_tensors
    offset, scale, has_bias = ctx.args
    dfeat = dw = db = None
    if any(ctx.needs_input_grad[1:4]):
        dfeat, dw, db = _score_crop_add_backward(grad.contiguous(), feat, weight, offset, scale)
    return grad, dfeat, dw, db if has_bias else None, None, None


_crop_add.register_autograd(_crop_add_backward, setup_context=_crop_add_setup)
_score_crop_add.register_autograd(_score_crop_add_backward_fn, setup_context=_score_crop_add_setup)


# ----------------------------------------------------------------- softmax, argmax, the fused head
@_op("softmax(Tensor x) -> Tensor")
def _softmax(x):
    return ops.softmax(x)


@_op("argmax(Tensor x) -> Tensor")
def _argmax(x):
    return ops.argmax(x)


@_op("upsample_argmax(Tensor x, Tensor weight, int[2] stride, int[2] size, int[2] offset) -> Tensor")
def _upsample_argmax(x, weight, stride, size, offset):
    return ops.upsample_argmax(x, weight, stride, size[0], size[1], offset)


@_op("upsample_softmax_argmax(Tensor x, Tensor weight, int[2] stride, int[2] size, int[2] offset) "
     "-> (Tensor, Tensor)")
def _upsample_softmax_argmax(x, weight, stride, size, offset):
    return ops.upsample_argmax(x, weight, stride, size[0], size[1], offset, probs=True)


@_softmax.register_fake
def _(x):
    return x.new_empty(x.shape)


@_argmax.register_fake
def _(x):
    n, _, h, w = x.shape
    return x.new_empty((n, h, w), dtype=torch.int32)


@_upsample_argmax.register_fake
def _(x, weight, stride, size, offset):
    return x.new_empty((x.shape[0], *size), dtype=torch.int32)


@_upsample_softmax_argmax.register_fake
def _(x, weight, stride, size, offset):
    return x.new_empty((x.shape[0], *size), dtype=torch.int32), x.new_empty((*x.shape[:2], *size))


_softmax.register_autograd(_no_backward("softmax (train through softmax_cross_entropy, whose gradient is the "
                                         "loss kernel's)"))
_upsample_softmax_argmax.register_autograd(_no_backward("upsample_argmax's probabilities (train through "
                                                        "conv_transpose2d_window and softmax_cross_entropy)"))


# ----------------------------------------------------------------- the loss and dropout
@_op("softmax_cross_entropy(Tensor scores, Tensor labels, int ignore_index, bool normalize, Tensor? weight) "
     "-> (Tensor, Tensor)")
def _softmax_cross_entropy(scores, labels, ignore_index, normalize, weight):
    return softmax_cross_entropy_on_device(scores, labels, ignore_index, normalize, weight)


@_op("dropout(Tensor x, float p, int seed, int step, int offset) -> Tensor")
def _dropout(x, p, seed, step, offset):
    return ops.dropout(x, p, seed, step, offset)


@_softmax_cross_entropy.register_fake
def _(scores, labels, ignore_index, normalize, weight):
    return scores.new_empty(()), scores.new_empty(scores.shape)


@_dropout.register_fake
def _(x, p, seed, step, offset):
    return x.new_empty(x.shape)


def _softmax_cross_entropy_setup(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])


def _softmax_cross_entropy_backward(ctx, grad_loss, _grad_grad):
    """The loss kernel's gradient (computed with the loss), times the incoming scalar."""
    (grad,) = ctx.saved_tensors
    return grad * grad_loss, None, None, None, None


def _dropout_setup(ctx, inputs, output):
    _, p, seed, step, offset = inputs
    ctx.args = (p, seed, step, offset)


def _dropout_backward(ctx, grad_y):
    """The dropout kernel on the gradient (ops.dropout_backward is the same
    call): the same Philox mask, recomputed from (p, seed, step, offset)."""
    return _dropout(grad_y.contiguous(), *ctx.args), None, None, None, None


_softmax_cross_entropy.register_autograd(_softmax_cross_entropy_backward, setup_context=_softmax_cross_entropy_setup)
_dropout.register_autograd(_dropout_backward, setup_context=_dropout_setup)


# ----------------------------------------------------------------- the dense CRF
@_op("dense_crf(Tensor img, Tensor probs, int iterations, float gaussian_sxy, float gaussian_compat, "
     "float bilateral_sxy, float bilateral_srgb, float bilateral_compat, str variant) -> Tensor")
def _dense_crf(img, probs, iterations, gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb,
               bilateral_compat, variant):
    return crf.dense_crf(img, probs, iterations, gaussian_sxy=gaussian_sxy, gaussian_compat=gaussian_compat,
                         bilateral_sxy=bilateral_sxy, bilateral_srgb=bilateral_srgb,
                         bilateral_compat=bilateral_compat, variant=variant)


@_dense_crf.register_fake
def _(img, probs, *params):
    return probs.new_empty(probs.shape)


_dense_crf.register_autograd(_no_backward("dense_crf (mean-field inference: refine probabilities after training)"))


# ----------------------------------------------------------------- wrappers (PyTorch's conventions)
def _tensors(**tensors):
    """TypeError unless each argument is a torch.Tensor (None where optional)."""
    for name, (t, optional) in tensors.items():
        if not (isinstance(t, torch.Tensor) or (optional and t is None)):
            kind = "a torch.Tensor" + (" or None" if optional else "")
            raise TypeError(f"{name} must be {kind}, got {type(t).__name__}")


def _pair(v, name, minimum):
    return list(V.pair(v, name, minimum=minimum))


def conv2d(x, weight, bias=None, stride=1, padding=0, relu=False):
    """``F.relu?(F.conv2d(x, weight, bias, stride, padding))`` on fcn_cuda's
    kernels (ops.conv2d with its default variant for the shape).

    x: N x C x H x W, weight: K x C x R x S, bias: K or None, float32,
    contiguous, one device; stride (>= 1), padding (>= 0): an int or a pair.
    Differentiable in x, weight and bias (ops.conv2d_grad_input at any
    stride, ops.conv2d_grad_weight; with relu=True the ReLU mask is applied
    inside those kernels, from the saved output)."""
    _tensors(x=(x, False), weight=(weight, False), bias=(bias, True))
    return _conv2d(x, weight, bias, _pair(stride, "stride", 1), _pair(padding, "padding", 0), V.flag(relu, "relu"))


def conv2d_relu_maxpool(x, weight, bias=None, padding=0):
    """``F.max_pool2d(F.relu(F.conv2d(x, weight, bias, 1, padding)), 2, 2,
    ceil_mode=True)`` without storing the convolution's output where a
    fused kernel serves the shape (ops.conv2d_relu_maxpool), for inference:
    no backward (train through conv2d and max_pool2d). padding: an int."""
    _tensors(x=(x, False), weight=(weight, False), bias=(bias, True))
    return _conv2d_relu_maxpool(x, weight, bias, V.integer(padding, "padding", minimum=0))


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0):
    """``F.conv_transpose2d(x, weight, bias, stride, padding)`` (no
    output_padding, groups or dilation); weight: C_in x C_out x R x S. The
    per-channel 'bilinear' variant runs where weight is per-channel (zero off
    its diagonal), as ops.conv_transpose2d decides. Differentiable in x,
    weight and bias (ops.conv_transpose2d_grad_input / _grad_weight, bias_grad)."""
    _tensors(x=(x, False), weight=(weight, False), bias=(bias, True))
    return _conv_transpose2d(x, weight, bias, _pair(stride, "stride", 1), _pair(padding, "padding", 0))


def conv_transpose2d_window(x, weight, stride, size, offset, bias=None):
    """``F.conv_transpose2d(x, weight, bias, stride)[:, :, oy:oy+H, ox:ox+W]``
    computing only that window (FCN's last upsample and crop); size: (H, W)
    or an int, offset: (oy, ox) or an int. Differentiable as conv_transpose2d
    (its gradient first goes through ops.crop_backward)."""
    _tensors(x=(x, False), weight=(weight, False), bias=(bias, True))
    return _conv_transpose2d_window(x, weight, bias, _pair(stride, "stride", 1), _pair(size, "size", 1),
                                    _pair(offset, "offset", 0))


def max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True, return_indices=False):
    """``F.max_pool2d(x, kernel_size, stride, padding=0, ceil_mode=ceil_mode,
    return_indices=return_indices)``; stride None means kernel_size. The
    indices are int32 (torch's are int64), flat h * W + w in each plane.
    Where a gradient may be needed (grad mode on, x requires grad) the
    indices are computed and the backward is ops.max_pool2d_backward."""
    _tensors(x=(x, False))
    kernel_size = _pair(kernel_size, "kernel_size", 1)
    stride = kernel_size if stride is None else _pair(stride, "stride", 1)
    ceil_mode, return_indices = V.flag(ceil_mode, "ceil_mode"), V.flag(return_indices, "return_indices")
    if return_indices or (torch.is_grad_enabled() and x.requires_grad):
        y, indices = _max_pool2d_with_indices(x, kernel_size, stride, ceil_mode)
        return (y, indices) if return_indices else y
    return _max_pool2d(x, kernel_size, stride, ceil_mode)


def crop_add(a, b, offset):
    """``a + b[:, :, oy:oy+Ha, ox:ox+Wa]``; offset: an int or (oy, ox).
    Differentiable in a and b (ops.crop_backward)."""
    _tensors(a=(a, False), b=(b, False))
    return _crop_add(a, b, _pair(offset, "offset", 0))


def score_crop_add(up, feat, weight, bias=None, offset=0, scale=1.0):
    """``up + F.conv2d(scale * feat, weight, bias)[:, :, oy:oy+H, ox:ox+W]``
    in one kernel (FCN's score_pool4 / score_pool3, crop and sum); weight:
    K x C x 1 x 1. Differentiable in up, feat, weight and bias
    (ops.score_crop_add_backward)."""
    _tensors(up=(up, False), feat=(feat, False), weight=(weight, False), bias=(bias, True))
    return _score_crop_add(up, feat, weight, bias, _pair(offset, "offset", 0), V.real(scale, "scale"))


def softmax(x):
    """``torch.softmax(x, 1)`` of N x C x H x W scores. No backward kernel:
    a backward through it raises NotImplementedError."""
    _tensors(x=(x, False))
    return _softmax(x)


def argmax(x):
    """``torch.argmax(x, 1)`` as an N x H x W int32 label map (ties: the lowest channel)."""
    _tensors(x=(x, False))
    return _argmax(x)


def upsample_argmax(x, weight, stride, size, offset, probs=False):
    """The labels of ``conv_transpose2d_window(x, weight, stride, size,
    offset)`` (argmax over channels, int32), in one kernel that never stores
    the upsampled scores; weight per-channel (FCN's bilinear upsampling).
    probs=True returns (labels, softmax probabilities). Not differentiable."""
    _tensors(x=(x, False), weight=(weight, False))
    args = (x, weight, _pair(stride, "stride", 1), _pair(size, "size", 1), _pair(offset, "offset", 0))
    return _upsample_softmax_argmax(*args) if V.flag(probs, "probs") else _upsample_argmax(*args)


def softmax_cross_entropy(scores, labels, ignore_index=255, normalize=False, weight=None):
    """FCN's loss as a 0-d float32 tensor: ``F.cross_entropy(scores, labels,
    weight, ignore_index=ignore_index, reduction='sum') / N``, or with
    normalize=True, reduction='mean'. labels: N x H x W int32 (torch's
    targets are int64: pass labels.int()). The backward is the gradient the
    loss kernel computed with the loss, times the incoming gradient."""
    _tensors(scores=(scores, False), labels=(labels, False), weight=(weight, True))
    ignore_index = V.integer(ignore_index, "ignore_index", minimum=-2**31, maximum=2**31 - 1)
    return _softmax_cross_entropy(scores, labels, ignore_index, V.flag(normalize, "normalize"), weight)[0]


def dropout(x, p=0.5, seed=0, step=0, training=True, *, offset=0):
    """Training-mode dropout with fcn_cuda's counter-based mask (Philox keyed
    by (seed, step), x placed at element `offset` of a larger batch:
    ops.dropout), x unchanged when training is False. The backward
    recomputes the mask (ops.dropout_backward). `training` stays fifth, as
    before offset was added; offset is keyword-only."""
    _tensors(x=(x, False))
    if not V.flag(training, "training"):
        return x
    p, seed, step = dropout_args(p, seed, step)
    return _dropout(x, p, seed, step, V.integer(offset, "offset", minimum=0, maximum=2**62))


def dense_crf(img, probs, iterations=5, *, gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=80.0,
              bilateral_srgb=13.0, bilateral_compat=10.0, variant="lattice"):
    """fcn_cuda.dense_crf on tensors: img H x W x 3 uint8 RGB, probs C x H x W
    float32 class probabilities -> Q, C x H x W float32 (== pydensecrf's
    mean field, the same arguments). Not differentiable."""
    _tensors(img=(img, False), probs=(probs, False))
    iterations = V.integer(iterations, "iterations", minimum=0)
    params = [V.real(v, k) for k, v in (("gaussian_sxy", gaussian_sxy), ("gaussian_compat", gaussian_compat),
                                           ("bilateral_sxy", bilateral_sxy), ("bilateral_srgb", bilateral_srgb),
                                           ("bilateral_compat", bilateral_compat))]
    return _dense_crf(img, probs, iterations, *params, V.choice(variant, "variant", crf.CRF_VARIANTS))


# ----------------------------------------------------------------- the nn.Module
class FCN(nn.Module):
    """FCN-32s / 16s / 8s as an nn.Module whose forward is fcn_cuda's kernels.

    Parameters carry the reference's names (conv1_1.weight ... fc6, fc7,
    score_fr, score_pool4, score_pool3, upscore*), held by nn.Conv2d /
    nn.ConvTranspose2d modules as in pytorch-fcn, so load_state_dict takes
    pytorch-fcn's state dicts and fcn_cuda's (FCN.from_model). A fresh model
    has fcn_cuda.FCN's initialisation for the same seed. The upsampling
    weights start frozen (requires_grad False, as the reference trains);
    requires_grad_(True) on them trains them through our kernels.

    forward(x): N x 3 x H x W float32 -> N x C x H x W scores, equal bit for
    bit to fcn_cuda.FCN's on the same weights. In training mode, dropout
    (p = 0.5 after fc6 and fc7, unless dropout=False) draws its masks from
    (dropout_seed, dropout_step), and each training forward advances
    dropout_step by one: a step of fcn_cuda's Trainer uses (its seed, its
    step), so the same sequence of batches gets the same masks. labels(x):
    the fused upsample + argmax head (upsample_argmax), as fcn_cuda.FCN.labels.
    """

    def __init__(self, variant="8s", num_classes=21, *, widths=VGG16_BLOCKS, fc=4096, at_once=False, seed=0,
                 dropout=True, dropout_seed=0):
        super().__init__()
        V.choice(variant, "variant", VARIANTS)
        num_classes = V.integer(num_classes, "num_classes", minimum=1)
        self.variant, self.num_classes, self.at_once = variant, num_classes, bool(at_once)
        self.dropout = V.flag(dropout, "dropout")
        self.dropout_seed = V.integer(dropout_seed, "dropout_seed", minimum=0, maximum=2**32 - 1)
        self.dropout_step = 0
        self.offsets = head_geometry(variant)
        shapes = param_shapes(variant, num_classes, widths, fc)
        skip = nn.utils.skip_init  # the weights come from fcn_cuda.FCN's initialisation below
        for name in (k[:-len(".weight")] for k in shapes if k.endswith(".weight")):
            out_c, in_c, r, s = shapes[f"{name}.weight"]
            if name.startswith("upscore"):
                stride = next(st for layer, _, st in HEADS[variant] if layer == name)
                setattr(self, name, skip(nn.ConvTranspose2d, out_c, in_c, r, stride=stride, bias=False))
            else:
                pad = CONV1_PAD if name == "conv1_1" else (1 if name.startswith("conv") else 0)
                setattr(self, name, skip(nn.Conv2d, in_c, out_c, r, padding=pad))
        self.load_state_dict({k: torch.from_numpy(v) for k, v in fresh_state_dict(shapes, seed).items()})
        for name, _, _ in HEADS[variant]:
            getattr(self, name).weight.requires_grad_(False)

    @classmethod
    def from_model(cls, model, **kwargs):
        """An FCN module holding a copy of an fcn_cuda.FCN's weights (its
        variant, classes, widths, at-once); kwargs as FCN's (dropout, ...)."""
        if not isinstance(model, _EngineFCN):
            raise TypeError(f"model must be an fcn_cuda.FCN, got {type(model).__name__}")
        sd = model.state_dict()
        net = cls(model.variant, model.num_classes, widths=trunk_widths(sd), fc=sd["fc6.weight"].shape[0],
                  at_once=model.at_once, **kwargs)
        net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
        return net

    def to_model(self):
        """An fcn_cuda.FCN (active backend) holding a copy of these weights: save(), infer(), the Trainer."""
        sd = {k: v.detach().cpu().numpy() for k, v in self.state_dict().items()}
        return _EngineFCN(self.variant, self.num_classes, at_once=self.at_once, state_dict=sd)

    def extra_repr(self):
        return f"variant={self.variant!r}, num_classes={self.num_classes}, at_once={self.at_once}"

    # -------------------------------------------------------------- forward
    def _check_input(self, x):
        _tensors(x=(x, False))
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be N x 3 x H x W (BGR, mean subtracted), got shape {tuple(x.shape)}")

    def _score_fr(self, x):
        """The VGG16 trunk to score_fr; returns (score_fr output, {3: pool3, 4: pool4})."""
        h, pools = x, {}
        for b, block in enumerate(VGG16_BLOCKS):
            for i in range(len(block)):
                conv = getattr(self, f"conv{b + 1}_{i + 1}")
                last = i == len(block) - 1
                # Where no gradient flows, a block ends as fcn_cuda.FCN's inference does.
                if last and not (torch.is_grad_enabled() and any(t.requires_grad for t in (h, conv.weight, conv.bias))):
                    h = conv2d_relu_maxpool(h, conv.weight, conv.bias, padding=conv.padding[0])
                else:
                    h = conv2d(h, conv.weight, conv.bias, padding=conv.padding, relu=True)
                    if last:
                        h = max_pool2d(h, 2, 2, ceil_mode=True)
            pools[b + 1] = h
        key = None
        if self.training and self.dropout:
            key = (self.dropout_seed, self.dropout_step)
            self.dropout_step += 1
        for layer, name in enumerate(("fc6", "fc7")):
            h = conv2d(h, getattr(self, name).weight, getattr(self, name).bias, relu=True)
            if key is not None:
                seed, step, offset = dropout_key(key, layer, h)
                h = dropout(h, DROPOUT_P, seed, step, offset=offset)
        return conv2d(h, self.score_fr.weight, self.score_fr.bias), pools

    def _coarse_scores(self, x):
        """The head up to its last upsample (fcn_cuda.FCN.fuse_skips)."""
        score, pools = self._score_fr(x)
        for (name, _, stride), skip in zip(HEADS[self.variant][:-1], SKIPS[self.variant]):
            up = conv_transpose2d(score, getattr(self, name).weight, stride=stride)
            layer = getattr(self, skip)
            scale = AT_ONCE_SCALE[skip] if self.at_once else 1.0
            score = score_crop_add(up, pools[4 if skip == "score_pool4" else 3], layer.weight, layer.bias,
                                   self.offsets[skip], scale)
        return score

    def forward(self, x):
        self._check_input(x)
        name, _, stride = HEADS[self.variant][-1]
        return conv_transpose2d_window(self._coarse_scores(x), getattr(self, name).weight, stride,
                                       tuple(x.shape[2:]), self.offsets[name])

    def labels(self, x, probs=False):
        """N x H x W int32 labels, == argmax(self(x)); probs=True: (labels,
        softmax probabilities). One kernel for the last upsample and argmax."""
        self._check_input(x)
        name, _, stride = HEADS[self.variant][-1]
        return upsample_argmax(self._coarse_scores(x), getattr(self, name).weight, stride, tuple(x.shape[2:]),
                               self.offsets[name], probs=probs)
