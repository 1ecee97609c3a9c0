"""fcn_cuda.ops.conv2d against torch.nn.functional.conv2d in float64.

Every variant x shape x backend; the output cannot be passed in, so each
result is checked whole and finite (errors() turns any NaN into +inf).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fcn_cuda import ops

from _util import FP32, HALF, TF32, assert_close, conv_call, to_numpy

pytestmark = pytest.mark.kernels

# The variants that take every filter (small_c, C*R*S <= 64, has its own
# file); each held to its precision's tolerance. The fp32 ones also go
# through the FCN layers, the fuzz and the bad-input tests here; the
# tensor-core ones have theirs in test_conv2d_tensorcore.py.
ALL_VARIANTS = ops.conv2d_variants((1, 65, 1, 1))
VARIANTS = ops.conv2d_variants((1, 65, 1, 1), "fp32")
TOLERANCE = {"fp32": FP32, "tf32": TF32, "bf16": HALF}


def reference(x, w, b, stride, padding, relu):
    t = lambda a: None if a is None else torch.from_numpy(to_numpy(a)).double()
    y = F.conv2d(t(x), t(w), t(b), stride=stride, padding=padding)
    return (F.relu(y) if relu else y).numpy()


def draw(be, rng, n, c, h, w, k, r, s, bias=True):
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((k, c, r, s), dtype=np.float32)
    b = rng.standard_normal(k, dtype=np.float32) if bias else None
    as_be = lambda a: None if a is None else be.xp.asarray(a)
    return as_be(x), as_be(wt), as_be(b)


def check(be, rng, variant, n, c, h, w, k, r, s, stride, padding, relu, bias):
    x, wt, b = draw(be, rng, n, c, h, w, k, r, s, bias)
    y = ops.conv2d(x, wt, b, stride=stride, padding=padding, relu=relu, variant=variant)
    assert isinstance(y, be.xp.ndarray) and y.dtype == np.float32
    assert_close(y, reference(x, wt, b, stride, padding, relu), TOLERANCE[ops.CONV2D_PRECISION[variant]],
                 what=f"{variant} conv2d x{(n, c, h, w)} w{(k, c, r, s)} stride {stride} pad {padding}")


# (N, C, H, W, K, R, S, stride, padding): odd sizes that are multiples of no
# tile, every channel count of the contract, kernels 1/3/5/7 and non-square
# ones, strides 1/2 and pairs, paddings 0/1/2 and asymmetric pairs.
SHAPES = [
    (2, 1, 1, 1, 3, 1, 1, 1, 0),           # 1x1 image, 1x1 kernel
    (2, 1, 1, 1, 4, 3, 3, 1, 1),           # 1x1 image, only the centre tap is inside
    (2, 3, 7, 5, 8, 3, 3, 1, 1),
    (2, 3, 7, 5, 8, 3, 3, 1, 2),           # padding wider than the kernel's reach
    (2, 3, 13, 11, 8, 5, 5, 2, 0),
    (2, 21, 13, 11, 21, 5, 5, 2, 2),
    (2, 21, 7, 5, 70, 3, 3, (2, 1), (0, 2)),  # K = 70: a partial second channel tile
    (2, 21, 13, 11, 8, 1, 1, 2, 0),        # strided 1x1
    (2, 64, 13, 11, 64, 3, 3, 1, 1),       # depth 576: 36 stages of the pipeline
    (2, 64, 7, 5, 21, 1, 1, 1, 0),
    (2, 3, 37, 29, 5, 7, 7, 2, (3, 1)),
    (2, 21, 37, 29, 70, 3, 3, 1, 1),       # 34 pixel tiles x 2 channel tiles
    (2, 3, 9, 7, 5, 3, 1, 1, (1, 0)),      # non-square kernels
    (2, 3, 9, 7, 5, 1, 5, (2, 1), (0, 2)),
    (2, 3, 7, 5, 4, 7, 5, 1, 0),           # kernel as large as the image: 1x1 output
    # the tensor-core variants' stage and tile boundaries
    (2, 1, 1, 1, 3, 1, 1, 1, 0),            # 1x1 image, 1x1 kernel, depth 1
    (2, 3, 1, 1, 5, 3, 3, 1, 1),            # 1x1 image, only the centre tap is inside
    (2, 1, 9, 7, 8, 3, 3, 1, 1),            # depth 9: one partial stage
    (2, 3, 13, 11, 21, 7, 7, 2, 3),         # 7x7, stride 2, pad 3
    (2, 21, 9, 7, 70, 3, 3, 2, 1),          # K = 70: a partial second channel tile
    (2, 64, 7, 5, 64, 1, 1, 1, 0),          # depth 64: four whole stages
    (2, 70, 5, 3, 21, 3, 3, 1, 1),          # C = 70: depth 630 ends mid-stage
    (2, 21, 19, 17, 8, 3, 3, 1, 0),         # 510 pixels: 8 pixel tiles, the last partial
    (2, 3, 9, 7, 5, 1, 1, 2, 3),            # strided 1x1 with padding: border pixels are bias only
    (2, 3, 9, 7, 5, 3, 1, (2, 1), (1, 0)),  # non-square kernel, stride and padding pairs
    (2, 3, 7, 5, 4, 7, 5, 1, 0),            # kernel as large as the image: 1x1 output
    # igemm's narrow tiles (256 x 16 for K <= 16, 128 x 32 for K <= 32) at their edges
    (2, 5, 17, 19, 16, 3, 3, 1, 1),         # 646 pixels: 3 tiles of 256, the last partial
    (2, 5, 17, 19, 17, 3, 3, 1, 1),         # K = 17: a 32-channel tile, half used
    (2, 5, 9, 11, 32, 3, 3, 1, 1),
    (2, 5, 9, 11, 33, 3, 3, 1, 1),          # K = 33: back to 64 x 64
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:7])) + f"_s{s[7]}_p{s[8]}")
@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_shapes(be, rng, variant, shape):
    i = SHAPES.index(shape)
    check(be, rng, variant, *shape, relu=i % 2 == 0, bias=i % 3 != 0)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_relu_and_bias(be, rng, variant, relu, bias):
    check(be, rng, variant, 2, 3, 13, 11, 21, 3, 3, 1, 1, relu, bias)


# FCN's own layer configurations at small spatial size (docs/fcn-reference.md),
# with reduced channel counts where the real ones would be slow to emulate.
FCN_LAYERS = {
    "conv1_1_pad100": (2, 3, 5, 5, 8, 3, 3, 1, 100),
    "conv3x3_pad1": (2, 64, 9, 7, 64, 3, 3, 1, 1),
    "fc6_7x7_on_7x7": (2, 21, 7, 7, 32, 7, 7, 1, 0),
    "fc6_7x7_on_9x9": (2, 21, 9, 9, 32, 7, 7, 1, 0),
    "fc7_1x1": (2, 64, 3, 3, 64, 1, 1, 1, 0),
    "score_fr_1x1": (2, 64, 3, 3, 21, 1, 1, 1, 0),
}


@pytest.mark.model_scale
@pytest.mark.parametrize("layer", FCN_LAYERS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_fcn_layers(be, rng, variant, layer):
    check(be, rng, variant, *FCN_LAYERS[layer], relu=not layer.startswith("score"), bias=True)


def test_default_variant(be, rng):
    x, w, b = draw(be, rng, 2, 3, 7, 5, 8, 3, 3)
    y = ops.conv2d(x, w, b, padding=1, relu=True)
    assert y.shape == (2, 8, 7, 5)
    assert_close(y, reference(x, w, b, 1, 1, True))


def test_default_rule():
    """igemm by default; direct on the host only where igemm's tiles would be mostly zero-fill."""
    from fcn_cuda.ops.conv2d import conv2d_default_variant
    assert conv2d_default_variant(64 * 64, 64, 64 * 9, "host") == "igemm"  # conv 64 -> 64 at 64x64
    assert conv2d_default_variant(64 * 64, 1, 64 * 9, "host") == "direct"  # one output channel
    assert conv2d_default_variant(4, 512, 512 * 49, "host") == "direct"  # fc6 on a 2x2 output
    assert conv2d_default_variant(4, 512, 512 * 49, "cuda") == "igemm"
    assert conv2d_default_variant(3, 64, 27, "host") == "small_c"  # conv1_1's 27 taps, on either backend
    assert conv2d_default_variant(3, 64, 27, "cuda") == "small_c"


