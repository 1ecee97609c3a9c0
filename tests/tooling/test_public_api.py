"""The public API, written out: a name lost from fcn_cuda, fcn_cuda.ops or
fcn_cuda.torch (a rename, a move that forgot a re-export) fails here.

New names may be added; these may only go after a deliberate change of this list."""

import types

import pytest

import fcn_cuda
from fcn_cuda import ops

FCN_CUDA_ALL = ["FCN", "TrainConfig", "backend", "bilinear_weights", "count_bank_conflicts", "cuda_unavailable_reason",
                "dense_crf", "emulator_counters", "emulator_workers", "evaluate", "infer", "load_model",
                "loss_and_grads", "ops", "read_caffemodel", "reset_emulator_counters", "set_emulator_workers", "train",
                "use_backend"]

OPS_ALL = ["Bf16Weights", "CONV2D_PRECISION", "CONV2D_RELU_MAXPOOL_VARIANTS", "CONV2D_SPLIT_VARIANTS",
           "CONV2D_VARIANTS", "CONV_TRANSPOSE2D_VARIANTS", "MEAN_BGR", "SOFTMAX_VARIANTS", "argmax", "bias_grad",
           "class_pixel_counts", "conv2d", "conv2d_grad_input", "conv2d_grad_weight", "conv2d_relu_maxpool",
           "conv2d_variants", "conv_transpose2d", "conv_transpose2d_grad_input", "conv_transpose2d_grad_weight",
           "conv_transpose2d_window", "crop_add", "crop_backward", "dropout", "dropout_backward", "loss_divisor",
           "max_pool2d", "max_pool2d_backward", "philox4x32_10", "preprocess", "relu_backward", "score_crop_add",
           "score_crop_add_backward", "sgd_step", "softmax", "softmax_argmax", "softmax_cross_entropy",
           "to_bf16_weights", "upsample_argmax"]
OPS_PUBLIC = OPS_ALL + ["SMALL_C_MAX_TAPS"]

TORCH_ALL = ["OPS", "FCN", "conv2d", "conv2d_relu_maxpool", "conv_transpose2d", "conv_transpose2d_window",
             "max_pool2d", "crop_add", "score_crop_add", "softmax", "argmax", "upsample_argmax",
             "softmax_cross_entropy", "dropout", "dense_crf"]
TORCH_PUBLIC = TORCH_ALL + ["AT_ONCE_SCALE", "CONV1_PAD", "DROPOUT_P", "HEADS", "SKIPS", "VARIANTS", "VGG16_BLOCKS",
                            "dropout_key", "head_geometry", "param_shapes", "trunk_widths"]


def public(module):
    """The names a user reaches on `module`: no underscore, not a module."""
    return {n for n in dir(module) if not n.startswith("_") and not isinstance(getattr(module, n), types.ModuleType)}


def missing(names, have):
    return sorted(set(names) - set(have))


def test_fcn_cuda_all_is_unchanged():
    assert sorted(fcn_cuda.__all__) == sorted(FCN_CUDA_ALL)
    assert missing(FCN_CUDA_ALL, public(fcn_cuda) | {"ops"}) == []


def test_ops_keeps_every_public_name():
    assert missing(OPS_ALL, ops.__all__) == []
    assert missing(OPS_PUBLIC, public(ops)) == []
    for name in OPS_ALL:  # a submodule of the same name must not shadow the function
        assert not isinstance(getattr(ops, name), types.ModuleType), name


def test_torch_keeps_every_public_name():
    fct = pytest.importorskip("fcn_cuda.torch")
    assert missing(TORCH_ALL, fct.__all__) == []
    assert missing(TORCH_PUBLIC, public(fct)) == []
