"""The backward kernels against torch autograd in float64 (and NumPy for
dropout's Philox and the SGD update): conv2d / conv_transpose2d gradients,
the ReLU mask, max-pool, crop and the fused score head, softmax
cross-entropy, dropout, SGD. The reductions (weight / bias gradients, the
loss) must give the same bits run to run and for any emulator worker count."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st

import fcn_cuda
from fcn_cuda import ops

from _util import assert_close, conv_call, to_numpy

# The API allocates its outputs and workspaces: each is poisoned (conftest.py).
pytestmark = [pytest.mark.kernels, pytest.mark.usefixtures("poisoned_outputs")]


def t64(a, grad=False):
    return torch.from_numpy(np.asarray(to_numpy(a))).double().requires_grad_(grad)


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def dev(be, *arrays):
    return [be.xp.asarray(a) for a in arrays]


def same_bits(a, b):
    return to_numpy(a).tobytes() == to_numpy(b).tobytes()


# ---------------------------------------------------------------- conv2d

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
    """Same bits run to run, and for one emulator worker vs the default pool."""
    n, c, h, w_, k, r, s, stride, padding = case
    x = randn(rng, n, c, h, w_)
    p = (h + 2 * padding - r) // stride + 1
    q = (w_ + 2 * padding - s) // stride + 1
    xd, gyd = dev(be, x, randn(rng, n, k, p, q))
    first = ops.conv2d_grad_weight(xd, gyd, (r, s), stride, padding)
    second = ops.conv2d_grad_weight(xd, gyd, (r, s), stride, padding)
    assert all(same_bits(a, b) for a, b in zip(first, second))
    if be.name == "host":
        fcn_cuda.set_emulator_workers(1)
        try:
            serial = ops.conv2d_grad_weight(xd, gyd, (r, s), stride, padding)
        finally:
            fcn_cuda.set_emulator_workers(0)
        assert all(same_bits(a, b) for a, b in zip(first, serial))


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
    run and for one emulator worker, with the mask and several splits."""
    x, gy, y = randn(rng, 2, 8, 30, 29), randn(rng, 2, k, 30, 29), randn(rng, 2, k, 30, 29)
    assert be.ext.conv2d_grad_weight_splits(2 * 30 * 29, k, 8 * 9) > 1
    xd, gyd, yd = dev(be, x, gy, y)
    first, _ = ops.conv2d_grad_weight(xd, gyd, 3, 1, 1, relu_y=yd)
    assert same_bits(first, ops.conv2d_grad_weight(xd, gyd, 3, 1, 1, relu_y=yd)[0])
    if be.name == "host":
        fcn_cuda.set_emulator_workers(1)
        try:
            serial, _ = ops.conv2d_grad_weight(xd, gyd, 3, 1, 1, relu_y=yd)
        finally:
            fcn_cuda.set_emulator_workers(0)
        assert same_bits(first, serial)
    _, _, gw_ref, _ = conv_reference(x, randn(rng, k, 8, 3, 3), gy * (y > 0), 1, 1, False)
    assert_close(first, gw_ref, what="grad_w")


# ---------------------------------------------------------------- conv_transpose2d

# (N, C_in, C_out, H, W, R, S, stride, padding)
DECONV_CASES = [
    (2, 21, 21, 3, 5, 4, 4, 2, 0),      # upscore2 / upscore_pool4: k4 s2
    (2, 3, 3, 3, 4, 16, 16, 8, 0),      # upscore8: k16 s8
    (2, 3, 5, 4, 3, 3, 3, 1, 1),
    (1, 2, 3, 1, 1, 4, 4, 2, 0),        # 1x1 image
    (2, 3, 2, 5, 4, 5, 3, (3, 2), (1, 0)),
    (2, 1, 64, 3, 3, 4, 4, 2, 1),
]


@pytest.mark.parametrize("case", DECONV_CASES, ids=str)
def test_conv_transpose2d_grads(be, rng, case):
    n, cin, cout, h, w_, r, s, stride, padding = case
    x, w = randn(rng, n, cin, h, w_), randn(rng, cin, cout, r, s)
    xt, wt = t64(x, True), t64(w, True)
    y = F.conv_transpose2d(xt, wt, None, stride, padding)
    gy = randn(rng, *y.shape)
    y.backward(t64(gy))
    xd, wd, gyd = dev(be, x, w, gy)
    assert_close(ops.conv_transpose2d_grad_input(gyd, wd, stride, padding, x.shape), xt.grad, what="grad_x")
    gw = ops.conv_transpose2d_grad_weight(xd, gyd, (r, s), stride, padding)
    assert_close(gw, wt.grad, what="grad_w")
    assert same_bits(gw, ops.conv_transpose2d_grad_weight(xd, gyd, (r, s), stride, padding))


