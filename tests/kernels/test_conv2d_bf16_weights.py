"""conv2d's bf16-weights mode (ops.to_bf16_weights, ops.Bf16Weights): the
filters rounded to bf16 once, ahead of time, and read as bf16 by igemm_bf16
and mma_bf16.

fp32 -> bf16 rounding is one function of the value, so the mode must give
each variant's result on the fp32 filters bit for bit, split-K and the pooled
epilogue included (mma_bf16 on both of its paths for w: cp.async where
C*R*S % 8 == 0 and w is 16-byte aligned, else loads through registers); and through it, torch's float64 convolution at the bf16
tolerance (1e-2). The conversion is checked against a NumPy
round-to-nearest-even reference, ties, NaN / inf and the bf16 maximum
included; the FCN opt-in (FCN.use_bf16_weights) against the fp32 model.

No output can be passed in, so every result is checked whole: bit equality
with a finite igemm_bf16 result, or errors() (NaN anywhere is +inf).
"""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fcn_cuda
from fcn_cuda import model as M
from fcn_cuda import ops
from fcn_cuda.ops.conv2d import conv2d_default_variant

from _util import FP32, HALF, assert_close, errors, to_numpy
from test_conv2d import draw, reference  # the float64 torch reference and the fixed-seed inputs
from torch_fcn import random_fcn, state_dict_f32

pytestmark = pytest.mark.kernels


def bf16_bits(a):
    """float32 -> bf16 bit patterns, round to nearest even on the float's
    bits (NaN excluded: its payload is the hardware's choice)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def as_floats(bits):
    """bf16 bit patterns -> the float32 values they stand for."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def same_bits(a, b):
    a, b = to_numpy(a), to_numpy(b)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


# ------------------------------------------------------------------ the conversion

F32 = lambda u: np.array(u, dtype=np.uint32).view(np.float32)
EDGES = np.concatenate([F32([
    0x00000000, 0x80000000,              # +-0
    0x3F800000, 0x3F808000, 0x3F818000,  # 1; 1 + half a bf16 ulp: a tie to even (down); the next tie (up)
    0x3F807FFF, 0x3F808001,              # just below and above a tie
    0xBF808000, 0xBF818000,              # negative ties
    0x00000001, 0x00008000, 0x00018000,  # subnormals, ties among them
    0x007FFFFF, 0x00800000,              # the largest subnormal (rounds into the normals), the smallest normal
    0x7F7F0000, 0x7F7F7FFF,              # bf16's maximum; below its half ulp: stays there
    0x7F7F8000, 0x7F7FFFFF,              # the tie above the maximum (odd: up to inf); FLT_MAX: inf
    0xFF7F7FFF, 0xFF7F8000,              # the same, negative: -max, -inf
    0x7F800000, 0xFF800000,              # +-inf
]), np.float32([np.pi, -np.e, 1e-30, 3e38, -65504.0])])
NANS = F32([0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FBFFFFF, 0x7F810000])  # quiet, negative, signalling


def convert(be, values):
    a = np.ascontiguousarray(values, dtype=np.float32).reshape(-1, 1, 1, 1)
    out = ops.to_bf16_weights(be.xp.asarray(a))
    assert isinstance(out, ops.Bf16Weights) and out.shape == a.shape
    assert isinstance(out.bits, be.xp.ndarray) and out.bits.dtype == np.uint16
    return to_numpy(out.bits).reshape(-1)


def test_conversion_rounds_to_nearest_even(be, rng):
    got, want = convert(be, EDGES), bf16_bits(EDGES)
    assert np.array_equal(got, want), [(hex(v), hex(g), hex(r)) for v, g, r in
                                       zip(EDGES.view(np.uint32), got, want) if g != r]
    assert [hex(v) for v in got[2:5]] == ["0x3f80", "0x3f80", "0x3f82"]  # the reference rounds ties to even
    assert [hex(v) for v in got[14:18]] == ["0x7f7f", "0x7f7f", "0x7f80", "0x7f80"]
    # Random bit patterns, every exponent (NaNs left to the next test).
    u = rng.integers(0, 2**32, size=5000, dtype=np.uint64).astype(np.uint32)
    values = u.view(np.float32)[~np.isnan(u.view(np.float32))]
    assert np.array_equal(convert(be, values), bf16_bits(values))