def test_torch_tensor_input(be, rng):
    """A torch CPU float32 tensor is read directly on the host backend and refused on cuda."""
    x = torch.from_numpy(rng.standard_normal((2, 3, 7, 5), dtype=np.float32))
    w = torch.from_numpy(rng.standard_normal((4, 3, 3, 3), dtype=np.float32))
    if be.name == "host":
        assert_close(ops.conv2d(x, w, padding=1), reference(x, w, None, 1, 1, False))
    else:
        with pytest.raises(TypeError, match="x"):
            ops.conv2d(x, be.xp.asarray(w.numpy()), padding=1)


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 2), c=st.integers(1, 5), h=st.integers(1, 9), w=st.integers(1, 9),
       k=st.integers(1, 6), r=st.integers(1, 5), s=st.integers(1, 5),
       stride=st.one_of(st.integers(0, 3), st.tuples(st.integers(1, 3), st.integers(-1, 3))),
       padding=st.one_of(st.integers(-1, 3), st.tuples(st.integers(0, 3), st.integers(0, 3))),
       relu=st.booleans(), bias=st.booleans(), dtype=st.sampled_from([np.float32] * 4 + [np.float64]),
       variant=st.sampled_from(VARIANTS + (None,)), seed=st.integers(0, 2**16))
def test_fuzz(be, n, c, h, w, k, r, s, stride, padding, relu, bias, dtype, variant, seed):
    """Each random call either matches torch or raises ValueError / TypeError."""
    x, wt, b = draw(be, np.random.default_rng(seed), n, c, h, w, k, r, s, bias)
    x = x.astype(dtype)
    valid, _, _ = conv_call(dtype, h, w, r, s, stride, padding)
    if not valid:
        with pytest.raises((ValueError, TypeError)):
            ops.conv2d(x, wt, b, stride, padding, relu, variant)
        return
    y = ops.conv2d(x, wt, b, stride, padding, relu, variant)
    assert_close(y, reference(x, wt, b, stride, padding, relu))


