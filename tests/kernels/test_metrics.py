"""The confusion-matrix kernel and the reference's four scores."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fcn_cuda
from fcn_cuda import metrics

from _util import to_numpy

pytestmark = pytest.mark.kernels


def reference_hist(gt, pred, n):
    """The reference's fast_hist."""
    k = (gt >= 0) & (gt < n)
    return np.bincount(n * gt[k].astype(int) + pred[k], minlength=n**2).reshape(n, n)


def reference_scores(hist):
    """The reference's score formulas, verbatim in spirit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        acc = np.diag(hist).sum() / hist.sum()
        acc_cls = np.nanmean(np.diag(hist) / hist.sum(1))
        iu = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
        freq = hist.sum(1) / hist.sum()
        return acc, acc_cls, np.nanmean(iu), (freq[freq > 0] * iu[freq > 0]).sum()


@pytest.mark.parametrize("classes", [1, 2, 21, 64])
@pytest.mark.parametrize("shape", [(1,), (7, 5), (2, 37, 53), (3, 100, 101)])
def test_confusion_matrix(be, rng, classes, shape):
    gt = rng.integers(0, classes, size=shape).astype(np.int32)
    gt[rng.random(shape) < 0.1] = 255  # ignored pixels
    pred = rng.integers(0, classes, size=shape).astype(np.int32)
    hist = metrics.confusion_matrix(be.xp.asarray(gt), be.xp.asarray(pred), classes)
    np.testing.assert_array_equal(to_numpy(hist), reference_hist(gt.ravel(), pred.ravel(), classes))


def test_confusion_matrix_accumulates(be, rng):
    hist = None
    ref = np.zeros((5, 5), np.int64)
    for _ in range(3):
        gt = rng.integers(0, 5, size=(40, 30)).astype(np.int32)
        pred = rng.integers(0, 5, size=(40, 30)).astype(np.int32)
        hist = metrics.confusion_matrix(be.xp.asarray(gt), be.xp.asarray(pred), 5, hist)
        ref += reference_hist(gt.ravel(), pred.ravel(), 5)
    np.testing.assert_array_equal(to_numpy(hist), ref)


def test_scores_match_the_reference(rng):
    hist = rng.integers(0, 1000, size=(6, 6)).astype(np.uint64)
    hist[4, :] = 0  # a class absent from the ground truth: NaN accuracy, left out of the means
    got = metrics.scores(hist)
    ref = reference_scores(hist.astype(np.float64))
    assert np.allclose([got["pixel_acc"], got["mean_acc"], got["mean_iu"], got["fw_iu"]], ref, rtol=1e-12)
    perfect = metrics.scores(np.diag([5, 3, 0, 2]).astype(np.uint64))
    assert perfect == {"pixel_acc": 1.0, "mean_acc": 1.0, "mean_iu": 1.0, "fw_iu": 1.0}


@settings(max_examples=25, deadline=None, derandomize=True)
@given(classes=st.integers(1, 64), n=st.integers(1, 3000), seed=st.integers(0, 2**31))
def test_confusion_matrix_fuzz(classes, n, seed):
    fcn_cuda.use_backend("host")
    r = np.random.default_rng(seed)
    gt = r.integers(-3, classes + 3, size=n).astype(np.int32)
    pred = r.integers(0, classes, size=n).astype(np.int32)
    hist = metrics.confusion_matrix(gt, pred, classes)
    np.testing.assert_array_equal(hist, reference_hist(gt, pred, classes))


def test_bad_input():
    fcn_cuda.use_backend("host")
    a = np.zeros((4, 4), np.int32)
    with pytest.raises(TypeError, match="gt must be int32"):
        metrics.confusion_matrix(a.astype(np.int64), a, 3)
    with pytest.raises(ValueError, match="same shape"):
        metrics.confusion_matrix(a, a[:2], 3)
    with pytest.raises(ValueError, match="num_classes"):
        metrics.confusion_matrix(a, a, 65)
    with pytest.raises(ValueError, match="hist must be 3 x 3"):
        metrics.confusion_matrix(a, a, 3, np.zeros((2, 2), np.uint64))
    with pytest.raises(ValueError, match="empty"):
        metrics.confusion_matrix(a[:0], a[:0], 3)
