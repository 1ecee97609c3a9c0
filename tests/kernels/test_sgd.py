"""sgd_step (momentum SGD with weight decay, in place) against the update in
NumPy float64."""

import numpy as np
import pytest

from fcn_cuda import ops

from _util import assert_close, assert_each_raises, dev, randn, to_numpy

# The API allocates its outputs and workspaces: each is poisoned in every test (conftest.py).
pytestmark = pytest.mark.kernels


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


def test_bad_input(be, rng):
    x = be.xp.asarray(randn(rng, 2, 3, 7, 5))
    sv, sgr = be.xp.zeros_like(x), be.xp.zeros_like(x)
    sgd = lambda **kw: ops.sgd_step(**{"w": x.copy(), "g": sgr, "v": sv, "lr": 0.1, "momentum": 0.9,
                                       "weight_decay": 0.0, **kw})
    assert_each_raises((sgd,), [
        (lambda: sgd(g=sgr[:1].copy()), ValueError, "g and v must have w's shape"),
        (lambda: sgd(v=sv[:1].copy()), ValueError, "g and v must have w's shape"),
        (lambda: sgd(w=[1.0]), TypeError, "w is updated in place"),
        (lambda: sgd(v=sv.astype(np.float64)), TypeError, "v must be float32"),
        (lambda: sgd(lr="0.1"), TypeError, "lr"),
        (lambda: sgd(momentum=float("inf")), ValueError, "momentum"),
        (lambda: sgd(w=sv), ValueError, "must not overlap"),
    ])
