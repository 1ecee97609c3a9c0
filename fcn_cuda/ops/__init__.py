"""The kernels as functions: validated arguments, one launch each.

Arrays are NCHW float32, C-contiguous, of the active backend (NumPy on
'host', CuPy on 'cuda'); anything ``xp.asarray`` takes is accepted, arrays of
the other backend are refused. Each function checks its arguments
(fcn_cuda/_validate.py), allocates the output and calls the matching
launcher in csrc/ops through csrc/bindings.cpp. Semantics are PyTorch's
(see each docstring), checked in tests/ against torch in float64.

One module per kernel family, as in csrc/kernels (X.py wraps X.cuh):
conv2d (with the variant policy and bf16 weights), pool, upsample, crop,
head, softmax, preprocess, conv2d_backward, pool_backward, crop_backward,
loss, dropout, sgd; the study ladder's first rungs, elementwise, reduce,
gemm, scan and sort; metrics (the confusion matrix) and probes (kernels
that test the emulator itself). This package re-exports the ops, not the
rungs, metrics or probes; the helpers a module makes public for its
neighbours (conv_out, pool_size, conv2d_default_variant, ...) are imported
from the module itself: ``from fcn_cuda.ops.conv2d import conv_out``.
(``fcn_cuda.ops.conv2d`` is the function conv2d; its module is reached by
such a from-import.)
"""

from .conv2d import (CONV2D_PRECISION, CONV2D_RELU_MAXPOOL_VARIANTS, CONV2D_SPLIT_VARIANTS, CONV2D_VARIANTS,
                     SMALL_C_MAX_TAPS, WGMMA_VARIANTS, Bf16Weights, conv2d, conv2d_relu_maxpool, conv2d_variants,
                     to_bf16_weights)
from .head import upsample_argmax
from .pool import max_pool2d
from .upsample import CONV_TRANSPOSE2D_VARIANTS, conv_transpose2d, conv_transpose2d_window
from .crop import crop_add, score_crop_add
from .softmax import SOFTMAX_VARIANTS, argmax, softmax, softmax_argmax
from .preprocess import MEAN_BGR, preprocess
from .conv2d_backward import (bias_grad, conv2d_grad_input, conv2d_grad_weight, conv_transpose2d_grad_input,
                              conv_transpose2d_grad_weight, relu_backward)
from .pool_backward import max_pool2d_backward
from .crop_backward import crop_backward, score_crop_add_backward
from .loss import class_pixel_counts, loss_divisor, softmax_cross_entropy
from .dropout import dropout, dropout_backward, philox4x32_10
from .sgd import sgd_step

__all__ = ["conv2d", "CONV2D_VARIANTS", "CONV2D_PRECISION", "CONV2D_SPLIT_VARIANTS", "conv2d_variants",
           "Bf16Weights", "to_bf16_weights", "conv2d_relu_maxpool", "CONV2D_RELU_MAXPOOL_VARIANTS",
           "WGMMA_VARIANTS", "upsample_argmax", "max_pool2d", "conv_transpose2d", "conv_transpose2d_window",
           "CONV_TRANSPOSE2D_VARIANTS", "crop_add", "score_crop_add", "softmax", "argmax", "softmax_argmax",
           "SOFTMAX_VARIANTS", "preprocess", "MEAN_BGR", "relu_backward", "conv2d_grad_input", "conv2d_grad_weight",
           "bias_grad", "conv_transpose2d_grad_input", "conv_transpose2d_grad_weight", "max_pool2d_backward",
           "crop_backward", "score_crop_add_backward", "softmax_cross_entropy", "class_pixel_counts",
           "loss_divisor", "dropout", "dropout_backward", "philox4x32_10", "sgd_step"]