# ---------------------------------------------------------------- max_pool2d

# (shape, kernel, stride, ceil_mode)
POOL_CASES = [
    ((2, 3, 7, 9), 2, 2, True),            # FCN's pools, odd: ceil-mode edge windows
    ((2, 3, 8, 8), 2, 2, True),
    ((2, 1, 7, 9), 3, 2, True),            # overlapping windows
    ((2, 3, 9, 7), 3, 1, False),           # heavy overlap
    ((1, 64, 1, 1), 2, 2, True),           # 1x1 image
    ((2, 21, 6, 5), (3, 2), (2, 1), False),
]


def pool_reference(x, k, s, ceil_mode, gy):
    xt = t64(x, True)
    F.max_pool2d(xt, k, s, 0, ceil_mode=ceil_mode).backward(t64(gy))
    return xt.grad


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_max_pool2d_backward(be, rng, case, ties):
    shape, k, s, ceil_mode = case
    x = rng.integers(0, 3, shape).astype(np.float32) if ties else randn(rng, *shape)
    y, idx = ops.max_pool2d(be.xp.asarray(x), k, s, ceil_mode=ceil_mode, return_indices=True)
    gy = randn(rng, *y.shape)
    gx = ops.max_pool2d_backward(be.xp.asarray(gy), idx, shape, k, s)
    assert_close(gx, pool_reference(x, k, s, ceil_mode, gy))


# ---------------------------------------------------------------- crop and the score head

# (N, C, a's H x W, b's Hb x Wb, offset)
CROP_CASES = [
    (2, 21, (5, 7), (9, 11), (2, 3)),
    (1, 3, (1, 1), (4, 5), (3, 4)),     # the last pixel
    (2, 1, (6, 4), (6, 4), 0),          # the whole map
    (2, 64, (3, 3), (13, 12), 5),       # FCN-16s score_pool4 crop 5
]


@pytest.mark.parametrize("case", CROP_CASES, ids=str)
def test_crop_backward(be, rng, case):
    n, c, (h, w), (hb, wb), offset = case
    oy, ox = (offset, offset) if isinstance(offset, int) else offset
    a, b = t64(randn(rng, n, c, h, w), True), t64(randn(rng, n, c, hb, wb), True)
    g = randn(rng, n, c, h, w)
    (a + b[:, :, oy:oy + h, ox:ox + w]).backward(t64(g))
    assert_close(ops.crop_backward(be.xp.asarray(g), (n, c, hb, wb), offset), b.grad)


# (N, K classes, C channels, H x W window, Hf x Wf feature map, offset, scale)
SCORE_CASES = [
    (2, 21, 64, (5, 7), (9, 11), (2, 3), 1.0),
    (2, 21, 3, (3, 3), (13, 12), 5, 0.01),    # FCN-16s / 8s at-once pool4: crop 5, scale 0.01
    (1, 3, 1, (1, 1), (2, 2), 1, 1e-4),
    (2, 70, 5, (4, 6), (4, 6), 0, 1.0),       # K past one 64-row tile
]


@pytest.mark.parametrize("case", SCORE_CASES, ids=str)
def test_score_crop_add_backward(be, rng, case):
    n, k, c, (h, w), (hf, wf), offset, scale = case
    oy, ox = (offset, offset) if isinstance(offset, int) else offset
    up, feat = t64(randn(rng, n, k, h, w), True), t64(randn(rng, n, c, hf, wf), True)
    wt, bt = t64(randn(rng, k, c, 1, 1), True), t64(randn(rng, k), True)
    out = up + F.conv2d(scale * feat, wt, bt)[:, :, oy:oy + h, ox:ox + w]
    g = randn(rng, n, k, h, w)
    out.backward(t64(g))
    gfeat, gw, gb = ops.score_crop_add_backward(*dev(be, g, feat.detach().numpy().astype(np.float32),
                                                     wt.detach().numpy().astype(np.float32)), offset, scale)
    assert_close(gfeat, feat.grad, what="grad_feat")
    assert_close(gw, wt.grad, what="grad_w")
    assert_close(gb, bt.grad, what="grad_b")
    assert_close(g, up.grad, what="grad_up is grad_out")


