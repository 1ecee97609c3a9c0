"""Split-K conv2d (ops.conv2d(..., splits=)) against torch.nn.functional.conv2d
in float64, at each igemm variant's tolerance (fp32 1e-5, TF32 2e-3, bf16
1e-2).

The depth C*R*S is cut into `splits` ranges of whole 16-tap stages, each
written to a workspace by its own blocks and summed in a fixed order: the
result must match torch for split counts that do and do not divide the stage
count, depths that end mid-stage and an fc6-like 7x7 layer; it must have the
same bits run to run and for any emulator worker count; the automatic choice
must split fc6-like shapes and leave conv3-like ones whole. The output
cannot be passed in, so each result is checked whole and finite (errors()
turns any NaN into +inf).
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fcn_cuda import ops
from fcn_cuda.ops.conv2d import conv2d_auto_splits

from _util import FP32, HALF, TF32, assert_close, assert_same_bits_for_any_worker_count, to_numpy
from test_conv2d import draw, reference  # the float64 torch reference and the fixed-seed inputs
from test_conv2d_tensorcore import rounded_reference

pytestmark = pytest.mark.kernels

TOL = {"igemm": FP32, "igemm_tf32": TF32, "igemm_bf16": HALF, "mma_tf32": TF32, "mma_bf16": HALF}
# the variants that take every stride; the stride-1 wgmma ones split in test_conv2d_wgmma.py
VARIANTS = tuple(v for v in ops.CONV2D_SPLIT_VARIANTS if v not in ops.WGMMA_VARIANTS)
SPLITS = (1, 2, 3, 7)


def stages(c, r, s):
    return -(-(c * r * s) // 16)


def check(be, rng, variant, splits, n, c, h, w, k, r, s, stride, padding, relu=True, bias=True):
    x, wt, b = draw(be, rng, n, c, h, w, k, r, s, bias)
    y = ops.conv2d(x, wt, b, stride=stride, padding=padding, relu=relu, variant=variant, splits=splits)
    assert isinstance(y, be.xp.ndarray) and y.dtype == np.float32
    assert_close(y, reference(x, wt, b, stride, padding, relu), TOL[variant or "igemm"],
                 what=f"{variant} splits={splits} conv2d x{(n, c, h, w)} w{(k, c, r, s)} stride {stride} pad {padding}")
    return y


def test_split_variants_registered():
    assert set(VARIANTS) == set(TOL) and set(VARIANTS) <= set(ops.CONV2D_VARIANTS)


# (N, C, H, W, K, R, S, stride, padding), every one with >= 7 stages so each
# split count of SPLITS applies.
SHAPES = {
    # fc6 at tiny width: 7x7, 64 -> 96 on a 9x9 map, depth 3136 = 196 stages
    # (3 does not divide it), 2 channel tiles, the second partial.
    "fc6_like": (2, 64, 9, 9, 96, 7, 7, 1, 0),
    # depth 189 ends mid-stage (12 stages: 7 does not divide), K = 70, stride and padding pairs.
    "depth189": (2, 21, 7, 5, 70, 3, 3, (2, 1), (1, 0)),
    # depth 117 (8 stages: neither 3 nor 7 divides), 220 pixels: 4 pixel tiles, the last partial.
    "depth117": (2, 13, 11, 10, 21, 3, 3, 1, 1),
    # 1x1 image, 1x1 kernel: depth 130 = 9 stages, one pixel per image.
    "1x1": (2, 130, 1, 1, 3, 1, 1, 1, 0),
}


@pytest.mark.parametrize("splits", SPLITS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes(be, rng, variant, shape, splits):
    assert splits <= stages(*shape[1:2], *shape[5:7])
    check(be, rng, variant, splits, *shape)


@pytest.mark.parametrize("relu,bias", [(False, True), (True, False), (False, False)])
@pytest.mark.parametrize("variant", VARIANTS)
def test_relu_and_bias(be, rng, variant, relu, bias):
    check(be, rng, variant, 3, *SHAPES["depth189"], relu=relu, bias=bias)


def test_fc6_layer_config(be, rng):
    """FCN's fc6 (7x7, pad 0, ReLU) at reduced width on a pool5-like odd map,
    split as the automatic rule would split the real layer (4)."""
    assert conv2d_auto_splits(16 * 16, 4096, 512 * 49) == 4
    check(be, rng, "igemm", 4, 1, 40, 11, 9, 24, 7, 7, 1, 0)


def same_bits(a, b):
    a, b = to_numpy(a), to_numpy(b)
    return a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("variant", ["igemm", "igemm_tf32"])
def test_deterministic(be, rng, variant):
    """Same bits run to run, and for 1, 2, 3 and 7 emulator workers."""
    x, wt, b = draw(be, rng, *SHAPES["depth117"][:7])
    assert_same_bits_for_any_worker_count(
        be, lambda: ops.conv2d(x, wt, b, padding=1, relu=True, variant=variant, splits=3))


def split_sum_in_order(x, wt, b, splits, relu, order):
    """The float32 sum of the splits' partial outputs in `order` (a permutation of the splits), then
    the bias and the ReLU, as conv2d_split_sum is specified to add them. Each partial is worked out
    exactly (float64 of integers times a power of two per split, all exact in float32), so only the
    order of the float32 additions decides the bits."""
    k, c, r, s = wt.shape
    st = stages(c, r, s)
    taps = np.arange(c * r * s).reshape(c, r, s)
    acc = np.zeros(reference(x, wt, None, 1, 1, False).shape, np.float32)
    for z in order:
        inside = (taps >= z * st // splits * 16) & (taps < (z + 1) * st // splits * 16)
        acc = acc + reference(x, wt * inside, None, 1, 1, False).astype(np.float32)
    acc = acc + b[None, :, None, None]
    return np.maximum(acc, np.float32(0)) if relu else acc


@pytest.mark.parametrize("splits", [3, 4, 7])
@pytest.mark.parametrize("variant", VARIANTS)
def test_splits_are_added_in_order(be, rng, variant, splits):
    """The same bits on a GPU and in the emulator, and for any block order, rest on one fixed order of
    the splits' sum: split 0 first, as a float32 reference adds them. Small integers, and one power of
    two per split on the weights of its taps (stages [z S / splits, (z + 1) S / splits) of the depth),
    make every partial exact in each precision, TF32 and bf16 included, while the sum of partials of
    such different sizes rounds: another order gives other bits."""
    n, c, h, w, k, r, s = 2, 13, 6, 7, 10, 3, 3  # depth 117: 8 stages, the last one partial
    x = rng.integers(-4, 5, (n, c, h, w)).astype(np.float32)
    wt = rng.integers(-4, 5, (k, c, r, s)).astype(np.float32)
    st = stages(c, r, s)
    split_of_tap = np.searchsorted([(z + 1) * st // splits * 16 for z in range(splits)],
                                   np.arange(c * r * s), side="right").reshape(c, r, s)
    wt *= np.exp2(np.array([24, 2, 1, 3, 0, 2, 1])[split_of_tap]).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)
    ref = split_sum_in_order(x, wt, b, splits, False, range(splits))
    assert (ref != split_sum_in_order(x, wt, b, splits, False, reversed(range(splits)))).mean() > 0.1
    for relu in (False, True):
        y = ops.conv2d(be.xp.asarray(x), be.xp.asarray(wt), be.xp.asarray(b), padding=1, relu=relu,
                       variant=variant, splits=splits)
        np.testing.assert_array_equal(to_numpy(y), split_sum_in_order(x, wt, b, splits, relu, range(splits)))


def test_one_split_is_the_unsplit_path(be, rng):
    """splits=1 launches today's kernel: the same bits as no `splits` on a shape the rule leaves whole."""
    x, wt, b = draw(be, rng, *SHAPES["depth117"][:7])
    assert conv2d_auto_splits(2 * 11 * 10, 21, 13 * 9) == 1
    assert same_bits(ops.conv2d(x, wt, b, padding=1, variant="igemm", splits=1),
                     ops.conv2d(x, wt, b, padding=1, variant="igemm"))


