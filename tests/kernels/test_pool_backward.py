"""max_pool2d_backward against torch autograd in float64 (ties included)."""

import numpy as np
import pytest
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st

from fcn_cuda import ops

from _util import assert_close, assert_each_raises, dev, foreign_array, randn, t64

# The API allocates its outputs and workspaces: each is poisoned in every test (conftest.py).
pytestmark = pytest.mark.kernels


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


def test_bad_input(be, rng):
    x = be.xp.asarray(randn(rng, 2, 3, 7, 5))
    py, pidx = ops.max_pool2d(x, 2, 2, return_indices=True)  # 2 x 3 x 4 x 3
    pb = lambda **kw: ops.max_pool2d_backward(**{"grad_y": py, "indices": pidx, "x_shape": (2, 3, 7, 5), **kw})
    assert_each_raises((pb,), [
        (lambda: pb(indices=pidx.astype(np.int64)), TypeError, "indices must be int32"),
        (lambda: pb(indices=pidx[:, :2].copy()), ValueError, "indices must have grad_y's shape"),
        (lambda: pb(x_shape=(2, 3, 9, 5)), ValueError, "grad_y is"),
        (lambda: pb(x_shape=(2, 4, 7, 5)), ValueError, "grad_y is"),
        (lambda: pb(kernel_size=0), ValueError, "kernel_size"),
        (lambda: pb(stride=(2, 0)), ValueError, "stride"),
        (lambda: pb(grad_y=py.astype(np.float64)), TypeError, "grad_y must be float32"),
    ])


def test_other_backend_refused(be, rng):
    with pytest.raises(TypeError, match="grad_y"):
        ops.max_pool2d_backward(foreign_array(be, rng, (2, 3, 4, 4)), np.zeros((2, 3, 2, 2), np.int32), (2, 3, 4, 4))
