"""fcn_cuda.ops.conv2d_relu_maxpool (conv2d's igemm epilogue with FCN's
ReLU + 2x2 stride-2 ceil-mode max pool fused in) against
F.max_pool2d(F.relu(F.conv2d(...)), 2, 2, ceil_mode=True) in float64, at
each variant's tolerance (fp32 1e-5, TF32 2e-3, bf16 1e-2), and bit for bit
against the unfused ops.max_pool2d(ops.conv2d(..., relu=True)) of the same
variant; FCN's inference path with the fusion equals the one without.

The output cannot be passed in (the launcher zero-fills it before the
epilogue max-accumulates into it), so each result is checked whole and
finite (errors() turns any NaN into +inf).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fcn_cuda
from fcn_cuda import model as M
from fcn_cuda import ops
from fcn_cuda.ops.conv2d import conv2d_auto_splits, conv2d_relu_maxpool_variant

from _util import FP32, HALF, TF32, assert_close, conv_call, to_numpy
from test_conv2d import draw  # the fixed-seed inputs
from torch_fcn import random_fcn, state_dict_f32

pytestmark = pytest.mark.kernels

TOL = {"igemm": FP32, "igemm_tf32": TF32, "igemm_bf16": HALF, "mma_tf32": TF32, "mma_bf16": HALF}
# the variants that take every stride; the stride-1 wgmma ones pool in test_conv2d_wgmma.py
VARIANTS = tuple(v for v in ops.CONV2D_RELU_MAXPOOL_VARIANTS if v not in ops.WGMMA_VARIANTS)


def reference(x, w, b, stride, padding):
    t = lambda a: None if a is None else torch.from_numpy(to_numpy(a)).double()
    y = F.relu(F.conv2d(t(x), t(w), t(b), stride=stride, padding=padding))
    return F.max_pool2d(y, 2, 2, ceil_mode=True).numpy()


def unfused(x, w, b, stride, padding, variant):
    return ops.max_pool2d(ops.conv2d(x, w, b, stride, padding, relu=True, variant=variant), 2, 2, ceil_mode=True)


def assert_same_bits(out, ref, what):
    out, ref = to_numpy(out), to_numpy(ref)
    assert out.shape == ref.shape, f"{what}: shape {out.shape} != {ref.shape}"
    differ = np.count_nonzero(out.view(np.int32) != ref.view(np.int32))
    assert differ == 0, f"{what}: {differ} of {out.size} elements differ from the unfused ops"


def check(be, rng, variant, n, c, h, w, k, r, s, stride, padding, bias):
    x, wt, b = draw(be, rng, n, c, h, w, k, r, s, bias)
    y = ops.conv2d_relu_maxpool(x, wt, b, stride, padding, variant)
    assert isinstance(y, be.xp.ndarray) and y.dtype == np.float32
    ref = reference(x, wt, b, stride, padding)
    what = f"{variant} conv2d_relu_maxpool x{(n, c, h, w)} w{(k, c, r, s)} stride {stride} pad {padding}"
    assert np.isfinite(to_numpy(y)).all(), f"{what} wrote a non-finite value"
    assert_close(y, ref, TOL[variant], what=what)
    assert_same_bits(y, unfused(x, wt, b, stride, padding, variant), what)


# (N, C, H, W, K, R, S, stride, padding): batch 2; odd P / Q, so the ceil
# windows of the last row / column hold a single row / column; K below,
# at and above the 64-channel tile; several 64-pixel tiles, whose edges
# split pooling windows (a window's two rows are Q pixels apart, so many
# windows have pixels in two tiles, i.e. two blocks); 1x1 outputs; strides
# and paddings in pairs.
SHAPES = [
    (2, 1, 1, 1, 3, 1, 1, 1, 0),             # 1x1 output: a window of one pixel
    (2, 3, 7, 5, 8, 3, 3, 1, 1),             # 7 x 5: last pooled row and column are single
    (2, 3, 6, 8, 5, 3, 3, 1, 1),             # even P and Q: whole windows only
    (2, 21, 9, 7, 70, 3, 3, 1, 1),           # K = 70: a partial second channel tile
    (2, 21, 19, 17, 21, 3, 3, 1, 0),         # 17 x 15 pixels: 8 pixel tiles, windows split across them
    (2, 64, 5, 9, 64, 1, 1, 1, 0),           # depth 64, P = 5 odd, Q = 9 odd
    (2, 3, 13, 11, 8, 5, 5, 2, 2),           # stride 2
    (2, 3, 9, 7, 5, 3, 1, (2, 1), (1, 0)),   # non-square kernel, stride and padding pairs
    (2, 3, 1, 8, 4, 1, 3, 1, (0, 1)),        # a single row: P = 1
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:7])) + f"_s{s[7]}_p{s[8]}")
@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes(be, rng, variant, shape):
    i = SHAPES.index(shape)
    check(be, rng, variant, *shape, bias=i % 3 != 1)


# FCN's block ends (docs/fcn-reference.md) at tiny spatial size: conv1_2 is
# 64 -> 64 and conv3_3 256 -> 256, both 3x3 pad 1 before pool1 / pool3.
FCN_LAYERS = {
    "conv1_2": (2, 64, 9, 7, 64, 3, 3, 1, 1),
    "conv3_3": (1, 256, 5, 3, 256, 3, 3, 1, 1),
}


@pytest.mark.model_scale
@pytest.mark.parametrize("layer", FCN_LAYERS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_fcn_layers(be, rng, variant, layer):
    check(be, rng, variant, *FCN_LAYERS[layer], bias=True)


def test_default_variant_is_igemm(be, rng):
    x, w, b = draw(be, rng, 2, 3, 7, 5, 8, 3, 3)
    y = ops.conv2d_relu_maxpool(x, w, b, padding=1)
    assert y.shape == (2, 8, 4, 3)
    assert_same_bits(y, ops.conv2d_relu_maxpool(x, w, b, padding=1, variant="igemm"), "default variant")


@pytest.mark.parametrize("variant", VARIANTS)
def test_special_values_match_unfused(be, rng, variant):
    """NaN and inf in x: the ReLU's fmaxf maps a NaN sum to 0 in both paths,
    +inf is the largest int pattern a ReLU output can have; a bias of -1e30
    zeroes whole channels of image 0 (image 1 has the inf), so their pooled
    cells keep the zero fill."""
    x = rng.standard_normal((2, 5, 9, 7), dtype=np.float32)
    x[0, 1, 2, 3] = np.nan
    x[1, 4, 5, 6] = np.inf
    x[1, 0, 0, 0] = -np.inf
    w = rng.standard_normal((21, 5, 3, 3), dtype=np.float32)
    b = rng.standard_normal(21, dtype=np.float32)
    b[::3] = -1e30
    x, w, b = (be.xp.asarray(a) for a in (x, w, b))
    y = ops.conv2d_relu_maxpool(x, w, b, padding=1, variant=variant)
    out = to_numpy(y)
    assert not np.isnan(out).any() and np.isinf(out).any() and (out[0, ::3] == 0).all()
    assert not np.signbit(out).any(), "a -0 in the pooled output"
    assert_same_bits(y, unfused(x, w, b, 1, 1, variant), f"{variant} with NaN / inf inputs")


def test_deterministic(be, rng):
    """atomicMax on the bits: the result cannot depend on the order blocks run in."""
    x, w, b = draw(be, rng, 2, 21, 19, 17, 70, 3, 3)
    first = to_numpy(ops.conv2d_relu_maxpool(x, w, b, padding=1))
    for _ in range(2):
        assert_same_bits(ops.conv2d_relu_maxpool(x, w, b, padding=1), first, "a second run")


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 2), c=st.sampled_from([1, 3, 5, 21]), h=st.integers(1, 11), w=st.integers(1, 11),
       k=st.sampled_from([1, 3, 21, 64, 70]), r=st.integers(1, 5), s=st.integers(1, 5),
       stride=st.one_of(st.integers(0, 2), st.tuples(st.integers(1, 2), st.integers(-1, 2))),
       padding=st.one_of(st.integers(-1, 2), st.tuples(st.integers(0, 2), st.integers(0, 2))),
       bias=st.booleans(), dtype=st.sampled_from([np.float32] * 4 + [np.float64]),
       variant=st.sampled_from(VARIANTS + (None,)), seed=st.integers(0, 2**16))
def test_fuzz(be, n, c, h, w, k, r, s, stride, padding, bias, dtype, variant, seed):
    """Each random call either matches torch (and the unfused ops bit for bit)
    or raises ValueError / TypeError."""
    x, wt, b = draw(be, np.random.default_rng(seed), n, c, h, w, k, r, s, bias)
    x = x.astype(dtype)
    valid, _, _ = conv_call(dtype, h, w, r, s, stride, padding)
    if not valid:
        with pytest.raises((ValueError, TypeError)):
            ops.conv2d_relu_maxpool(x, wt, b, stride, padding, variant)
        return
    y = ops.conv2d_relu_maxpool(x, wt, b, stride, padding, variant)
    assert_close(y, reference(x, wt, b, stride, padding), TOL[variant or "igemm"])
    assert_same_bits(y, unfused(x, wt, b, stride, padding, variant or "igemm"), "fuzz")


# ---------------------------------------------------------------- bad input

def test_bad_input(be, rng):
    x, w, b = draw(be, rng, 2, 3, 7, 5, 4, 3, 3)
    f = ops.conv2d_relu_maxpool
    bad = [
        (TypeError, "x must be float32", lambda: f(x.astype(np.float64), w, b)),
        (TypeError, "w must be float32", lambda: f(x, w.astype(np.int32), b)),
        (TypeError, "b must be float32", lambda: f(x, w, b.astype(np.float64))),
        (ValueError, "x must be 4-D", lambda: f(x[0], w, b)),
        (ValueError, "w must be 4-D", lambda: f(x, w[None], b)),
        (ValueError, "b must be 1-D", lambda: f(x, w, b[None])),
        (ValueError, "w has 2 input channels", lambda: f(x, w[:, :2].copy(), b)),
        (ValueError, "b must hold one value per output channel of w", lambda: f(x, w, b[:3].copy())),
        (ValueError, "x must be C-contiguous", lambda: f(x[:, :, :, ::2], w, b)),
        (ValueError, "w must be C-contiguous", lambda: f(x, w.transpose(0, 1, 3, 2), b)),
        (ValueError, "x is empty", lambda: f(x[:0], w, b)),
        (ValueError, "w is empty", lambda: f(x, w[:0], b[:0])),
        (ValueError, "stride", lambda: f(x, w, b, stride=0)),
        (ValueError, r"stride\[1\]", lambda: f(x, w, b, stride=(1, -1))),
        (TypeError, "stride", lambda: f(x, w, b, stride=1.0)),
        (ValueError, "padding", lambda: f(x, w, b, padding=-1)),
        (ValueError, "padding", lambda: f(x, w, b, padding=(1, 1, 1))),
        (ValueError, "output size would be", lambda: f(x[:, :, :2].copy(), w, b)),
        (ValueError, "variant must be one of", lambda: f(x, w, b, variant="direct")),
        (ValueError, "variant must be one of", lambda: f(x, w, b, variant="winograd")),
    ]
    for error, match, call in bad:
        with pytest.raises(error, match=match):
            call()


def test_other_backend_refused(be, rng):
    x, w, b = draw(be, rng, 2, 3, 7, 5, 4, 3, 3)
    if be.name == "cuda":
        other = to_numpy(x)
    else:
        class GpuArray:  # what a CuPy array looks like to the validation layer
            __cuda_array_interface__ = {}
        other = GpuArray()
    with pytest.raises(TypeError, match="x"):
        ops.conv2d_relu_maxpool(other, w, b)
    with pytest.raises(TypeError, match="w"):
        ops.conv2d_relu_maxpool(x, other, b)


def test_int32_overflow_refused_before_allocation(be, monkeypatch):
    x = be.xp.ones((1, 1, 1, 1), dtype=np.float32)

    def no_allocation(*args, **kwargs):
        raise AssertionError("conv2d_relu_maxpool allocated an output that overflows 32-bit indexing")

    monkeypatch.setattr(be, "empty", no_allocation)
    # 2 x 60001 x 60001 conv pixels (7.2e9).
    with pytest.raises(ValueError, match="the convolution's pixels"):
        ops.conv2d_relu_maxpool(be.xp.ones((2, 1, 1, 1), dtype=np.float32), be.xp.ones((4, 1, 1, 1), dtype=np.float32),
                                padding=30000)
    # 40001^2 pixels fit, a 64 x 20001 x 20001 pooled output (2.6e10) does not.
    with pytest.raises(ValueError, match="the output"):
        ops.conv2d_relu_maxpool(x, be.xp.ones((64, 1, 1, 1), dtype=np.float32), padding=20000)


# ---------------------------------------------------------------- FCN's forward

# Reduced widths where the blocks' last convs get conv2d's igemm by default on
# both backends (on the host narrower ones would take direct, which has no
# fused epilogue, and stay unfused).
WIDTHS = ((8, 16), (16, 32), (32, 32, 32), (32, 32, 64), (32, 32, 64))


@pytest.mark.model_scale
def test_model_fused_equals_unfused(be, monkeypatch):
    net = random_fcn("8s", seed=5, num_classes=5, widths=WIDTHS, fc=32)
    model = fcn_cuda.load_model(state_dict_f32(net))
    x = be.xp.asarray(np.random.default_rng(2).uniform(-120, 130, size=(2, 3, 9, 13)).astype(np.float32))
    calls = []
    fused_op = ops.conv2d_relu_maxpool
    monkeypatch.setattr(ops, "conv2d_relu_maxpool", lambda *a, **kw: calls.append(kw["variant"]) or fused_op(*a, **kw))

    fused, fused_labels = to_numpy(model(x)), to_numpy(model.labels(x))
    assert len(calls) == 2 * 5, f"the fused op ran for {len(calls)} of the 2 x 5 block ends"
    keep = {}
    kept = model.forward(x, keep=keep)  # training keeps conv outputs and pool indices: never fused
    assert len(calls) == 10 and "conv5_3" in keep and "pool5_idx" in keep
    assert_same_bits(fused, kept, "FCN-8s scores of the training forward")
    monkeypatch.setattr(M, "FUSE_POOL", False)
    unfused_scores = to_numpy(model(x))
    assert len(calls) == 10
    assert_same_bits(fused, unfused_scores, "FCN-8s scores")
    assert np.array_equal(fused_labels, to_numpy(model.labels(x)))
    with torch.no_grad():
        ref = net(torch.from_numpy(to_numpy(x).astype(np.float64))).numpy()
    assert_close(fused, ref, FP32, what="fused FCN-8s against torch")


def test_model_fuses_only_where_conv2d_would_not_split():
    """A layer conv2d would run with split-K (conv5_3 at 500 x 500: 248 tiles,
    depth 4608) stays unfused, since the split sums in another order; conv3_3
    at the same size fuses."""
    fcn_cuda.use_backend("host")
    assert conv2d_auto_splits(44 * 44, 512, 512 * 9) > 1
    assert conv2d_relu_maxpool_variant((1, 512, 44, 44), (512, 512, 3, 3), 1) is None
    assert conv2d_relu_maxpool_variant((1, 256, 175, 175), (256, 256, 3, 3), 1) == "igemm"
