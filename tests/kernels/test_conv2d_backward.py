"""conv2d's backward kernels against torch autograd in float64: the input
gradient, the weight and bias gradients (fused ReLU mask included) and
relu_backward. The weight and bias reductions must give the same bits run
to run and for any emulator worker count."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st

from fcn_cuda import ops

from _util import assert_close, assert_each_raises, assert_same_bits_for_any_worker_count, conv_call, dev, randn, same_bits, t64, to_numpy

# The API allocates its outputs and workspaces: each is poisoned in every test (conftest.py).
pytestmark = pytest.mark.kernels


# (N, C, H, W, K, R, S, stride, padding)
CONV_CASES = [
    (2, 3, 7, 9, 5, 3, 3, 1, 1),             # VGG 3x3 pad 1, odd sizes
    (2, 3, 8, 9, 5, 3, 3, 2, 1),             # (H + 2p - R) % s != 0: implied output_padding
    (2, 3, 5, 4, 4, 3, 3, 1, 100),           # conv1_1: pad 100 on a small image
    (2, 21, 9, 8, 6, 7, 7, 1, 0),            # fc6: 7x7 pad 0
    (2, 64, 3, 5, 21, 1, 1, 1, 0),           # score_fr: 1x1
    (1, 1, 1, 1, 3, 1, 1, 1, 0),             # 1x1 image
    (2, 3, 9, 7, 64, 3, 3, (2, 3), (0, 2)),  # non-square stride / padding
    (1, 5, 11, 13, 70, 3, 3, 1, 1),          # K past one 64-channel tile
    (2, 3, 40, 40, 8, 3, 3, 1, 1),           # long depth: several splits
    # the input gradient as a convolution by flipped filters, at igemm's tile edges
    (2, 17, 9, 11, 3, 3, 3, 1, 1),           # 17 channels of dx: a 32-channel tile
    (1, 33, 6, 5, 2, 3, 3, 1, 2),            # padding R - 1: the flipped convolution pads 0
    (2, 16, 19, 17, 40, 3, 3, (1, 2), 1),    # stride (1, 2): the gather kernel
]


def conv_reference(x, w, gy, stride, padding, relu):
    xt, wt, bt = t64(x, True), t64(w, True), torch.zeros(w.shape[0], dtype=torch.float64, requires_grad=True)
    y = F.conv2d(xt, wt, bt, stride, padding)
    if relu:
        y = F.relu(y)
    y.backward(t64(gy))
    return y.detach(), xt.grad, wt.grad, bt.grad


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
def test_conv2d_grads(be, rng, case, relu):
    n, c, h, w_, k, r, s, stride, padding = case
    x, w = randn(rng, n, c, h, w_), randn(rng, k, c, r, s)
    y0 = F.conv2d(t64(x), t64(w), None, stride, padding)
    gy = randn(rng, *y0.shape)
    y, gx_ref, gw_ref, gb_ref = conv_reference(x, w, gy, stride, padding, relu)
    relu_y = y.numpy().astype(np.float32) if relu else None
    xd, wd, gyd = dev(be, x, w, gy)
    mask = be.xp.asarray(relu_y) if relu else None
    gx = ops.conv2d_grad_input(gyd, wd, x.shape, stride, padding, relu_y=mask)
    gw, gb = ops.conv2d_grad_weight(xd, gyd, (r, s), stride, padding, relu_y=mask)
    assert_close(gx, gx_ref, what="grad_x")
    assert_close(gw, gw_ref, what="grad_w")
    assert_close(gb, gb_ref, what="grad_b")
    if relu:  # the fused mask is exactly relu_backward followed by the unmasked op
        gm = ops.relu_backward(gyd, mask)
        assert same_bits(gx, ops.conv2d_grad_input(gm, wd, x.shape, stride, padding))
        gw2, gb2 = ops.conv2d_grad_weight(xd, gm, (r, s), stride, padding)
        assert same_bits(gw, gw2) and same_bits(gb, gb2)


def test_relu_backward(be, rng):
    y = randn(rng, 2, 3, 5, 7)
    y[0, 0, 0, :3] = 0.0  # y == 0 has gradient 0, as torch's relu
    gy = randn(rng, *y.shape)
    yt = t64(y, True)
    F.relu(yt).backward(t64(gy))
    out = ops.relu_backward(*dev(be, gy, y))
    assert_close(out, yt.grad)
    assert np.array_equal(to_numpy(out) == 0, y <= 0)


@pytest.mark.parametrize("case", [CONV_CASES[2], CONV_CASES[8], (2, 64, 5, 6, 70, 3, 3, 1, 1)], ids=str)
def test_conv2d_grad_weight_deterministic(be, rng, case):
    """Same bits run to run, and for 1, 2, 3 and 7 emulator workers."""
    n, c, h, w_, k, r, s, stride, padding = case
    x = randn(rng, n, c, h, w_)
    p = (h + 2 * padding - r) // stride + 1
    q = (w_ + 2 * padding - s) // stride + 1
    xd, gyd = dev(be, x, randn(rng, n, k, p, q))
    assert_same_bits_for_any_worker_count(be, lambda: ops.conv2d_grad_weight(xd, gyd, (r, s), stride, padding))


def test_split_rule_covers_both_paths(be):
    """The cases above reach both kernel paths: one split writing grad_w
    directly, and several through the workspace and split_sum."""
    splits = be.ext.conv2d_grad_weight_splits
    assert splits(2 * 5 * 6, 70, 64 * 9) == 1                       # few pixels, many tiles
    assert splits(2 * 40 * 40, 8, 27) > 1                           # CONV_CASES[8]
    assert 200 < splits(2 * 203 * 202, 4, 27) <= 256                # conv1_1, pad 100: near the cap
    assert splits(698 * 698, 64, 64 * 9) * 64 * 64 * 9 < 2**31      # conv1_2 at 500 x 500: workspace fits


# The weight gradient's tile rows follow K: 8 for K <= 8, 16 for <= 16, 32 for
# <= 32, 64 above. Each K below fills its tile exactly or leaves rows empty; C = 3
# gives one 27-tap column tile, C = 8 (the bundled model's conv1_2) 72 taps, a full
# tile and an 8-tap one. 2 x 13 x 11 pixels: two splits, each with a partial
# stage whose last pixel groups have no pixels.
NARROW_K = [1, 3, 8, 9, 16, 21, 32]


@pytest.mark.parametrize("k", NARROW_K)
@pytest.mark.parametrize("c", [3, 8])
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
def test_conv2d_grad_weight_narrow_tiles(be, rng, k, c, relu):
    x, w = randn(rng, 2, c, 13, 11), randn(rng, k, c, 3, 3)
    gy = randn(rng, 2, k, 13, 11)
    y, _, gw_ref, gb_ref = conv_reference(x, w, gy, 1, 1, relu)
    xd, gyd = dev(be, x, gy)
    mask = be.xp.asarray(y.numpy().astype(np.float32)) if relu else None
    gw, gb = ops.conv2d_grad_weight(xd, gyd, 3, 1, 1, relu_y=mask)
    assert_close(gw, gw_ref, what="grad_w")
    assert_close(gb, gb_ref, what="grad_b")
    if relu:
        gw2, _ = ops.conv2d_grad_weight(xd, ops.relu_backward(gyd, mask), 3, 1, 1)
        assert same_bits(gw, gw2)


@pytest.mark.parametrize("k", [8, 16, 21])
def test_conv2d_grad_weight_narrow_deterministic(be, rng, k):
    """The narrow tiles' pixel groups meet in a fixed order: same bits run to
    run and for 1, 2, 3 and 7 emulator workers, with the mask and several splits."""
    x, gy, y = randn(rng, 2, 8, 30, 29), randn(rng, 2, k, 30, 29), randn(rng, 2, k, 30, 29)
    assert be.ext.conv2d_grad_weight_splits(2 * 30 * 29, k, 8 * 9) > 1
    xd, gyd, yd = dev(be, x, gy, y)
    assert_same_bits_for_any_worker_count(be, lambda: ops.conv2d_grad_weight(xd, gyd, 3, 1, 1, relu_y=yd))
    first, _ = ops.conv2d_grad_weight(xd, gyd, 3, 1, 1, relu_y=yd)
    _, _, gw_ref, _ = conv_reference(x, randn(rng, k, 8, 3, 3), gy * (y > 0), 1, 1, False)
    assert_close(first, gw_ref, what="grad_w")



@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 2), c=st.integers(1, 5), h=st.integers(1, 9), w=st.integers(1, 9),
       k=st.sampled_from([1, 2, 3, 5, 8, 9, 16, 17, 33]), r=st.integers(1, 5), s=st.integers(1, 5),
       stride=st.one_of(st.integers(0, 3), st.tuples(st.integers(1, 3), st.integers(-1, 3))),
       padding=st.one_of(st.integers(-1, 3), st.tuples(st.integers(0, 3), st.integers(0, 3))),
       relu=st.booleans(), dtype=st.sampled_from([np.float32] * 4 + [np.float64]), seed=st.integers(0, 2**16))
def test_fuzz_conv2d_grad_weight(be, n, c, h, w, k, r, s, stride, padding, relu, dtype, seed):
    rng = np.random.default_rng(seed)
    x = randn(rng, n, c, h, w).astype(dtype)
    valid, (sh, sw), (ph, pw) = conv_call(dtype, h, w, r, s, stride, padding)
    p = (h + 2 * ph - r) // max(sh, 1) + 1 if valid else 2
    q = (w + 2 * pw - s) // max(sw, 1) + 1 if valid else 2
    gy = randn(rng, n, k, p, q)
    if not valid:
        with pytest.raises((ValueError, TypeError)):
            ops.conv2d_grad_weight(*dev(be, x, gy), (r, s), stride, padding)
        return
    wt = randn(rng, k, c, r, s)
    y, _, gw_ref, gb_ref = conv_reference(x, wt, gy, (sh, sw), (ph, pw), relu)
    mask = be.xp.asarray(y.numpy().astype(np.float32)) if relu else None
    gw, gb = ops.conv2d_grad_weight(*dev(be, x, gy), (r, s), stride, padding, relu_y=mask)
    assert_close(gw, gw_ref, what="grad_w")
    assert_close(gb, gb_ref, what="grad_b")


def test_bad_input(be, rng):
    x, w, gy = dev(be, randn(rng, 2, 3, 7, 5), randn(rng, 4, 3, 3, 3), randn(rng, 2, 4, 7, 5))
    f64 = lambda a: a.astype(np.float64)
    xs = (2, 3, 7, 5)
    gi = lambda **kw: ops.conv2d_grad_input(**{"grad_y": gy, "w": w, "x_shape": xs, "stride": 1, "padding": 1, **kw})
    gw = lambda **kw: ops.conv2d_grad_weight(**{"x": x, "grad_y": gy, "kernel_size": 3, "stride": 1, "padding": 1,
                                               **kw})
    assert_each_raises((gi, gw), [
        (lambda: gi(grad_y=f64(gy)), TypeError, "grad_y must be float32"),
        (lambda: gi(w=gy), ValueError, "w must be 4-D|grad_y must be N x K"),
        (lambda: gi(w=w[:, :2].copy()), ValueError, "w has 2 input channels"),
        (lambda: gi(grad_y=gy[0]), ValueError, "grad_y must be 4-D"),
        (lambda: gi(grad_y=gy[:, :, :, ::2]), ValueError, "grad_y must be C-contiguous"),
        (lambda: gi(grad_y=gy[:0]), ValueError, "grad_y is empty"),
        (lambda: gi(x_shape=(2, 3, 7)), ValueError, "x_shape"),
        (lambda: gi(x_shape=(2, 3, 0, 5)), ValueError, "x_shape"),
        (lambda: gi(x_shape=(2, 3, 9, 5)), ValueError, "grad_y is"),
        (lambda: gi(stride=0), ValueError, "stride"),
        (lambda: gi(padding=-1), ValueError, "padding"),
        (lambda: gi(relu_y=gy[:, :2].copy()), ValueError, "relu_y"),
        (lambda: gi(relu_y=f64(gy)), TypeError, "relu_y"),
        (lambda: gi(padding=2**31), ValueError, "padding"),
        (lambda: gw(x=f64(x)), TypeError, "x must be float32"),
        (lambda: gw(grad_y=gy[:1].copy()), ValueError, "batch size"),
        (lambda: gw(kernel_size=0), ValueError, "kernel_size"),
        (lambda: gw(kernel_size=9), ValueError, "kernel_size"),
        (lambda: gw(stride=(1, 0)), ValueError, "stride"),
        (lambda: gw(padding=(0, -1)), ValueError, "padding"),
        (lambda: gw(padding=0), ValueError, "grad_y is"),
        (lambda: gw(relu_y=gy[..., :2].copy()), ValueError, "relu_y"),
        (lambda: gw(x=x[:, :, ::2]), ValueError, "x must be C-contiguous"),
        (lambda: ops.relu_backward(gy, gy[:1].copy()), ValueError, "y must have grad_y's shape"),
        (lambda: ops.relu_backward(f64(gy), gy), TypeError, "grad_y must be float32"),
    ])
