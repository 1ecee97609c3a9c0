"""Every public function of fcn_cuda.ops, called with one wrong argument at a
time, raises TypeError or ValueError whose message starts with that
argument's name (the form fcn_cuda._validate gives): an array argument in
the wrong dtype, any other argument as a string (an unknown name where the
argument is a name, such as a variant)."""

import functools
import inspect

import numpy as np
import pytest

from fcn_cuda import bilinear_weights, ops

pytestmark = pytest.mark.kernels

WRONG_DTYPE = {np.float32: np.float64, np.int64: np.float64, np.int32: np.int64, np.uint8: np.float32, np.uint32: np.int64}


@functools.cache
def valid_calls(be):
    """A valid call of each public function, as {function name: {parameter: value}}, made once per
    backend (no op called with a wrong argument gets as far as writing to its inputs)."""
    xp, rng = be.xp, np.random.default_rng(5)
    f32 = lambda *shape: xp.asarray(rng.standard_normal(shape).astype(np.float32))  # noqa: E731
    x, w, b = f32(2, 3, 8, 8), f32(4, 3, 3, 3), f32(4)
    gy = f32(2, 4, 8, 8)
    up_w = xp.asarray(bilinear_weights(3, 4))
    t_x, t_w, t_b = f32(2, 3, 4, 4), f32(3, 5, 4, 4), f32(5)
    t_gy = f32(2, 5, 8, 8)  # conv_transpose2d(t_x, t_w, stride 2, padding 1) is 8 x 8
    scores = f32(2, 4, 5, 5)
    labels = xp.asarray(rng.integers(0, 4, (2, 5, 5)).astype(np.int32))
    _, indices = ops.max_pool2d(x, return_indices=True)
    return {
        "conv2d": dict(x=x, w=w, b=b, stride=1, padding=1, relu=False, variant="igemm", splits=1, precision="fp32"),
        "conv2d_variants": dict(w_shape=(4, 3, 3, 3), precision="fp32", stride=1),
        "to_bf16_weights": dict(w=w),
        "conv2d_relu_maxpool": dict(x=x, w=w, b=b, stride=1, padding=1, variant="igemm", precision="fp32"),
        "upsample_argmax": dict(x=t_x, w=up_w, stride=2, out_h=6, out_w=6, offset=(1, 1), probs=False,
                                trusted=False),
        "max_pool2d": dict(x=x, kernel_size=2, stride=2, ceil_mode=True, return_indices=False),
        "conv_transpose2d": dict(x=t_x, w=t_w, b=t_b, stride=2, padding=1, variant="gather", trusted=False),
        "conv_transpose2d_window": dict(x=t_x, w=t_w, stride=2, out_h=6, out_w=6, offset=(1, 1), variant="gather",
                                        b=t_b, trusted=False),
        "crop_add": dict(a=f32(2, 3, 4, 4), b=f32(2, 3, 6, 6), offset=(1, 1)),
        "score_crop_add": dict(up=f32(2, 4, 4, 4), feat=f32(2, 3, 6, 6), w=f32(4, 3, 1, 1), b=b, offset=(1, 1),
                               scale=1.0),
        "softmax": dict(x=scores, variant="auto"),
        "argmax": dict(x=scores, variant="auto"),
        "softmax_argmax": dict(x=scores, variant="auto"),
        "preprocess": dict(img=xp.asarray(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8))),
        "relu_backward": dict(grad_y=gy, y=f32(2, 4, 8, 8)),
        "conv2d_grad_input": dict(grad_y=gy, w=w, x_shape=(2, 3, 8, 8), stride=1, padding=1, relu_y=f32(2, 4, 8, 8)),
        "conv2d_grad_weight": dict(x=x, grad_y=gy, kernel_size=3, stride=1, padding=1, relu_y=f32(2, 4, 8, 8)),
        "bias_grad": dict(grad_y=gy),
        "conv_transpose2d_grad_input": dict(grad_y=t_gy, w=t_w, stride=2, padding=1, x_shape=(2, 3, 4, 4)),
        "conv_transpose2d_grad_weight": dict(x=t_x, grad_y=t_gy, kernel_size=4, stride=2, padding=1),
        "max_pool2d_backward": dict(grad_y=f32(2, 3, 4, 4), indices=indices, x_shape=(2, 3, 8, 8), kernel_size=2,
                                    stride=2),
        "crop_backward": dict(grad=f32(2, 3, 4, 4), b_shape=(2, 3, 6, 6), offset=(1, 1)),
        "score_crop_add_backward": dict(grad_out=f32(2, 4, 4, 4), feat=f32(2, 3, 6, 6), w=f32(4, 3, 1, 1),
                                        offset=(1, 1), scale=1.0),
        "softmax_cross_entropy": dict(scores=scores, labels=labels, ignore_index=255, normalize=True,
                                      weight=np.ones(4, np.float32), divisor=50.0),
        "class_pixel_counts": dict(labels=labels, num_classes=4, ignore_index=255),
        "loss_divisor": dict(counts=np.array([3, 4, 5, 6]), n=2, normalize=True, weight=np.ones(4, np.float32)),
        "dropout": dict(x=x, p=0.5, seed=1, step=0, offset=0),
        "dropout_backward": dict(grad_y=x, p=0.5, seed=1, step=0, offset=0),
        "philox4x32_10": dict(counters=xp.zeros((3, 4), np.uint32), keys=xp.zeros((3, 2), np.uint32)),
        "sgd_step": dict(w=f32(10), g=f32(10), v=f32(10), lr=0.1, momentum=0.9, weight_decay=5e-4),
    }


FUNCTIONS = sorted(n for n in ops.__all__ if inspect.isfunction(getattr(ops, n)))


# Small host-side vectors that any numeric dtype may give.
ANY_NUMBERS = {("softmax_cross_entropy", "weight"), ("loss_divisor", "weight")}


def wrong_values(function, parameter, value):
    """What replaces a valid argument: an array in another dtype; anything else as a string."""
    if hasattr(value, "dtype") and hasattr(value, "shape") and (function, parameter) not in ANY_NUMBERS:
        return [value.astype(WRONG_DTYPE[value.dtype.type])]
    return ["wrong"]


def test_every_public_function_has_a_valid_call(be):
    calls = valid_calls(be)
    assert sorted(calls) == FUNCTIONS
    for name, kwargs in calls.items():
        assert list(kwargs) == list(inspect.signature(getattr(ops, name)).parameters), name
        getattr(ops, name)(**kwargs)


CASES = [(f, p) for f in FUNCTIONS for p in inspect.signature(getattr(ops, f)).parameters]


@pytest.mark.parametrize("function,parameter", CASES, ids=[f"{f}-{p}" for f, p in CASES])
def test_a_wrong_argument_is_named(be, function, parameter):
    kwargs = valid_calls(be)[function]
    for wrong in wrong_values(function, parameter, kwargs[parameter]):
        with pytest.raises((TypeError, ValueError)) as e:
            getattr(ops, function)(**dict(kwargs, **{parameter: wrong}))
        message = str(e.value)
        assert message.startswith((f"{parameter} ", f"{parameter}:", f"{parameter}[")), \
            f"{function}({parameter}=<wrong>) raised {e.type.__name__}({message!r}), which does not name {parameter}"