def test_conversion_keeps_nan(be):
    got = as_floats(convert(be, NANS))
    assert np.isnan(got).all(), [hex(v) for v in convert(be, NANS)]


def test_conversion_is_what_igemm_bf16_stages(be, rng):
    """The float64 conv of the converted filters (and rounded x) is
    igemm_bf16's math: to fp32 accuracy, not only the bf16 tolerance."""
    x, w, b = draw(be, rng, 2, 5, 6, 7, 9, 3, 3)
    wb = ops.to_bf16_weights(w)
    y = ops.conv2d(x, wb, b, padding=1)
    xr = as_floats(bf16_bits(to_numpy(x)))
    assert_close(y, reference(xr, as_floats(to_numpy(wb.bits)), b, 1, 1, False), FP32)


# ------------------------------------------------------------------ bit equality with igemm_bf16

# (N, C, H, W, K, R, S, stride, padding, splits > 1): odd sizes, partial
# pixel and channel tiles, depths that end mid-stage, an fc6-like 7x7 and an
# fc7-like 1x1 at small width.
SHAPES = [
    (2, 1, 1, 1, 3, 1, 1, 1, 0, None),          # depth 1: no split possible
    (2, 3, 7, 5, 8, 3, 3, 1, 1, 2),             # depth 27: two stages, one each
    (2, 21, 9, 7, 70, 3, 3, 2, 1, 3),           # K = 70: a partial second channel tile
    (2, 70, 5, 3, 21, 3, 3, 1, 1, 7),           # depth 630 ends mid-stage
    (1, 3, 11, 13, 5, 7, 5, (2, 1), (3, 0), 2),  # non-square kernel, stride and padding pairs
    (1, 32, 8, 9, 64, 7, 7, 1, 0, 4),           # fc6-like: 7x7 over 32 channels, 2 x 3 pixels
    (2, 256, 2, 3, 70, 1, 1, 1, 0, 4),          # fc7-like: 1x1, depth 256
]
CASES = [(shape, sp) for shape in SHAPES for sp in (1, shape[-1]) if sp is not None]
BF16_VARIANTS = ("igemm_bf16", "mma_bf16")


@pytest.mark.parametrize("variant", BF16_VARIANTS)
@pytest.mark.parametrize("shape, splits", CASES, ids=lambda a: str(a).replace(" ", ""))
def test_bit_equal_to_fp32_weights(be, rng, shape, splits, variant):
    n, c, h, w, k, r, s, stride, padding, _ = shape
    relu = splits == 1  # split-K adds bias and ReLU in its sum: both paths see both
    x, wt, b = draw(be, rng, n, c, h, w, k, r, s)
    ref = ops.conv2d(x, wt, b, stride, padding, relu, variant=variant, splits=splits)
    y = ops.conv2d(x, ops.to_bf16_weights(wt), b, stride, padding, relu,
                   variant=None if variant == "igemm_bf16" else variant, splits=splits)
    assert isinstance(y, be.xp.ndarray) and y.dtype == np.float32
    assert np.isfinite(to_numpy(ref)).all()
    assert same_bits(y, ref), f"differs from {variant} by {errors(y, ref)}"
    assert_close(y, reference(x, wt, b, stride, padding, relu), HALF, what=f"bf16 weights {shape} splits {splits}")


def test_default_splits_and_variant(be, rng):
    """Without variant or splits the mode is precision='bf16''s default
    variant (mma_bf16 on a GPU, igemm_bf16 on the host) with conv2d's own
    split rule; with relu and bias both applied after the split sum."""
    default = "mma_bf16" if be.name == "cuda" else "igemm_bf16"
    assert conv2d_default_variant(0, 0, 0, be.name, "bf16") == default
    x, wt, b = draw(be, rng, 1, 32, 8, 9, 64, 7, 7)
    wb = ops.to_bf16_weights(wt)
    for relu in (False, True):
        assert same_bits(ops.conv2d(x, wb, b, relu=relu), ops.conv2d(x, wt, b, relu=relu, variant=default))
        assert same_bits(ops.conv2d(x, wb, b, relu=relu, splits=3),
                         ops.conv2d(x, wt, b, relu=relu, variant=default, splits=3))
    assert same_bits(ops.conv2d(x, wb), ops.conv2d(x, wt, variant=default))  # no bias


