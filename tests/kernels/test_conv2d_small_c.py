"""ops.conv2d(..., variant='small_c') against torch.nn.functional.conv2d in float64.

small_c (csrc/kernels/conv2d_small_c.cuh) is built for FCN's conv1_1 (3 -> 64
channels, 3x3, padding 100) but must stay right for any shape whose filter
has C*R*S <= 64 taps; beyond that it raises ValueError. The output cannot be
passed in, so each result is checked whole and finite (errors() turns any
NaN into +inf).
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fcn_cuda import ops

from _util import FP32, assert_close, to_numpy
from test_conv2d import reference  # the float64 torch reference

pytestmark = pytest.mark.kernels

MAX_TAPS = 64


def draw(be, rng, n, c, h, w, k, r, s, bias=True):
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((k, c, r, s), dtype=np.float32)
    # Biases of both signs and well away from zero, so relu(b) in the padding
    # region is a visible mix of b and 0.
    b = rng.standard_normal(k, dtype=np.float32) + np.where(np.arange(k) % 2, 1, -1).astype(np.float32) if bias else None
    as_be = lambda a: None if a is None else be.xp.asarray(a)
    return as_be(x), as_be(wt), as_be(b)


def check(be, rng, n, c, h, w, k, r, s, stride, padding, relu, bias):
    x, wt, b = draw(be, rng, n, c, h, w, k, r, s, bias)
    y = ops.conv2d(x, wt, b, stride=stride, padding=padding, relu=relu, variant="small_c")
    assert isinstance(y, be.xp.ndarray) and y.dtype == np.float32
    ref = reference(x, wt, b, stride, padding, relu)
    assert_close(y, ref, FP32, what=f"small_c conv2d x{(n, c, h, w)} w{(k, c, r, s)} stride {stride} pad {padding}")
    return to_numpy(y), ref


# conv1_1 (3 -> 64, 3x3, pad 100) on small odd images, batch > 1: most output
# pixels see only padding.
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("hw", [(5, 7), (13, 11)], ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_conv1_1(be, rng, hw, bias, relu):
    y, ref = check(be, rng, 2, 3, *hw, 64, 3, 3, 1, 100, relu, bias)
    # The corner pixel's window lies wholly in the padding: exactly relu?(b), or 0.
    corner = ref[:, :, 0, 0]
    assert np.array_equal(y[:, :, 0, 0], corner.astype(np.float32))


# (N, C, H, W, K, R, S, stride, padding): every channel-group case of K (one
# channel, 21 = a partial quad, 64 = one full group, 70 = a second group of
# 6), C in {1, 3, 7}, taps from 1 to 63 (every kTaps instantiation: 8, 16,
# 32, 64), strides and asymmetric paddings, odd sizes.
SHAPES = [
    (2, 3, 9, 7, 1, 3, 3, 1, 1),            # K = 1
    (2, 3, 9, 7, 21, 3, 3, 1, 1),           # K = 21: the last quad has one channel
    (2, 3, 9, 7, 70, 3, 3, 1, 100),         # K = 70: two channel groups, conv1_1's padding
    (2, 1, 11, 9, 64, 3, 3, 1, 1),          # C = 1: 9 taps (kTaps 16)
    (2, 7, 9, 7, 64, 3, 3, 1, 1),           # C = 7: 63 taps (kTaps 64)
    (2, 7, 9, 7, 21, 1, 1, 1, 0),           # 1x1 filter, 7 taps (kTaps 8)
    (2, 1, 9, 7, 21, 5, 5, 1, 2),           # 5x5 filter, 25 taps (kTaps 32)
    (2, 3, 13, 11, 21, 3, 3, 2, 1),         # stride 2
    (2, 3, 13, 11, 21, 5, 3, (2, 1), (3, 0)),  # non-square filter, stride and padding pairs
    (2, 3, 13, 11, 70, 1, 1, 2, 0),         # strided 1x1
    (2, 3, 1, 1, 21, 1, 1, 1, 0),           # 1x1 image, 1x1 filter
    (2, 3, 1, 1, 21, 3, 3, 1, 1),           # 1x1 image, only the centre tap inside
    (2, 2, 7, 5, 21, 5, 5, 3, (4, 6)),      # stride 3 into padding wider than the filter
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:7])) + f"_s{s[7]}_p{s[8]}")
def test_shapes(be, rng, shape):
    i = SHAPES.index(shape)
    check(be, rng, *shape, relu=i % 2 == 0, bias=i % 3 != 0)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_window_inside_padding(be, rng, bias, relu):
    """A 1x1 image with padding 4 and a 3x3 filter: every output pixel but the
    centre 3x3 sees only padding, so it must be exactly relu?(b), or 0."""
    y, ref = check(be, rng, 2, 3, 1, 1, 21, 3, 3, 1, 4, relu, bias)
    assert y.shape == (2, 21, 7, 7)
    border = np.ones((7, 7), bool)
    border[2:5, 2:5] = False
    assert np.array_equal(y[:, :, border], ref[:, :, border].astype(np.float32))
    if not bias:
        assert not y[:, :, border].any()


def test_matches_other_variants(be, rng):
    """The same conv1_1 call through every variant agrees to FP32 accuracy."""
    x, w, b = draw(be, rng, 2, 3, 7, 9, 64, 3, 3)
    ref = ops.conv2d(x, w, b, padding=100, relu=True, variant="direct")
    assert_close(ops.conv2d(x, w, b, padding=100, relu=True, variant="small_c"), to_numpy(ref))


# ---------------------------------------------------------------- the tap limit

@pytest.mark.parametrize("c, r, s", [(65, 1, 1), (3, 5, 5), (8, 3, 3), (1, 9, 8)])
def test_too_many_taps(be, rng, c, r, s):
    assert c * r * s > MAX_TAPS
    x, w, b = draw(be, rng, 2, c, 9, 9, 4, r, s)
    with pytest.raises(ValueError, match=r"w has C\*R\*S = \d+ taps .*small_c supports at most 64"):
        ops.conv2d(x, w, b, variant="small_c")


def test_tap_limit_is_inclusive(be, rng):
    check(be, rng, 2, 1, 9, 9, 5, 8, 8, 1, 0, relu=False, bias=True)  # exactly 64 taps


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 2), c=st.integers(1, 8), h=st.integers(1, 9), w=st.integers(1, 9),
       k=st.sampled_from([1, 3, 21, 64, 70]), r=st.integers(1, 5), s=st.integers(1, 5),
       stride=st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))),
       padding=st.one_of(st.integers(0, 6), st.tuples(st.integers(0, 6), st.integers(0, 6))),
       relu=st.booleans(), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_fuzz(be, n, c, h, w, k, r, s, stride, padding, relu, bias, seed):
    """Each random call either matches torch or raises ValueError (too many taps,
    or a filter larger than the padded image)."""
    x, wt, b = draw(be, np.random.default_rng(seed), n, c, h, w, k, r, s, bias)
    ph, pw = padding if isinstance(padding, tuple) else (padding, padding)
    if c * r * s > MAX_TAPS or h + 2 * ph < r or w + 2 * pw < s:
        with pytest.raises(ValueError, match="w"):
            ops.conv2d(x, wt, b, stride, padding, relu, "small_c")
        return
    y = ops.conv2d(x, wt, b, stride, padding, relu, "small_c")
    assert_close(y, reference(x, wt, b, stride, padding, relu))