# ---------------------------------------------------------------- softmax cross-entropy

def xent_reference(x, labels, ignore, normalize):
    xt = t64(x, True)
    lab = torch.from_numpy(labels.astype(np.int64))
    loss = F.cross_entropy(xt, lab, ignore_index=ignore, reduction="sum")
    valid = int((labels != ignore).sum())
    loss = loss / (valid if normalize else x.shape[0])
    loss.backward()
    return loss.item(), xt.grad


XENT_SHAPES = [(2, 21, 5, 7), (1, 3, 1, 1), (2, 1, 3, 3), (2, 64, 9, 17)]


@pytest.mark.parametrize("shape", XENT_SHAPES, ids=str)
@pytest.mark.parametrize("normalize", [False, True], ids=["per_image", "per_pixel"])
@pytest.mark.parametrize("magnitude", [1.0, 1e4], ids=["unit", "huge"])
def test_softmax_cross_entropy(be, rng, shape, normalize, magnitude):
    n, c, h, w = shape
    x = randn(rng, *shape) * np.float32(magnitude)
    labels = rng.integers(0, c, (n, h, w)).astype(np.int32)
    labels[rng.random((n, h, w)) < 0.2] = 255
    loss_ref, grad_ref = xent_reference(x, labels, 255, normalize)
    loss, grad = ops.softmax_cross_entropy(*dev(be, x, labels), normalize=normalize)
    assert isinstance(loss, float)
    assert abs(loss - loss_ref) <= 1e-5 * max(abs(loss_ref), 1e-30)
    assert_close(grad, grad_ref)


@pytest.mark.parametrize("normalize", [False, True], ids=["per_image", "per_pixel"])
@pytest.mark.parametrize("weight", [None, (1.0, 4.94, 0.0, 7.5)], ids=["unweighted", "weighted"])
def test_shares_of_a_batch_with_its_divisor_give_its_loss_and_gradient(be, rng, normalize, weight):
    """A data-parallel rank's loss: its images, divided by the whole batch's
    divisor (loss_divisor over the summed class_pixel_counts), give the whole
    batch's gradient for those images bit for bit, and the shares' losses sum
    to the batch's."""
    n, c, h, w = 5, 4, 3, 7
    x = randn(rng, n, c, h, w)
    labels = rng.integers(0, c, (n, h, w)).astype(np.int32)
    labels[rng.random((n, h, w)) < 0.2] = 255
    loss, grad = ops.softmax_cross_entropy(*dev(be, x, labels), normalize=normalize, weight=weight)
    shares = [slice(0, 2), slice(2, 5)]
    counts = [ops.class_pixel_counts(dev(be, labels[s])[0], c) for s in shares]
    np.testing.assert_array_equal(sum(counts), np.bincount(labels[labels != 255], minlength=c))
    divisor = ops.loss_divisor(sum(counts), n, normalize, weight)
    total = 0.0
    for s in shares:
        part, part_grad = ops.softmax_cross_entropy(*dev(be, x[s], labels[s]), normalize=normalize, weight=weight,
                                                    divisor=divisor)
        np.testing.assert_array_equal(to_numpy(part_grad), to_numpy(grad)[s])
        total += part
    assert abs(total - loss) <= 1e-6 * abs(loss)
    for bad, err in ((-1.0, ValueError), (float("nan"), ValueError), ("2", TypeError)):
        with pytest.raises(err, match="divisor"):
            ops.softmax_cross_entropy(*dev(be, x, labels), divisor=bad)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        ops.class_pixel_counts(be.xp.asarray(np.full((2, 2), 4, np.int32)), c)


