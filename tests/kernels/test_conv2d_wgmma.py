"""The Hopper rung's conv2d variants (wgmma_tf32, wgmma_bf16: sm_90a's
wgmma fed by TMA, csrc/kernels/conv2d_wgmma.cuh) against
torch.nn.functional.conv2d in float64, at the contract's tolerances (TF32
2e-3, bf16 1e-2), and against the float64 convolution of the operands rounded
as the variant rounds them (to fp32 accuracy: the products are exact).

They compute stride 1 with x's width a multiple of 4 (TMA's 16-byte row
strides) and refuse the rest clearly; those refusals, the policy that picks
them (conv2d_wgmma_wins) and the sm_90 requirement are tested here
too. Shapes stay small: the emulator runs every wgmma of a 160-thread block.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fcn_cuda
from fcn_cuda import _backend, ops
from fcn_cuda.ops.conv2d import conv2d_default_variant, conv2d_wgmma_wins, wgmma_refusal

from _util import FP32, HALF, TF32, assert_close, errors, to_numpy
from test_conv2d import draw, reference
from test_conv2d_pool import assert_same_bits, unfused
from test_conv2d_pool import reference as pool_reference
from test_conv2d_tensorcore import bf16_round, tf32_round

pytestmark = pytest.mark.kernels

TOL = {"wgmma_tf32": TF32, "wgmma_bf16": HALF}
VARIANTS = tuple(TOL)
ROUNDING = {"wgmma_tf32": tf32_round, "wgmma_bf16": bf16_round}


def runs_here(be):
    """Whether the wgmma variants run on this backend: the emulator runs them
    anywhere, a GPU only at compute capability 9.0 (test_other_gpus_refuse)."""
    return be.compute_capability() in (None, 90) and be.wgmma_code_loaded()


@pytest.fixture(autouse=True)
def _sm90_only(request):
    """Tests of results run where the variants run; on another GPU each would
    only meet the refusal that test_other_gpus_refuse checks."""
    if "be" in request.fixturenames and request.node.originalname != "test_other_gpus_refuse":
        if not runs_here(request.getfixturevalue("be")):
            pytest.skip("the wgmma variants need an sm_90 GPU (test_other_gpus_refuse checks the refusal)")


def rounded_reference(variant, x, w, b, padding, relu):
    """The float64 convolution of x and w rounded as the variant rounds them (the bias is added in fp32)."""
    rounded = ROUNDING[variant]
    return reference(rounded(to_numpy(x)), rounded(to_numpy(w)), b, 1, padding, relu)


def check(be, rng, variant, n, c, h, w, k, r, s, padding, relu=True, bias=True, splits=None):
    x, wt, b = draw(be, rng, n, c, h, w, k, r, s, bias)
    y = ops.conv2d(x, wt, b, 1, padding, relu, variant, splits=splits)
    assert isinstance(y, be.xp.ndarray) and y.dtype == np.float32
    what = f"{variant} splits={splits} conv2d x{(n, c, h, w)} w{(k, c, r, s)} pad {padding}"
    assert_close(y, reference(x, wt, b, 1, padding, relu), TOL[variant], what=what)
    assert_close(y, rounded_reference(variant, x, wt, b, padding, relu), FP32, what=what + " (rounded operands)")
    return y


def test_variants_registered():
    assert set(VARIANTS) == set(ops.WGMMA_VARIANTS)
    assert set(VARIANTS) <= set(ops.CONV2D_VARIANTS) & set(ops.CONV2D_SPLIT_VARIANTS)
    assert set(VARIANTS) <= set(ops.CONV2D_RELU_MAXPOOL_VARIANTS)
    assert {ops.CONV2D_PRECISION[v] for v in VARIANTS} == {"tf32", "bf16"}
    # stride 1 only: listed for stride 1, not among the variants that take every stride
    assert set(VARIANTS) <= set(ops.conv2d_variants((8, 3, 3, 3), stride=1))
    assert not set(VARIANTS) & set(ops.conv2d_variants((8, 3, 3, 3)))
    assert not set(VARIANTS) & set(ops.conv2d_variants((8, 3, 3, 3), stride=(1, 2)))


# (N, C, H, W, K, R, S, padding), W a multiple of 4: tiles of 16 x 8 pixels and
# 128 channels, stages of one tap x 32 input channels, all at their edges.
SHAPES = [
    (2, 1, 1, 4, 3, 1, 1, 0),         # 1 x 4 image, depth 1: one stage, nearly all zero fill
    (2, 3, 8, 4, 8, 3, 3, 1),         # C = 3 and K = 8: a 32-channel chunk and a 128-channel tile mostly zero
    (2, 21, 9, 12, 70, 3, 3, 1),      # P = 9, Q = 12: partial pixel tiles in both directions
    (1, 40, 17, 8, 130, 3, 3, 1),     # C = 40: a second, partial chunk; K = 130: a second channel tile
    (2, 16, 5, 4, 16, 1, 1, 0),       # 1x1
    (1, 8, 12, 12, 21, 7, 7, 0),      # 7x7, pad 0: 6 x 6 out of 12 x 12
    (3, 5, 6, 8, 9, 3, 3, 2),         # N = 3, padding wider than the kernel's reach
    (1, 4, 5, 4, 6, 7, 5, (3, 1)),    # non-square kernel and padding pair
    (1, 2, 3, 4, 5, 5, 3, (1, 0)),    # kernel taller than the image: its padding makes a 1 x 2 output
    (2, 33, 18, 16, 128, 3, 3, 1),    # K = 128 exactly, two pixel tiles per image
    (1, 3, 4, 8, 16, 3, 3, (100, 1)),  # conv1_1's padding of 100 (vertically): 202 x 8 out of 4 x 8
    (1, 3, 3, 4, 8, 3, 3, (0, 100)),   # ... and horizontally: 1 x 202
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:7])) + f"_p{s[7]}")
@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes(be, rng, variant, shape):
    i = SHAPES.index(shape)
    check(be, rng, variant, *shape, relu=i % 2 == 0, bias=i % 3 != 0)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("variant", VARIANTS)
def test_relu_and_bias(be, rng, variant, relu, bias):
    check(be, rng, variant, 2, 3, 13, 12, 21, 3, 3, 1, relu, bias)


@pytest.mark.parametrize("variant", VARIANTS)
def test_rounds_like_its_precision(be, rng, variant):
    """Random operands have products TF32 / bf16 cannot hold: the variant is
    measurably off the exact result (so a kernel that silently computes in
    fp32 fails) while matching the rounded operands' convolution to fp32
    accuracy (check), and gives the bits of the same precision's igemm up to
    summation order."""
    shape, padding = (2, 21, 9, 8, 70, 3, 3), 1
    x, wt, b = draw(be, rng, *shape)
    y = check(be, np.random.default_rng(1234), variant, *shape, padding)
    exact = reference(x, wt, b, 1, padding, True)
    rel, _ = errors(y, exact)
    assert 10 * FP32 < rel <= TOL[variant], f"{variant}: relative error {rel:.2e} to the exact result"
    same_precision = "igemm_" + ops.CONV2D_PRECISION[variant]
    assert_close(y, ops.conv2d(x, wt, b, 1, padding, True, same_precision), FP32)


@pytest.mark.parametrize("variant", VARIANTS)
def test_quarter_ulp_is_dropped(be, variant):
    """x = 1 + 2^-12 reads as 1 in tf32 and bf16: 27 taps of x * 1 give exactly 27."""
    x = be.xp.full((2, 3, 5, 8), 1 + 2.0**-12, dtype=np.float32)
    w = be.xp.ones((4, 3, 3, 3), dtype=np.float32)
    y = to_numpy(ops.conv2d(x, w, variant=variant))
    assert np.all(y == 27.0), f"{variant} gave {np.unique(y)}"


@pytest.mark.parametrize("splits", (1, 2, 3, 7))
@pytest.mark.parametrize("variant", VARIANTS)
def test_split_k(be, rng, variant, splits):
    """C = 40 in 3x3: 18 stages (2 chunks x 9 taps), which 7 does not divide."""
    check(be, rng, variant, 2, 40, 7, 8, 70, 3, 3, 1, splits=splits)


@pytest.mark.parametrize("variant", VARIANTS)
def test_split_k_bounds(be, rng, variant):
    x, wt, b = draw(be, rng, 1, 3, 4, 4, 5, 1, 1)  # 1 stage
    assert_close(ops.conv2d(x, wt, b, variant=variant, splits=1), reference(x, wt, b, 1, 0, False), TOL[variant])
    with pytest.raises(ValueError, match="splits must be at most 1 for " + variant):
        ops.conv2d(x, wt, b, variant=variant, splits=2)


POOL_SHAPES = [
    (2, 3, 8, 4, 8, 3, 3, 1),      # 8 x 4 output: one tile, whole windows
    (2, 21, 9, 12, 70, 3, 3, 1),   # odd P: the last windows hold a single row
    (1, 5, 19, 8, 130, 3, 3, 1),   # two pixel tiles, 16 rows apart: windows split across blocks
    (1, 6, 7, 4, 5, 3, 3, 0),      # 5 x 2 output
]


@pytest.mark.parametrize("shape", POOL_SHAPES, ids=lambda s: "x".join(map(str, s[:7])) + f"_p{s[7]}")
@pytest.mark.parametrize("variant", VARIANTS)
def test_relu_maxpool(be, rng, variant, shape):
    """The fused ReLU + 2 x 2 max pool equals the unfused ops bit for bit."""
    n, c, h, w, k, r, s, padding = shape
    x, wt, b = draw(be, rng, n, c, h, w, k, r, s, True)
    y = ops.conv2d_relu_maxpool(x, wt, b, 1, padding, variant)
    what = f"{variant} conv2d_relu_maxpool x{(n, c, h, w)} w{(k, c, r, s)} pad {padding}"
    assert np.isfinite(to_numpy(y)).all(), what
    assert_close(y, pool_reference(x, wt, b, 1, padding), TOL[variant], what=what)
    assert_same_bits(y, unfused(x, wt, b, 1, padding, variant), what)


@pytest.mark.parametrize("variant", VARIANTS)
def test_deterministic(be, rng, variant):
    x, wt, b = draw(be, rng, 2, 40, 9, 8, 70, 3, 3, True)
    runs = [to_numpy(ops.conv2d(x, wt, b, 1, 1, True, variant, splits=s)).copy() for s in (1, 1, 3, 3)]
    assert np.array_equal(runs[0].view(np.int32), runs[1].view(np.int32))
    assert np.array_equal(runs[2].view(np.int32), runs[3].view(np.int32))


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_fragment_loads_are_conflict_free(variant):
    """The A fragments' layout (32 channels x 8 columns per pixel row: a
    quad's channels 8 floats apart) puts a warp's 32 loads in 32 banks. A
    64 -> 64 3x3 layer on 16 x 16: 2 blocks (16 x 8 pixels each) x 18 stages
    (9 taps x 2 chunks of 32 channels) x 4 consumer warps x 2 m64 halves x
    16 loads (tf32: 4 k8 steps x 4 registers; bf16: 2 k16 steps x 4
    registers x 2 channels) = 4608 warp loads, one wavefront each."""
    fcn_cuda.use_backend("host")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 64, 16, 16), dtype=np.float32)
    w = rng.standard_normal((64, 64, 3, 3), dtype=np.float32)
    fcn_cuda.reset_emulator_counters()
    fcn_cuda.count_bank_conflicts(True)
    try:
        ops.conv2d(x, w, None, 1, 1, True, variant)
        counted = fcn_cuda.emulator_counters()["conv2d_" + variant]["shared"]
    finally:
        fcn_cuda.count_bank_conflicts(False)
        fcn_cuda.reset_emulator_counters()
    assert (counted["accesses"], counted["wavefronts"], counted["ideal"], counted["max_way"]) == (4608, 4608, 4608, 1)


# FCN's layer configurations (docs/fcn-reference.md) at small spatial size,
# channel counts narrowed where the real ones would take minutes to emulate.
FCN_LAYERS = {
    "conv1_2_3x3": (1, 64, 8, 8, 64, 3, 3, 1),          # 64 -> 64, 3x3, pad 1
    "conv3_1_3x3": (1, 128, 6, 8, 256, 3, 3, 1),        # 128 -> 256: two channel tiles
    "fc6_7x7": (1, 64, 8, 8, 128, 7, 7, 0),             # 7x7, pad 0 (512 -> 4096 in VGG16)
    "fc7_1x1": (1, 512, 2, 4, 128, 1, 1, 0),            # 1x1, 16 chunks (4096 -> 4096 in VGG16)
    "score_fr_1x1": (1, 256, 3, 4, 21, 1, 1, 0),        # 1x1 to 21 classes, no ReLU
}


@pytest.mark.model_scale
@pytest.mark.parametrize("layer", FCN_LAYERS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_fcn_layers(be, rng, variant, layer):
    check(be, rng, variant, *FCN_LAYERS[layer], relu=not layer.startswith("score"), bias=True)


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), n=st.integers(1, 2), c=st.sampled_from([1, 3, 16, 33]), h=st.integers(1, 9),
       w4=st.integers(1, 3), k=st.sampled_from([1, 21, 64, 130]),
       padding=st.tuples(st.integers(0, 3), st.integers(0, 3)), relu=st.booleans(), bias=st.booleans(),
       variant=st.sampled_from(VARIANTS), seed=st.integers(0, 2**16))
def test_fuzz(be, data, n, c, h, w4, k, padding, relu, bias, variant, seed):
    """Random valid stride-1 shapes (width a multiple of 4, kernels up to 7x7
    that fit the padded image) match the rounded operands' float64
    convolution to fp32 accuracy."""
    w = 4 * w4
    r = data.draw(st.integers(1, min(7, h + 2 * padding[0])), label="r")
    s = data.draw(st.integers(1, min(7, w + 2 * padding[1])), label="s")
    x, wt, b = draw(be, np.random.default_rng(seed), n, c, h, w, k, r, s, bias)
    y = ops.conv2d(x, wt, b, 1, padding, relu, variant)
    assert_close(y, rounded_reference(variant, x, wt, b, padding, relu), FP32)


@pytest.mark.parametrize("variant", VARIANTS)
def test_refusals(be, rng, variant):
    """What the variants cannot compute is a ValueError saying why, never a wrong result."""
    x, w, b = draw(be, rng, 1, 3, 8, 8, 4, 3, 3)
    with pytest.raises(ValueError, match="stride 1 only"):
        ops.conv2d(x, w, b, stride=2, variant=variant)
    with pytest.raises(ValueError, match="stride 1 only"):
        ops.conv2d_relu_maxpool(x, w, b, stride=(1, 2), variant=variant)
    odd, _, _ = draw(be, rng, 1, 3, 8, 7, 4, 3, 3)
    with pytest.raises(ValueError, match="width a multiple of 4, got 7"):
        ops.conv2d(odd, w, b, variant=variant)
    flat = be.xp.zeros(x.size + 4, dtype=np.float32)
    shifted = flat[1:1 + x.size].reshape(x.shape)  # C-contiguous, 4 bytes past a 16-byte boundary
    shifted[...] = x
    with pytest.raises(ValueError, match="16-byte aligned"):
        ops.conv2d(shifted, w, b, variant=variant)
    with pytest.raises(ValueError, match="computes in"):
        ops.conv2d(x, w, b, variant=variant, precision="fp32")
    with pytest.raises(ValueError, match="only variants .'igemm_bf16', 'mma_bf16'. of conv2d read"):
        ops.conv2d(x, ops.to_bf16_weights(w), b, variant=variant)


def test_other_gpus_refuse(be, rng):
    """On a GPU other than sm_90 every wgmma call is a ValueError naming the
    compute capability; where they run, the same call gives a result."""
    x, w, b = draw(be, rng, 1, 3, 8, 8, 4, 3, 3)
    for variant in VARIANTS:
        if runs_here(be):
            assert wgmma_refusal(x.shape, 1, be) is None
            assert_close(ops.conv2d(x, w, b, 1, 1, variant=variant), reference(x, w, b, 1, 1, False), TOL[variant])
        else:
            with pytest.raises(ValueError, match="need an sm_90 GPU"):
                ops.conv2d(x, w, b, 1, 1, variant=variant)


class _FakeDevice:
    """A cuda backend's policy inputs without a GPU: its name, compute
    capability and whether the code loaded for it is sm_90a's."""

    def __init__(self, cc, sm90a_code=True):
        self.name, self.cc, self.sm90a_code = "cuda", cc, sm90a_code

    def compute_capability(self):
        return self.cc

    def wgmma_code_loaded(self):
        return self.sm90a_code