@pytest.mark.parametrize("variant", BF16_VARIANTS)
@pytest.mark.parametrize("shape", [(2, 21, 9, 7, 70, 3, 3, 1, 1), (1, 3, 11, 13, 5, 3, 3, 1, 0),
                                   (2, 16, 9, 7, 70, 3, 3, 1, 1)], ids=str)
def test_relu_maxpool_bit_equal(be, rng, shape, variant):
    n, c, h, w, k, r, s, stride, padding = shape
    x, wt, b = draw(be, rng, n, c, h, w, k, r, s)
    wb = ops.to_bf16_weights(wt)
    default = conv2d_default_variant(0, 0, 0, be.name, "bf16")
    y = ops.conv2d_relu_maxpool(x, wb, b, stride, padding, None if variant == default else variant)
    assert same_bits(y, ops.conv2d_relu_maxpool(x, wt, b, stride, padding, variant=variant))
    pooled = torch.nn.functional.max_pool2d(torch.from_numpy(reference(x, wt, b, stride, padding, True)), 2, 2,
                                            ceil_mode=True)
    assert_close(y, pooled.numpy(), HALF)


def test_mma_bf16_misaligned_weights(be, rng):
    """bf16 weights one value past a 16-byte boundary (a view) cannot go by
    cp.async: mma_bf16 loads them through registers, to the same bits."""
    x, wt, b = draw(be, rng, 2, 16, 9, 7, 21, 1, 1)  # depth 16: the cp.async path when aligned
    wb = ops.to_bf16_weights(wt)
    flat = be.xp.zeros(wb.bits.size + 1, dtype=np.uint16)
    flat[1:] = wb.bits.ravel()
    shifted = ops.Bf16Weights(flat[1:].reshape(wb.bits.shape))
    assert be.ptr(shifted.bits) % 16 == 2
    ref = ops.conv2d(x, wt, b, 1, 0, True, "mma_bf16")
    assert same_bits(ops.conv2d(x, shifted, b, 1, 0, True, "mma_bf16"), ref)
    assert same_bits(ops.conv2d(x, wb, b, 1, 0, True, "mma_bf16"), ref)


def test_weights_beyond_bf16_range(be, rng):
    """Weights that round to inf in bf16 (above the maximum's half ulp) do
    so in both paths: the same inf / NaN pattern, bit for bit."""
    x, wt, b = draw(be, rng, 1, 3, 5, 6, 4, 3, 3)
    w = to_numpy(wt).copy()
    w[0, 0, 0, 0] = F32(0x7F7FFFFF)  # -> inf
    w[1, 2, 1, 1] = F32(0x7F7F7FFF)  # -> bf16's maximum, finite
    w[2, 1, 2, 0] = -np.inf
    w = be.xp.asarray(w)
    y = to_numpy(ops.conv2d(x, ops.to_bf16_weights(w), b, padding=1))
    ref = to_numpy(ops.conv2d(x, w, b, padding=1, variant="igemm_bf16"))
    assert same_bits(y, ref)
    assert not np.isfinite(y[:, 0]).all() and not np.isfinite(y[:, 2]).all() and np.isfinite(y[:, 3]).all()


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 2), c=st.integers(1, 12), h=st.integers(1, 8), w=st.integers(1, 8),
       k=st.integers(1, 70), r=st.integers(1, 4), s=st.integers(1, 4), stride=st.integers(1, 2),
       padding=st.integers(0, 2), relu=st.booleans(), bias=st.booleans(),
       variant=st.sampled_from([None, "igemm_bf16", "mma_bf16", "igemm", "direct"]),
       splits=st.one_of(st.none(), st.integers(-1, 6)), seed=st.integers(0, 2**16))
