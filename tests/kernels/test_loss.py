"""softmax_cross_entropy (the loss and its gradient) against torch in float64:
ignored pixels, class weights, a batch cut into data-parallel shares. The
loss is a reduction: the same bits run to run and for any emulator worker
count."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fcn_cuda import ops

from _util import assert_close, assert_each_raises, assert_same_bits_for_any_worker_count, dev, foreign_array, randn, same_bits, t64, to_numpy

# The API allocates its outputs and workspaces: each is poisoned in every test (conftest.py).
pytestmark = pytest.mark.kernels


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
    assert_same_bits_for_any_worker_count(be, lambda: ops.softmax_cross_entropy(xd, ld))


def test_bad_input(be, rng):
    scores, labels = dev(be, randn(rng, 2, 4, 3, 5), np.zeros((2, 3, 5), np.int32))
    ce = lambda **kw: ops.softmax_cross_entropy(**{"scores": scores, "labels": labels, **kw})
    bad_label = lambda v: be.xp.asarray(np.where(np.arange(30).reshape(2, 3, 5) == 7, v, 0).astype(np.int32))
    assert_each_raises((ce,), [
        (lambda: ce(labels=labels.astype(np.int64)), TypeError, "labels must be int32"),
        (lambda: ce(labels=labels[:, :2].copy()), ValueError, "labels must be N x H x W"),
        (lambda: ce(labels=bad_label(4)), ValueError, "labels must lie in"),
        (lambda: ce(labels=bad_label(-1)), ValueError, "labels must lie in"),
        (lambda: ce(labels=bad_label(256)), ValueError, "labels must lie in"),
        (lambda: ce(labels=bad_label(255), ignore_index=-1), ValueError, "labels must lie in"),
        (lambda: ce(scores=scores[0]), ValueError, "scores must be 4-D"),
        (lambda: ce(ignore_index=2.0), TypeError, "ignore_index"),
        (lambda: ce(normalize=1), TypeError, "normalize"),
    ])


def test_other_backend_refused(be, rng):
    with pytest.raises(TypeError, match="scores"):
        ops.softmax_cross_entropy(foreign_array(be, rng, (2, 3, 4, 4)), np.zeros((2, 4, 4), np.int32))