def test_auto_rule():
    """> 1 split only for few output tiles over a deep filter (FCN at a 500 x 500 input, batch 1)."""
    auto = conv2d_auto_splits
    assert auto(16 * 16, 4096, 512 * 49) == 4   # fc6: 4 x 64 tiles, 1568 stages
    assert auto(16 * 16, 4096, 4096) == 4       # fc7 (1x1, 4096 -> 4096)
    assert auto(88 * 88, 256, 256 * 9) == 1     # conv3_2: depth 2304
    assert auto(175 * 175, 256, 128 * 9) == 1   # conv3_1: 479 x 4 tiles
    assert auto(44 * 44, 512, 512 * 9) == 4     # conv5_x: 248 tiles, depth 4608
    assert auto(2 * 16 * 16, 4096, 512 * 49) == 1  # fc6 at batch 2: 512 tiles fill the GPU
    assert auto(1, 8, 4116) == 4                # one tile: capped at 64 stages per split


@pytest.fixture
def split_calls(be, monkeypatch):
    """The `splits` each conv2d launch ran with (1: the unsplit launcher)."""
    calls = []
    plain, split = be.ext.conv2d, be.ext.conv2d_split
    monkeypatch.setattr(be.ext, "conv2d", lambda *a: (calls.append(1), plain(*a))[1])
    monkeypatch.setattr(be.ext, "conv2d_split", lambda *a: (calls.append(a[2]), split(*a))[1])
    return calls