@pytest.mark.parametrize("normalize", [False, True], ids=["per_image", "per_pixel"])
def test_softmax_cross_entropy_class_weights(be, rng, normalize):
    n, c, h, w = 2, 4, 5, 7
    x = randn(rng, n, c, h, w)
    labels = rng.integers(0, c, (n, h, w)).astype(np.int32)
    labels[rng.random((n, h, w)) < 0.2] = 255
    weight = np.array([1.0, 4.94, 0.0, 7.5], np.float32)
    xt = t64(x, True)
    ref = F.cross_entropy(xt, torch.from_numpy(labels.astype(np.int64)), weight=torch.from_numpy(weight).double(),
                          ignore_index=255, reduction="mean" if normalize else "sum")
    ref = ref if normalize else ref / n
    ref.backward()
    loss, grad = ops.softmax_cross_entropy(*dev(be, x, labels), normalize=normalize, weight=weight)
    assert abs(loss - ref.item()) <= 1e-5 * abs(ref.item())
    assert_close(grad, xt.grad)
    ones, ones_grad = ops.softmax_cross_entropy(*dev(be, x, labels), normalize=normalize, weight=[1.0] * c)
    plain, plain_grad = ops.softmax_cross_entropy(*dev(be, x, labels), normalize=normalize)
    assert ones == plain and same_bits(ones_grad, plain_grad)
    for bad, err, match in (([1.0] * 3, ValueError, "C = 4"), ([1.0, -1.0, 1.0, 1.0], ValueError, ">= 0"),
                            ([1.0, np.inf, 1.0, 1.0], ValueError, "finite"), ("abcd", TypeError, "C numbers")):
        with pytest.raises(err, match=match):
            ops.softmax_cross_entropy(*dev(be, x, labels), weight=bad)


def test_softmax_cross_entropy_other_ignore_and_all_ignored(be, rng):
    x = randn(rng, 2, 4, 3, 5)
    labels = rng.integers(0, 4, (2, 3, 5)).astype(np.int32)
    labels[0, 0] = -1
    loss_ref, grad_ref = xent_reference(x, labels, -1, False)
    loss, grad = ops.softmax_cross_entropy(*dev(be, x, labels), ignore_index=-1)
    assert abs(loss - loss_ref) <= 1e-5 * abs(loss_ref)
    assert_close(grad, grad_ref)
    for normalize in (False, True):
        loss, grad = ops.softmax_cross_entropy(*dev(be, x, np.full((2, 3, 5), 255, np.int32)), normalize=normalize)
        assert loss == 0.0 and not to_numpy(grad).any()


def test_softmax_cross_entropy_deterministic(be, rng):
    x = randn(rng, 2, 21, 37, 41)
    labels = rng.integers(0, 21, (2, 37, 41)).astype(np.int32)
    xd, ld = dev(be, x, labels)
    first = ops.softmax_cross_entropy(xd, ld)
    again = ops.softmax_cross_entropy(xd, ld)
    assert again[0] == first[0] and same_bits(again[1], first[1])
    if be.name == "host":
        fcn_cuda.set_emulator_workers(1)
        try:
            serial = ops.softmax_cross_entropy(xd, ld)
        finally:
            fcn_cuda.set_emulator_workers(0)
        assert serial[0] == first[0] and same_bits(serial[1], first[1])


# ---------------------------------------------------------------- dropout / Philox

# Random123's known-answer vectors for Philox4x32-10 (kat_vectors).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    ((0xffffffff,) * 4, (0xffffffff,) * 2, (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
    ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
]


def test_philox_known_answers(be):
    ctr = np.array([c for c, _, _ in KAT], np.uint32)
    key = np.array([k for _, k, _ in KAT], np.uint32)
    out = to_numpy(ops.philox4x32_10(*dev(be, ctr, key)))
    np.testing.assert_array_equal(out, np.array([r for _, _, r in KAT], np.uint32))


def philox_numpy(ctr, k0, k1):
    """NumPy twin of dropout.cuh's philox4x32_10: ctr n x 4 uint32 -> n x 4."""
    c = [ctr[:, i].astype(np.uint64) for i in range(4)]
    k0, k1 = np.uint64(k0), np.uint64(k1)
    mask = np.uint64(0xffffffff)
    for r in range(10):
        if r:
            k0, k1 = (k0 + np.uint64(0x9E3779B9)) & mask, (k1 + np.uint64(0xBB67AE85)) & mask
        p0, p1 = np.uint64(0xD2511F53) * c[0], np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & mask, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & mask]
    return np.stack(c, 1).astype(np.uint32)


def test_philox_numpy_twin_matches_kat():
    for ctr, key, expect in KAT:
        assert tuple(philox_numpy(np.array([ctr], np.uint32), *key)[0]) == expect


