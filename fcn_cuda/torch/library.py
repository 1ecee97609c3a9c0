"""The operators: each fcn_cuda kernel registered as fcn_cuda::<name> for CPU
and CUDA tensors, with a fake (meta) implementation that gives the output
shapes, so it traces under torch.compile, and, where fcn_cuda has the
backward kernels, an autograd formula made of them (themselves operators,
so the backward traces too)."""

import torch

from .. import crf, ops
from ..ops.conv2d import conv2d_relu_maxpool_variant, conv_out
from ..ops.loss import softmax_cross_entropy_on_device
from ..ops.pool import pool_size
from .dispatch import no_backward, op


# ----------------------------------------------------------------- conv2d
@op("conv2d(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, bool relu) -> Tensor")
def _conv2d(x, weight, bias, stride, padding, relu):
    return ops.conv2d(x, weight, bias, stride, padding, relu)


@op("conv2d_grad_input(Tensor grad_y, Tensor weight, int[4] x_shape, int[2] stride, int[2] padding, "
     "Tensor? relu_y) -> Tensor")
def _conv2d_grad_input(grad_y, weight, x_shape, stride, padding, relu_y):
    return ops.conv2d_grad_input(grad_y, weight, x_shape, stride, padding, relu_y)


@op("conv2d_grad_weight(Tensor x, Tensor grad_y, int[2] kernel_size, int[2] stride, int[2] padding, "
     "Tensor? relu_y) -> (Tensor, Tensor)")
def _conv2d_grad_weight(x, grad_y, kernel_size, stride, padding, relu_y):
    return ops.conv2d_grad_weight(x, grad_y, kernel_size, stride, padding, relu_y)


@op("bias_grad(Tensor grad_y) -> Tensor")
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


@op("conv2d_relu_maxpool(Tensor x, Tensor weight, Tensor? bias, int padding) -> Tensor")
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


_conv2d_relu_maxpool.register_autograd(no_backward("conv2d_relu_maxpool (train through conv2d and max_pool2d)"))


# ----------------------------------------------------------------- conv_transpose2d
@op("conv_transpose2d(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding) -> Tensor")
def _conv_transpose2d(x, weight, bias, stride, padding):
    return ops.conv_transpose2d(x, weight, bias, stride, padding)


@op("conv_transpose2d_window(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] size, int[2] offset) "
     "-> Tensor")
def _conv_transpose2d_window(x, weight, bias, stride, size, offset):
    return ops.conv_transpose2d_window(x, weight, stride, size[0], size[1], offset, b=bias)


@op("conv_transpose2d_grad_input(Tensor grad_y, Tensor weight, int[4] x_shape, int[2] stride, int[2] padding) "
     "-> Tensor")
def _conv_transpose2d_grad_input(grad_y, weight, x_shape, stride, padding):
    return ops.conv_transpose2d_grad_input(grad_y, weight, stride, padding, x_shape)


@op("conv_transpose2d_grad_weight(Tensor x, Tensor grad_y, int[2] kernel_size, int[2] stride, int[2] padding) "
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
@op("max_pool2d(Tensor x, int[2] kernel_size, int[2] stride, bool ceil_mode) -> Tensor")
def _max_pool2d(x, kernel_size, stride, ceil_mode):
    return ops.max_pool2d(x, kernel_size, stride, ceil_mode)


@op("max_pool2d_with_indices(Tensor x, int[2] kernel_size, int[2] stride, bool ceil_mode) -> (Tensor, Tensor)")
def _max_pool2d_with_indices(x, kernel_size, stride, ceil_mode):
    return ops.max_pool2d(x, kernel_size, stride, ceil_mode, return_indices=True)


@op("max_pool2d_backward(Tensor grad_y, Tensor indices, int[4] x_shape, int[2] kernel_size, int[2] stride) "
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
_max_pool2d.register_autograd(no_backward("max_pool2d without indices (max_pool2d_with_indices has one)"))


# ----------------------------------------------------------------- crop_add and the score head
@op("crop_add(Tensor a, Tensor b, int[2] offset) -> Tensor")
def _crop_add(a, b, offset):
    return ops.crop_add(a, b, offset)


@op("crop_backward(Tensor grad, int[4] b_shape, int[2] offset) -> Tensor")
def _crop_backward(grad, b_shape, offset):
    return ops.crop_backward(grad, b_shape, offset)


@op("score_crop_add(Tensor up, Tensor feat, Tensor weight, Tensor? bias, int[2] offset, float scale) -> Tensor")
def _score_crop_add(up, feat, weight, bias, offset, scale):
    return ops.score_crop_add(up, feat, weight, bias, offset, scale)


@op("score_crop_add_backward(Tensor grad_out, Tensor feat, Tensor weight, int[2] offset, float scale) "
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
@op("softmax(Tensor x) -> Tensor")
def _softmax(x):
    return ops.softmax(x)


@op("argmax(Tensor x) -> Tensor")
def _argmax(x):
    return ops.argmax(x)


@op("upsample_argmax(Tensor x, Tensor weight, int[2] stride, int[2] size, int[2] offset) -> Tensor")
def _upsample_argmax(x, weight, stride, size, offset):
    return ops.upsample_argmax(x, weight, stride, size[0], size[1], offset)


@op("upsample_softmax_argmax(Tensor x, Tensor weight, int[2] stride, int[2] size, int[2] offset) "
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


_softmax.register_autograd(no_backward("softmax (train through softmax_cross_entropy, whose gradient is the "
                                         "loss kernel's)"))
_upsample_softmax_argmax.register_autograd(no_backward("upsample_argmax's probabilities (train through "
                                                        "conv_transpose2d_window and softmax_cross_entropy)"))


# ----------------------------------------------------------------- the loss and dropout
@op("softmax_cross_entropy(Tensor scores, Tensor labels, int ignore_index, bool normalize, Tensor? weight) "
     "-> (Tensor, Tensor)")
def _softmax_cross_entropy(scores, labels, ignore_index, normalize, weight):
    return softmax_cross_entropy_on_device(scores, labels, ignore_index, normalize, weight)


@op("dropout(Tensor x, float p, int seed, int step, int offset) -> Tensor")
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
@op("dense_crf(Tensor img, Tensor probs, int iterations, float gaussian_sxy, float gaussian_compat, "
     "float bilateral_sxy, float bilateral_srgb, float bilateral_compat, str variant) -> Tensor")
def _dense_crf(img, probs, iterations, gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb,
               bilateral_compat, variant):
    return crf.dense_crf(img, probs, iterations, gaussian_sxy=gaussian_sxy, gaussian_compat=gaussian_compat,
                         bilateral_sxy=bilateral_sxy, bilateral_srgb=bilateral_srgb,
                         bilateral_compat=bilateral_compat, variant=variant)


@_dense_crf.register_fake
def _(img, probs, *params):
    return probs.new_empty(probs.shape)


_dense_crf.register_autograd(no_backward("dense_crf (mean-field inference: refine probabilities after training)"))
