"""The operators with PyTorch's conventions: each wrapper checks its
arguments (tensors, ints or pairs, flags) as fcn_cuda.ops does and calls its
operator (fcn_cuda.torch.library, through OPS)."""

import torch

from .. import _validate as V
from .. import crf
from ..ops.dropout import dropout_args
from . import library  # noqa: F401  (registers the operators in OPS)
from .dispatch import OPS, check_tensors

__all__ = ["conv2d", "conv2d_relu_maxpool", "conv_transpose2d", "conv_transpose2d_window", "max_pool2d", "crop_add",
           "score_crop_add", "softmax", "argmax", "upsample_argmax", "softmax_cross_entropy", "dropout", "dense_crf"]


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
    check_tensors(x=(x, False), weight=(weight, False), bias=(bias, True))
    return OPS["conv2d"](x, weight, bias, _pair(stride, "stride", 1), _pair(padding, "padding", 0),
                         V.flag(relu, "relu"))


def conv2d_relu_maxpool(x, weight, bias=None, padding=0):
    """``F.max_pool2d(F.relu(F.conv2d(x, weight, bias, 1, padding)), 2, 2,
    ceil_mode=True)`` without storing the convolution's output where a
    fused kernel serves the shape (ops.conv2d_relu_maxpool), for inference:
    no backward (train through conv2d and max_pool2d). padding: an int."""
    check_tensors(x=(x, False), weight=(weight, False), bias=(bias, True))
    return OPS["conv2d_relu_maxpool"](x, weight, bias, V.integer(padding, "padding", minimum=0))


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0):
    """``F.conv_transpose2d(x, weight, bias, stride, padding)`` (no
    output_padding, groups or dilation); weight: C_in x C_out x R x S. The
    per-channel 'bilinear' variant runs where weight is per-channel (zero off
    its diagonal), as ops.conv_transpose2d decides. Differentiable in x,
    weight and bias (ops.conv_transpose2d_grad_input / _grad_weight, bias_grad)."""
    check_tensors(x=(x, False), weight=(weight, False), bias=(bias, True))
    return OPS["conv_transpose2d"](x, weight, bias, _pair(stride, "stride", 1), _pair(padding, "padding", 0))


def conv_transpose2d_window(x, weight, stride, size, offset, bias=None):
    """``F.conv_transpose2d(x, weight, bias, stride)[:, :, oy:oy+H, ox:ox+W]``
    computing only that window (FCN's last upsample and crop); size: (H, W)
    or an int, offset: (oy, ox) or an int. Differentiable as conv_transpose2d
    (its gradient first goes through ops.crop_backward)."""
    check_tensors(x=(x, False), weight=(weight, False), bias=(bias, True))
    return OPS["conv_transpose2d_window"](x, weight, bias, _pair(stride, "stride", 1), _pair(size, "size", 1),
                                    _pair(offset, "offset", 0))


def max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True, return_indices=False):
    """``F.max_pool2d(x, kernel_size, stride, padding=0, ceil_mode=ceil_mode,
    return_indices=return_indices)``; stride None means kernel_size. The
    indices are int32 (torch's are int64), flat h * W + w in each plane.
    Where a gradient may be needed (grad mode on, x requires grad) the
    indices are computed and the backward is ops.max_pool2d_backward."""
    check_tensors(x=(x, False))
    kernel_size = _pair(kernel_size, "kernel_size", 1)
    stride = kernel_size if stride is None else _pair(stride, "stride", 1)
    ceil_mode, return_indices = V.flag(ceil_mode, "ceil_mode"), V.flag(return_indices, "return_indices")
    if return_indices or (torch.is_grad_enabled() and x.requires_grad):
        y, indices = OPS["max_pool2d_with_indices"](x, kernel_size, stride, ceil_mode)
        return (y, indices) if return_indices else y
    return OPS["max_pool2d"](x, kernel_size, stride, ceil_mode)


def crop_add(a, b, offset):
    """``a + b[:, :, oy:oy+Ha, ox:ox+Wa]``; offset: an int or (oy, ox).
    Differentiable in a and b (ops.crop_backward)."""
    check_tensors(a=(a, False), b=(b, False))
    return OPS["crop_add"](a, b, _pair(offset, "offset", 0))