@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 1, 1, 1), (2, 4096, 1, 1)], ids=str)
@pytest.mark.parametrize("p", [0.5, 0.1])
def test_dropout_mask_is_philox(be, rng, shape, p):
    x = randn(rng, *shape)
    seed, step = 1234, 7
    y = to_numpy(ops.dropout(be.xp.asarray(x), p, seed, step))
    count = x.size
    words = philox_numpy(np.stack([np.arange(-(-count // 4), dtype=np.uint32)] + [np.zeros(-(-count // 4),
                         np.uint32)] * 3, 1), seed, step).ravel()[:count]
    keep = (words >= np.uint32(int(p * 2**32))).reshape(shape)
    np.testing.assert_array_equal(y, np.where(keep, x * np.float32(1 / (1 - p)), np.float32(0)))


def test_dropout_statistics_determinism_backward(be, rng):
    x = be.xp.ones((4, 64, 25, 25), dtype=np.float32)  # 160000 elements
    for p in (0.5, 0.1):
        y = to_numpy(ops.dropout(x, p, seed=3, step=11))
        kept = (y != 0).mean()
        sigma = np.sqrt(p * (1 - p) / y.size)
        assert abs(kept - (1 - p)) < 5 * sigma, (p, kept)
        np.testing.assert_allclose(y[y != 0], np.float32(1 / (1 - p)))
        assert same_bits(y, ops.dropout(x, p, seed=3, step=11))
        assert (to_numpy(ops.dropout(x, p, seed=3, step=12)) != y).any()
        assert (to_numpy(ops.dropout(x, p, seed=4, step=11)) != y).any()
        g = randn(rng, *x.shape)
        gx = to_numpy(ops.dropout_backward(be.xp.asarray(g), p, 3, 11))
        np.testing.assert_array_equal(gx, np.where(y != 0, g * np.float32(1 / (1 - p)), np.float32(0)))
    np.testing.assert_array_equal(to_numpy(ops.dropout(x, 0.0, 0, 0)), to_numpy(x))


@pytest.mark.parametrize("shape", [(3, 5, 3, 7), (4, 2, 1, 1), (2, 8, 4, 4)], ids=str)
def test_dropout_of_a_share_of_the_batch_draws_the_batch_masks(be, rng, shape):
    """offset = k * (elements of one image) keys images k.. of x by their places
    in the whole batch, for per-image sizes that are and are not multiples of 4
    (x[k:]'s first element then sits mid-counter)."""
    x = randn(rng, *shape)
    whole = to_numpy(ops.dropout(be.xp.asarray(x), 0.5, 21, 8))
    grad = to_numpy(ops.dropout_backward(be.xp.asarray(x), 0.5, 21, 8))
    per_image = x[0].size
    for k in range(1, shape[0]):
        for first, last in ((k, shape[0]), (k - 1, k)):
            share = be.xp.asarray(np.ascontiguousarray(x[first:last]))
            np.testing.assert_array_equal(to_numpy(ops.dropout(share, 0.5, 21, 8, offset=first * per_image)),
                                          whole[first:last])
            np.testing.assert_array_equal(
                to_numpy(ops.dropout_backward(share, 0.5, 21, 8, offset=first * per_image)), grad[first:last])


@pytest.mark.parametrize("offset", [2**34 + 5, 2**40 - 3, 2**62], ids=hex)
def test_dropout_counters_beyond_32_bits_are_philox(be, rng, offset):
    """The counter's second word carries g // 4 // 2^32: masks past 2^34 elements (a large global batch)."""
    x = randn(rng, 3, 11)
    y = to_numpy(ops.dropout(be.xp.asarray(x), 0.5, 77, 3, offset=offset))
    g = offset + np.arange(x.size, dtype=np.uint64)
    j = g // np.uint64(4)
    ctr = np.stack([(j & np.uint64(0xffffffff)).astype(np.uint32), (j >> np.uint64(32)).astype(np.uint32),
                    np.zeros_like(j, np.uint32), np.zeros_like(j, np.uint32)], 1)
    words = philox_numpy(ctr, 77, 3)[np.arange(x.size), (g % np.uint64(4)).astype(np.int64)]
    keep = (words >= np.uint32(2**31)).reshape(x.shape)
    np.testing.assert_array_equal(y, np.where(keep, x * np.float32(2), np.float32(0)))


@pytest.mark.parametrize("bad", [-1, 2**62 + 1, 1.5])
def test_dropout_rejects_bad_offsets(be, bad):
    x = be.xp.ones((2, 3), np.float32)
    with pytest.raises(TypeError if isinstance(bad, float) else ValueError, match="offset"):
        ops.dropout(x, 0.5, 1, 2, offset=bad)


# ---------------------------------------------------------------- SGD

@pytest.mark.parametrize("hyper", [(0.1, 0.9, 5e-4), (1e-10, 0.99, 5e-4), (2e-10, 0.99, 0.0)], ids=str)
def test_sgd_step(be, rng, hyper):
    lr, mu, wd = hyper
    w = randn(rng, 3, 5, 7)
    v = randn(rng, 3, 5, 7) * np.float32(lr)
    w64, v64 = w.astype(np.float64), v.astype(np.float64)
    wd_, vd = dev(be, w, v)
    for _ in range(3):
        g = randn(rng, 3, 5, 7)
        assert ops.sgd_step(wd_, be.xp.asarray(g), vd, lr, mu, wd) is None
        v64 = mu * v64 + lr * (g + wd * w64)
        w64 = w64 - v64
    assert_close(vd, v64, what="v")
    assert_close(wd_, w64, what="w")


def test_sgd_step_overlap_is_a_test_of_address_ranges(be, rng, monkeypatch):
    """w and v are refused when their bytes overlap and accepted when they
    only touch, decided from the two address ranges, never by
    xp.shares_memory (an address per element, sorted, on a GPU)."""
    def exact_overlap(*args, **kwargs):
        raise NotImplementedError("sgd_step called xp.shares_memory")

    monkeypatch.setattr(be.xp, "shares_memory", exact_overlap)
    buf = randn(rng, 71)
    g = randn(rng, 35)
    dev_buf = be.xp.asarray(buf.copy())  # updated in place; buf keeps the values before
    ops.sgd_step(dev_buf[:35], be.xp.asarray(g), dev_buf[35:70], 0.1, 0.9, 0.0)  # w and v touch, no overlap
    v = 0.9 * buf[35:70].astype(np.float64) + 0.1 * g
    assert_close(dev_buf[35:70], v, what="v")
    assert_close(dev_buf[:35], buf[:35] - v, what="w")
    assert to_numpy(dev_buf)[70] == buf[70]
    with pytest.raises(ValueError, match="w and v must not overlap"):
        ops.sgd_step(dev_buf[:35], be.xp.asarray(g), dev_buf[34:69], 0.1, 0.9, 0.0)
    with pytest.raises(ValueError, match="w and v must not overlap"):
        ops.sgd_step(dev_buf[36:71], be.xp.asarray(g), dev_buf[2:37], 0.1, 0.9, 0.0)


# ---------------------------------------------------------------- fuzz

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


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 2), c=st.integers(1, 4), h=st.integers(1, 10), w=st.integers(1, 10),
       kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(0, 3),
       ceil_mode=st.booleans(), ties=st.booleans(), seed=st.integers(0, 2**16))