# ---------------------------------------------------------------- bad input

def arrays(be, rng):
    return draw(be, rng, 2, 3, 7, 5, 4, 3, 3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_bad_dtype(be, rng, variant):
    x, w, b = arrays(be, rng)
    with pytest.raises(TypeError, match="x must be float32"):
        ops.conv2d(x.astype(np.float64), w, b, variant=variant)
    with pytest.raises(TypeError, match="w must be float32"):
        ops.conv2d(x, w.astype(np.int32), b, variant=variant)
    with pytest.raises(TypeError, match="b must be float32"):
        ops.conv2d(x, w, b.astype(np.float64), variant=variant)


def test_bad_rank(be, rng):
    x, w, b = arrays(be, rng)
    with pytest.raises(ValueError, match="x must be 4-D"):
        ops.conv2d(x[0], w, b)
    with pytest.raises(ValueError, match="w must be 4-D"):
        ops.conv2d(x, w[None], b)
    with pytest.raises(ValueError, match="b must be 1-D"):
        ops.conv2d(x, w, b[None])


def test_shape_mismatch(be, rng):
    x, w, b = arrays(be, rng)
    with pytest.raises(ValueError, match="w has 2 input channels"):
        ops.conv2d(x, w[:, :2].copy(), b)
    with pytest.raises(ValueError, match="b must hold one value per output channel of w"):
        ops.conv2d(x, w, b[:3].copy())


def test_non_contiguous(be, rng):
    x, w, b = arrays(be, rng)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        ops.conv2d(x[:, :, :, ::2], w, b)
    with pytest.raises(ValueError, match="w must be C-contiguous"):
        ops.conv2d(x, w.transpose(0, 1, 3, 2), b)


def test_zero_size(be, rng):
    x, w, b = arrays(be, rng)
    with pytest.raises(ValueError, match="x is empty"):
        ops.conv2d(x[:0], w, b)
    with pytest.raises(ValueError, match="w is empty"):
        ops.conv2d(x, w[:0], b[:0])


@pytest.mark.parametrize("stride", [0, -1, (1, 0), (-2, 1)])
def test_bad_stride(be, rng, stride):
    x, w, b = arrays(be, rng)
    with pytest.raises(ValueError, match="stride"):
        ops.conv2d(x, w, b, stride=stride)


@pytest.mark.parametrize("padding", [-1, (0, -2), (-1, 1)])
def test_negative_padding(be, rng, padding):
    x, w, b = arrays(be, rng)
    with pytest.raises(ValueError, match="padding"):
        ops.conv2d(x, w, b, padding=padding)


def test_bad_argument_types(be, rng):
    x, w, b = arrays(be, rng)
    with pytest.raises(TypeError, match="stride"):
        ops.conv2d(x, w, b, stride=1.0)
    with pytest.raises(ValueError, match="padding"):
        ops.conv2d(x, w, b, padding=(1, 1, 1))
    with pytest.raises(TypeError, match="relu"):
        ops.conv2d(x, w, b, relu="yes")


@pytest.mark.parametrize("variant", VARIANTS)
def test_output_size_not_positive(be, rng, variant):
    x, _, _ = arrays(be, rng)  # 7 x 5 image
    w = be.xp.asarray(rng.standard_normal((4, 3, 7, 7), dtype=np.float32))
    with pytest.raises(ValueError, match="output size would be 1 x -1"):
        ops.conv2d(x, w, variant=variant)
    with pytest.raises(ValueError, match="output size"):
        ops.conv2d(x[:, :, :3].copy(), w, padding=(1, 1), variant=variant)


def test_unknown_variant(be, rng):
    x, w, b = arrays(be, rng)
    with pytest.raises(ValueError, match="variant must be one of"):
        ops.conv2d(x, w, b, variant="winograd")


def test_int32_overflow_refused_before_allocation(be, monkeypatch):
    """A 1x1 image padded by 30000 would give a 2 x 4 x 60001 x 60001 output
    (2.9e10 elements): refused by the size check, before any allocation."""
    x = be.xp.ones((2, 1, 1, 1), dtype=np.float32)
    w = be.xp.ones((4, 1, 1, 1), dtype=np.float32)

    def no_allocation(*args, **kwargs):
        raise AssertionError("conv2d allocated an output that overflows 32-bit indexing")

    monkeypatch.setattr(be, "empty", no_allocation)
    with pytest.raises(ValueError, match="the output .* would have 28800960008 elements"):
        ops.conv2d(x, w, padding=30000)
    with pytest.raises(ValueError, match="padding"):
        ops.conv2d(x, w, padding=(2**30, 0))
    with pytest.raises(ValueError, match="stride"):
        ops.conv2d(x, w, stride=(1, 2**31))