def test_fuzz(be, n, c, h, w, k, r, s, stride, padding, relu, bias, variant, splits, seed):
    """Each random call either equals its variant (igemm_bf16 for None) on
    the fp32 filters or raises ValueError. Against torch: the float64 conv of the bf16-rounded x
    and w to fp32 accuracy (igemm_bf16's products are exact, its sums fp32),
    the check that holds at any size; the 1e-2 bound on the exact conv is for
    outputs of some depth (test_bit_equal_to_igemm_bf16), since a handful of
    bf16 products can cancel to far less than their rounding errors."""
    stages = -(-(c * r * s) // 16)
    valid = (h + 2 * padding >= r and w + 2 * padding >= s and variant in (None, *BF16_VARIANTS)
             and (splits is None or 1 <= splits <= stages))
    x, wt, b = draw(be, np.random.default_rng(seed), n, c, h, w, k, r, s, bias)
    wb = ops.to_bf16_weights(wt)
    if not valid:
        with pytest.raises(ValueError):
            ops.conv2d(x, wb, b, stride, padding, relu, variant, splits)
        return
    y = ops.conv2d(x, wb, b, stride, padding, relu, variant, splits)
    assert same_bits(y, ops.conv2d(x, wt, b, stride, padding, relu, variant or "igemm_bf16", splits))
    xr, wr = as_floats(bf16_bits(to_numpy(x))), as_floats(to_numpy(wb.bits))
    assert_close(y, reference(xr, wr, b, stride, padding, relu), FP32)


# ------------------------------------------------------------------ bad input

class FakeDeviceArray:
    """What V.array takes for an array in GPU memory."""

    __cuda_array_interface__ = {"shape": (2, 3, 1, 1), "typestr": "<u2", "data": (0, False), "version": 3}


def test_bad_input(be, rng):
    x, wt, b = draw(be, rng, 2, 3, 7, 5, 4, 3, 3)
    wb = ops.to_bf16_weights(wt)
    # the conversion
    with pytest.raises(TypeError, match="w must be float32"):
        ops.to_bf16_weights(wt.astype(np.float64))
    with pytest.raises(ValueError, match="w must be 4-D"):
        ops.to_bf16_weights(wt[0])
    with pytest.raises(ValueError, match="w must be C-contiguous"):
        ops.to_bf16_weights(wt.transpose(1, 0, 2, 3))
    # the container
    with pytest.raises(TypeError, match="bits must be uint16"):
        ops.Bf16Weights(wt)
    with pytest.raises(ValueError, match="bits must be 4-D"):
        ops.Bf16Weights(wb.bits[0])
    with pytest.raises(ValueError, match="bits is empty"):
        ops.Bf16Weights(wb.bits[:0])
    if be.name == "host":
        with pytest.raises(TypeError, match="bits: got an array in GPU memory"):
            ops.Bf16Weights(FakeDeviceArray())
    # conv2d with bf16 weights: igemm_bf16 and mma_bf16 only
    for variant in ("igemm", "igemm_tf32", "mma_tf32", "direct", "small_c"):
        with pytest.raises(ValueError, match=r"only variants \['igemm_bf16', 'mma_bf16'\] of conv2d read"):
            ops.conv2d(x, wb, b, variant=variant)
    with pytest.raises(ValueError, match="variant must be one of"):
        ops.conv2d(x, wb, b, variant="bf16")
    for variant in ("igemm", "mma_tf32"):
        with pytest.raises(ValueError, match=r"only variants \['igemm_bf16', 'mma_bf16'\] of conv2d_relu_maxpool"):
            ops.conv2d_relu_maxpool(x, wb, b, variant=variant)
    # shapes, as for fp32 filters
    with pytest.raises(ValueError, match="w has 3 input channels"):
        ops.conv2d(x[:, :2].copy(), wb, b)
    with pytest.raises(ValueError, match="b must hold one value per output channel of w"):
        ops.conv2d(x, wb, b[:3].copy())
    with pytest.raises(ValueError, match="splits must be at most 2"):
        ops.conv2d(x, wb, b, splits=3)
    with pytest.raises(ValueError, match="output size"):
        ops.conv2d(x[:, :, :2].copy(), wb, b)
    # the raw bit patterns are not filters, and only conv2d reads a Bf16Weights
    with pytest.raises(TypeError, match="w must be float32, got uint16"):
        ops.conv2d(x, wb.bits, b)
    with pytest.raises(TypeError, match="w must be float32, got object"):
        ops.conv_transpose2d(x, wb)


def test_bf16_weights_of_another_backend(be, rng):
    """A Bf16Weights made on one backend is refused by the other."""
    w = rng.standard_normal((2, 3, 1, 1), dtype=np.float32)
    if fcn_cuda._backend.cuda_unavailable_reason() is None:
        fcn_cuda.use_backend({"host": "cuda", "cuda": "host"}[be.name])
        try:  # made from w on the backend it is made on
            wb = ops.to_bf16_weights(fcn_cuda._backend.active().xp.asarray(w))
        finally:
            fcn_cuda.use_backend(be.name)
    else:  # no GPU: bits swapped for a stand-in for GPU memory after the checks
        wb = ops.to_bf16_weights(w)
        wb.bits = FakeDeviceArray()
    x = be.xp.asarray(rng.standard_normal((1, 3, 2, 2), dtype=np.float32))
    with pytest.raises(TypeError, match="w.bits: got an array in (GPU|host) memory"):
        ops.conv2d(x, wb)


# ------------------------------------------------------------------ the model opt-in

def decisive(scores):
    """Pixels whose top two classes differ by more than 5% of the score range."""
    top2 = np.sort(scores, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) > 0.05 * (scores.max() - scores.min())


@pytest.mark.model_scale
def test_model_opt_in(be):
    """A small random FCN-8s: with fc6 and fc7 on bf16 weights, scores stay
    within the bf16 tolerance of the fp32 model's (and of torch's float64
    model), labels agree wherever the top two classes are not near a tie,
    and labels() agrees with argmax(forward()) exactly. Training passes run
    fp32 and the mode switches off again exactly."""
    net = random_fcn("8s", seed=5)
    x = np.random.default_rng(2).uniform(-120, 130, size=(2, 3, 21, 27))
    with torch.no_grad():
        exact = net(torch.from_numpy(x)).numpy()
    model = fcn_cuda.load_model(state_dict_f32(net))
    xb = be.xp.asarray(x.astype(np.float32))
    fp32 = to_numpy(model(xb))

    assert model.use_bf16_weights(("fc6", "fc7")) is model and model.bf16_layers == ("fc6", "fc7")
    assert "bf16_layers" in repr(model)
    bf16 = to_numpy(model(xb))
    rel, _ = errors(bf16, fp32)
    assert 0 < rel <= HALF, f"bf16 weights moved the scores by {rel:.2e}"
    assert_close(bf16, exact, HALF, what="scores with bf16 fc6 / fc7")
    mask = decisive(fp32)
    assert mask.mean() > 0.5 and (bf16.argmax(1)[mask] == fp32.argmax(1)[mask]).all()
    assert np.array_equal(to_numpy(model.labels(xb)), bf16.argmax(1))

    # A pass for training (keep) is fp32 and drops the copies; inference makes them again.
    assert same_bits(model.forward(xb, keep={}), fp32)
    assert same_bits(model(xb), bf16)
    # fc6 alone lies between; () switches off exactly.
    only_fc6 = to_numpy(model.use_bf16_weights("fc6")(xb))
    assert not same_bits(only_fc6, bf16) and not same_bits(only_fc6, fp32)
    assert same_bits(model.use_bf16_weights(())(xb), fp32)


@pytest.mark.model_scale
def test_model_follows_new_weights(be):
    """load_state_dict replaces the bf16 copies too."""
    a, b = (state_dict_f32(random_fcn("32s", seed=s)) for s in (1, 2))
    x = be.xp.asarray(np.random.default_rng(3).uniform(-120, 130, size=(1, 3, 9, 11)).astype(np.float32))
    ref = fcn_cuda.load_model(b).use_bf16_weights(("fc6", "fc7"))(x)
    model = fcn_cuda.load_model(a).use_bf16_weights(("fc6", "fc7"))
    model(x)
    model.load_state_dict(b)
    assert same_bits(model(x), ref)


def test_model_opt_in_bad_layers():
    model = fcn_cuda.FCN("32s", 3, widths=((2, 2), (2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)), fc=4)
    with pytest.raises(ValueError, match="layers must be one of"):
        model.use_bf16_weights(("fc6", "conv1_1"))
    with pytest.raises(TypeError, match="layers must be a layer name or names"):
        model.use_bf16_weights(6)
    assert model.bf16_layers == () and M.BF16_WEIGHT_LAYERS == ("fc6", "fc7")