def test_needs_sm90():
    """On a GPU other than sm_90 the variants refuse (the emulator runs them anywhere)."""
    assert wgmma_refusal((1, 3, 8, 8), 1, _FakeDevice(90)) is None
    assert "compute capability 8.0" in wgmma_refusal((1, 3, 8, 8), 1, _FakeDevice(80))
    assert "sm_90" in wgmma_refusal((1, 3, 8, 8), 1, _FakeDevice(100))
    # An sm_90 GPU running a build's plain sm_90 code (FCN_CUDA_ARCH=90): the kernels there are traps.
    assert "FCN_CUDA_ARCH naming 90a" in wgmma_refusal((1, 3, 8, 8), 1, _FakeDevice(90, sm90a_code=False))
    assert _backend.by_name("host").wgmma_code_loaded()
    assert wgmma_refusal((1, 3, 8, 8), 1, _backend.by_name("host")) is None
    assert _backend.by_name("host").compute_capability() is None


def test_precision_policy(be, rng):
    """precision='tf32' / 'bf16' picks wgmma over the Ampere rung's mma on sm_90
    where it applies and fills the GPU (at least 132 tiles of 128 x 128);
    never on another GPU or on the host."""
    big = ((1, 64, 256, 256), (64, 64, 3, 3), 1, 1)        # 16 x 32 = 512 tiles
    assert conv2d_wgmma_wins(*big, _FakeDevice(90))
    assert not conv2d_wgmma_wins(*big, _FakeDevice(80))
    assert not conv2d_wgmma_wins(*big, _FakeDevice(90, sm90a_code=False))
    assert not conv2d_wgmma_wins(*big, _backend.by_name("host"))
    odd = ((1, 64, 256, 255), (64, 64, 3, 3), 1, 1)        # width 255: TMA cannot read its rows
    small = ((1, 512, 16, 16), (4096, 512, 7, 7), 1, 0)    # fc6's input at 500 x 500 (width 22, made 16): 64 tiles
    strided = ((1, 64, 256, 256), (64, 64, 3, 3), 2, 1)
    for args in (odd, small, strided):
        assert not conv2d_wgmma_wins(*args, _FakeDevice(90))
    # On this backend the default of each precision is what conv2d runs: the
    # host's igemm_*, never wgmma (its emulation is there to be checked, not timed).
    x, w, b = draw(be, rng, 2, 3, 9, 8, 5, 3, 3)
    for precision in ("tf32", "bf16"):
        expected = conv2d_default_variant(2 * 9 * 8, 5, 27, be.name, precision)
        if be.name == "cuda" and conv2d_wgmma_wins(x.shape, w.shape, 1, 1, be):
            expected = "w" + expected
        y = ops.conv2d(x, w, b, padding=1, precision=precision)
        assert_same_bits(y, ops.conv2d(x, w, b, padding=1, variant=expected), f"precision={precision}")
        pooled = ops.conv2d_relu_maxpool(x, w, b, padding=1, precision=precision)
        assert_same_bits(pooled, ops.conv2d_relu_maxpool(x, w, b, padding=1, variant=expected), precision)