def test_auto_splits_chosen(be, rng, split_calls):
    """splits=None runs the rule's split count: 4 for a deep filter over one
    tile (fc6-like), 1 for a conv3-like 3x3 layer."""
    check(be, rng, "igemm_tf32", None, 1, 84, 7, 7, 8, 7, 7, 1, 0)  # depth 4116, 1 output pixel
    check(be, rng, "igemm", None, 2, 64, 9, 7, 64, 3, 3, 1, 1)
    assert split_calls == [4, 1]


def test_forced_split_default_variant(be, rng, split_calls):
    """splits > 1 with variant None runs igemm even where the default is small_c (depth 27)."""
    check(be, rng, None, 2, 2, 3, 7, 5, 8, 3, 3, 1, 1)
    assert split_calls == [2]


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("splits", [0, -1, 13])  # depth189 has 12 stages
def test_splits_out_of_range(be, rng, splits):
    x, wt, b = draw(be, rng, *SHAPES["depth189"][:7])
    with pytest.raises(ValueError, match="splits"):
        ops.conv2d(x, wt, b, stride=(2, 1), padding=(1, 0), variant="igemm", splits=splits)


@pytest.mark.parametrize("splits", [2.0, True, "2", np.float32(2)])
def test_splits_not_int(be, rng, splits):
    x, wt, b = draw(be, rng, *SHAPES["depth189"][:7])
    with pytest.raises(TypeError, match="splits"):
        ops.conv2d(x, wt, b, variant="igemm", splits=splits)


@pytest.mark.parametrize("variant", ["direct", "small_c"])
def test_splits_need_igemm(be, rng, variant):
    x, wt, b = draw(be, rng, 2, 3, 7, 5, 8, 3, 3)
    with pytest.raises(ValueError, match="splits"):
        ops.conv2d(x, wt, b, padding=1, variant=variant, splits=2)
    assert_close(ops.conv2d(x, wt, b, padding=1, variant=variant, splits=1), reference(x, wt, b, 1, 1, False))


def test_workspace_overflow_refused_before_allocation(be, monkeypatch):
    """65535 splits of a 40001-pixel output need 2.6e9 workspace floats: refused, nothing allocated."""
    depth = 16 * 65535
    x = be.xp.zeros((1, 1, 1, depth + 40000), dtype=np.float32)
    wt = be.xp.zeros((1, 1, 1, depth), dtype=np.float32)

    def no_allocation(*args, **kwargs):
        raise AssertionError("allocated before validating")

    monkeypatch.setattr(be, "empty", no_allocation)
    with pytest.raises(ValueError, match="splits"):
        ops.conv2d(x, wt, variant="igemm", splits=65535)


# ---------------------------------------------------------------- fuzz

@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 2), c=st.integers(1, 12), h=st.integers(1, 8), w=st.integers(1, 8),
       k=st.integers(1, 70), r=st.integers(1, 4), s=st.integers(1, 4), stride=st.integers(1, 2),
       padding=st.integers(0, 2), relu=st.booleans(), bias=st.booleans(),
       variant=st.sampled_from(VARIANTS), splits=st.one_of(st.none(), st.integers(-1, 10)),
       seed=st.integers(0, 2**16))
def test_fuzz(be, n, c, h, w, k, r, s, stride, padding, relu, bias, variant, splits, seed):
    """Each random call either matches torch (the tensor-core variants: the
    convolution of their rounded operands, to fp32 accuracy) or raises ValueError."""
    valid = (h + 2 * padding >= r and w + 2 * padding >= s
             and (splits is None or 1 <= splits <= stages(c, r, s)))
    x, wt, b = draw(be, np.random.default_rng(seed), n, c, h, w, k, r, s, bias)
    if not valid:
        with pytest.raises(ValueError):
            ops.conv2d(x, wt, b, stride, padding, relu, variant, splits)
        return
    y = ops.conv2d(x, wt, b, stride, padding, relu, variant, splits)
    if variant == "igemm":
        assert_close(y, reference(x, wt, b, stride, padding, relu), FP32)
    else:  # the bound that holds at any depth (test_conv2d_tensorcore.rounded_reference)
        assert_close(y, rounded_reference(variant, x, wt, b, stride, padding, relu), FP32)