def test_fuzz_max_pool2d_backward(be, n, c, h, w, kh, kw, sh, sw, ceil_mode, ties, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, (n, c, h, w)).astype(np.float32) if ties else randn(rng, n, c, h, w)
    if sw == 0:
        with pytest.raises(ValueError, match="stride"):
            ops.max_pool2d_backward(*dev(be, randn(rng, n, c, 1, 1), np.zeros((n, c, 1, 1), np.int32)),
                                    x.shape, (kh, kw), (sh, sw))
        return
    try:
        y, idx = ops.max_pool2d(be.xp.asarray(x), (kh, kw), (sh, sw), ceil_mode=ceil_mode, return_indices=True)
    except ValueError:  # kernel larger than the image: no forward, so nothing to differentiate
        assert h < kh or w < kw
        return
    gy = randn(rng, *y.shape)
    gx = ops.max_pool2d_backward(be.xp.asarray(gy), idx, x.shape, (kh, kw), (sh, sw))
    assert_close(gx, pool_reference(x, (kh, kw), (sh, sw), ceil_mode, gy))


# ---------------------------------------------------------------- bad input

def bad_cases(be, rng):
    """(the valid base calls, [(callable, exception, match)] for every entry point's bad arguments)."""
    x, w, gy = dev(be, randn(rng, 2, 3, 7, 5), randn(rng, 4, 3, 3, 3), randn(rng, 2, 4, 7, 5))
    f64 = lambda a: a.astype(np.float64)
    xs = (2, 3, 7, 5)
    gi = lambda **kw: ops.conv2d_grad_input(**{"grad_y": gy, "w": w, "x_shape": xs, "stride": 1, "padding": 1, **kw})
    gw = lambda **kw: ops.conv2d_grad_weight(**{"x": x, "grad_y": gy, "kernel_size": 3, "stride": 1, "padding": 1,
                                               **kw})
    dx, dwt, dgy = dev(be, randn(rng, 2, 3, 3, 4), randn(rng, 3, 5, 4, 4), randn(rng, 2, 5, 8, 10))
    ti = lambda **kw: ops.conv_transpose2d_grad_input(**{"grad_y": dgy, "w": dwt, "stride": 2, "padding": 0,
                                                         "x_shape": (2, 3, 3, 4), **kw})
    tw = lambda **kw: ops.conv_transpose2d_grad_weight(**{"x": dx, "grad_y": dgy, "kernel_size": 4, "stride": 2,
                                                          "padding": 0, **kw})
    py, pidx = ops.max_pool2d(x, 2, 2, return_indices=True)  # 2 x 3 x 4 x 3
    pb = lambda **kw: ops.max_pool2d_backward(**{"grad_y": py, "indices": pidx, "x_shape": xs, **kw})
    cg = be.xp.asarray(randn(rng, 2, 3, 3, 2))
    cb = lambda **kw: ops.crop_backward(**{"grad": cg, "b_shape": xs, "offset": (1, 2), **kw})
    sg, sf, sw_ = dev(be, randn(rng, 2, 4, 3, 2), randn(rng, 2, 3, 7, 5), randn(rng, 4, 3, 1, 1))
    sb = lambda **kw: ops.score_crop_add_backward(**{"grad_out": sg, "feat": sf, "w": sw_, "offset": 1, **kw})
    scores, labels = dev(be, randn(rng, 2, 4, 3, 5), np.zeros((2, 3, 5), np.int32))
    ce = lambda **kw: ops.softmax_cross_entropy(**{"scores": scores, "labels": labels, **kw})
    bad_label = lambda v: be.xp.asarray(np.where(np.arange(30).reshape(2, 3, 5) == 7, v, 0).astype(np.int32))
    do = lambda **kw: ops.dropout(**{"x": x, "p": 0.5, "seed": 1, "step": 2, **kw})
    sv, sgr = be.xp.zeros_like(x), be.xp.zeros_like(x)
    sgd = lambda **kw: ops.sgd_step(**{"w": x.copy(), "g": sgr, "v": sv, "lr": 0.1, "momentum": 0.9,
                                       "weight_decay": 0.0, **kw})
    return (gi, gw, ti, tw, pb, cb, sb, ce, do, sgd), [
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
        (lambda: ti(grad_y=f64(dgy)), TypeError, "grad_y must be float32"),
        (lambda: ti(x_shape=(2, 4, 3, 4)), ValueError, "C_in"),
        (lambda: ti(padding=1), ValueError, "grad_y is"),
        (lambda: ti(stride=-2), ValueError, "stride"),
        (lambda: ti(x_shape=(3, 3, 3, 4)), ValueError, "grad_y must be N x C_out"),
        (lambda: tw(x=dx[:, :, :, :3].copy()), ValueError, "grad_y is"),
        (lambda: tw(kernel_size=(4, 0)), ValueError, "kernel_size"),
        (lambda: tw(grad_y=dgy[:1].copy()), ValueError, "batch size"),
        (lambda: tw(padding=-1), ValueError, "padding"),
        (lambda: tw(stride=2**31 - 1, padding=2**30), ValueError, "stride .* makes the full output"),
        (lambda: pb(indices=pidx.astype(np.int64)), TypeError, "indices must be int32"),
        (lambda: pb(indices=pidx[:, :2].copy()), ValueError, "indices must have grad_y's shape"),
        (lambda: pb(x_shape=(2, 3, 9, 5)), ValueError, "grad_y is"),
        (lambda: pb(x_shape=(2, 4, 7, 5)), ValueError, "grad_y is"),
        (lambda: pb(kernel_size=0), ValueError, "kernel_size"),
        (lambda: pb(stride=(2, 0)), ValueError, "stride"),
        (lambda: pb(grad_y=f64(py)), TypeError, "grad_y must be float32"),
        (lambda: cb(offset=(5, 0)), ValueError, "offset"),
        (lambda: cb(offset=-1), ValueError, "offset"),
        (lambda: cb(b_shape=(2, 4, 7, 5)), ValueError, "grad must have b_shape"),
        (lambda: cb(b_shape=(2, 3, 7)), ValueError, "b_shape"),
        (lambda: cb(grad=cg[0]), ValueError, "grad must be 4-D"),
        (lambda: sb(offset=(5, 0)), ValueError, "offset"),
        (lambda: sb(w=sw_[:3].copy()), ValueError, "w must be K x C x 1 x 1"),
        (lambda: sb(feat=sf[:1].copy()), ValueError, "feat must have grad_out's batch size"),
        (lambda: sb(scale="1"), TypeError, "scale"),
        (lambda: sb(scale=float("nan")), ValueError, "scale"),
        (lambda: sb(grad_out=f64(sg)), TypeError, "grad_out must be float32"),
        (lambda: ce(labels=labels.astype(np.int64)), TypeError, "labels must be int32"),
        (lambda: ce(labels=labels[:, :2].copy()), ValueError, "labels must be N x H x W"),
        (lambda: ce(labels=bad_label(4)), ValueError, "labels must lie in"),
        (lambda: ce(labels=bad_label(-1)), ValueError, "labels must lie in"),
        (lambda: ce(labels=bad_label(256)), ValueError, "labels must lie in"),
        (lambda: ce(labels=bad_label(255), ignore_index=-1), ValueError, "labels must lie in"),
        (lambda: ce(scores=scores[0]), ValueError, "scores must be 4-D"),
        (lambda: ce(ignore_index=2.0), TypeError, "ignore_index"),
        (lambda: ce(normalize=1), TypeError, "normalize"),
        (lambda: do(p=1.0), ValueError, "p must be in"),
        (lambda: do(p=-0.1), ValueError, "p must be in"),
        (lambda: do(p="0.5"), TypeError, "p must be a real"),
        (lambda: do(seed=-1), ValueError, "seed"),
        (lambda: do(seed=2**32), ValueError, "seed"),
        (lambda: do(step=2**32), ValueError, "step"),
        (lambda: do(step=1.5), TypeError, "step"),
        (lambda: do(x=f64(x)), TypeError, "x must be float32"),
        (lambda: ops.dropout_backward(x[:, :, ::2], 0.5, 1, 2), ValueError, "grad_y must be C-contiguous"),
        (lambda: ops.philox4x32_10(*dev(be, np.zeros((2, 3), np.uint32), np.zeros((2, 2), np.uint32))),
         ValueError, "counters must be n x 4"),
        (lambda: ops.philox4x32_10(*dev(be, np.zeros((2, 4), np.int32), np.zeros((2, 2), np.uint32))),
         TypeError, "counters must be uint32"),
        (lambda: sgd(g=sgr[:1].copy()), ValueError, "g and v must have w's shape"),
        (lambda: sgd(v=sv[:1].copy()), ValueError, "g and v must have w's shape"),
        (lambda: sgd(w=[1.0]), TypeError, "w is updated in place"),
        (lambda: sgd(v=f64(sv)), TypeError, "v must be float32"),
        (lambda: sgd(lr="0.1"), TypeError, "lr"),
        (lambda: sgd(momentum=float("inf")), ValueError, "momentum"),
        (lambda: sgd(w=sv), ValueError, "must not overlap"),
        (lambda: ops.relu_backward(gy, gy[:1].copy()), ValueError, "y must have grad_y's shape"),
        (lambda: ops.relu_backward(f64(gy), gy), TypeError, "grad_y must be float32"),
    ]


def test_bad_input(be, rng):
    bases, cases = bad_cases(be, rng)
    for base in bases:  # each bad case below changes one argument of a call that works
        base()
    for i, (call, error, match) in enumerate(cases):
        with pytest.raises(error, match=match):
            call()
            pytest.fail(f"bad case {i} ({match!r}) did not raise")


def test_other_backend_refused(be, rng):
    """Arrays of the other backend are refused: a torch CPU tensor on 'cuda',
    an object in GPU memory (__cuda_array_interface__) on 'host'."""
    if be.name == "cuda":
        x = torch.from_numpy(randn(rng, 2, 3, 4, 4))
    else:
        class OnGpu:
            __cuda_array_interface__ = {"shape": (2, 3, 4, 4), "typestr": "<f4", "data": (0, False), "version": 3}
        x = OnGpu()
    with pytest.raises(TypeError, match="x"):
        ops.dropout(x, 0.5, 1, 2)
    with pytest.raises(TypeError, match="scores"):
        ops.softmax_cross_entropy(x, np.zeros((2, 4, 4), np.int32))
    with pytest.raises(TypeError, match="grad_y"):
        ops.max_pool2d_backward(x, np.zeros((2, 3, 2, 2), np.int32), (2, 3, 4, 4))