def score_crop_add(up, feat, weight, bias=None, offset=0, scale=1.0):
    """``up + F.conv2d(scale * feat, weight, bias)[:, :, oy:oy+H, ox:ox+W]``
    in one kernel (FCN's score_pool4 / score_pool3, crop and sum); weight:
    K x C x 1 x 1. Differentiable in up, feat, weight and bias
    (ops.score_crop_add_backward)."""
    check_tensors(up=(up, False), feat=(feat, False), weight=(weight, False), bias=(bias, True))
    return OPS["score_crop_add"](up, feat, weight, bias, _pair(offset, "offset", 0), V.real(scale, "scale"))


def softmax(x):
    """``torch.softmax(x, 1)`` of N x C x H x W scores. No backward kernel:
    a backward through it raises NotImplementedError."""
    check_tensors(x=(x, False))
    return OPS["softmax"](x)


def argmax(x):
    """``torch.argmax(x, 1)`` as an N x H x W int32 label map (ties: the lowest channel)."""
    check_tensors(x=(x, False))
    return OPS["argmax"](x)


def upsample_argmax(x, weight, stride, size, offset, probs=False):
    """The labels of ``conv_transpose2d_window(x, weight, stride, size,
    offset)`` (argmax over channels, int32), in one kernel that never stores
    the upsampled scores; weight per-channel (FCN's bilinear upsampling).
    probs=True returns (labels, softmax probabilities). Not differentiable."""
    check_tensors(x=(x, False), weight=(weight, False))
    args = (x, weight, _pair(stride, "stride", 1), _pair(size, "size", 1), _pair(offset, "offset", 0))
    return OPS["upsample_softmax_argmax"](*args) if V.flag(probs, "probs") else OPS["upsample_argmax"](*args)


def softmax_cross_entropy(scores, labels, ignore_index=255, normalize=False, weight=None):
    """FCN's loss as a 0-d float32 tensor: ``F.cross_entropy(scores, labels,
    weight, ignore_index=ignore_index, reduction='sum') / N``, or with
    normalize=True, reduction='mean'. labels: N x H x W int32 (torch's
    targets are int64: pass labels.int()). The backward is the gradient the
    loss kernel computed with the loss, times the incoming gradient."""
    check_tensors(scores=(scores, False), labels=(labels, False), weight=(weight, True))
    ignore_index = V.integer(ignore_index, "ignore_index", minimum=-2**31, maximum=2**31 - 1)
    return OPS["softmax_cross_entropy"](scores, labels, ignore_index, V.flag(normalize, "normalize"), weight)[0]


def dropout(x, p=0.5, seed=0, step=0, training=True, *, offset=0):
    """Training-mode dropout with fcn_cuda's counter-based mask (Philox keyed
    by (seed, step), x placed at element `offset` of a larger batch:
    ops.dropout), x unchanged when training is False. The backward
    recomputes the mask (ops.dropout_backward). `training` stays fifth, as
    before offset was added; offset is keyword-only."""
    check_tensors(x=(x, False))
    if not V.flag(training, "training"):
        return x
    p, seed, step = dropout_args(p, seed, step)
    return OPS["dropout"](x, p, seed, step, V.integer(offset, "offset", minimum=0, maximum=2**62))


def dense_crf(img, probs, iterations=5, *, gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=80.0,
              bilateral_srgb=13.0, bilateral_compat=10.0, variant="lattice"):
    """fcn_cuda.dense_crf on tensors: img H x W x 3 uint8 RGB, probs C x H x W
    float32 class probabilities -> Q, C x H x W float32 (== pydensecrf's
    mean field, the same arguments). Not differentiable."""
    check_tensors(img=(img, False), probs=(probs, False))
    iterations = V.integer(iterations, "iterations", minimum=0)
    params = [V.real(v, k) for k, v in (("gaussian_sxy", gaussian_sxy), ("gaussian_compat", gaussian_compat),
                                           ("bilateral_sxy", bilateral_sxy), ("bilateral_srgb", bilateral_srgb),
                                           ("bilateral_compat", bilateral_compat))]
    return OPS["dense_crf"](img, probs, iterations, *params, V.choice(variant, "variant", crf.CRF_VARIANTS))
