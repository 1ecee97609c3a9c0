"""ops.max_pool2d against torch.nn.functional.max_pool2d (float64 on the CPU)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st

from fcn_cuda import ops

from _util import assert_close, to_numpy

pytestmark = pytest.mark.kernels


def reference(x, k, s, ceil_mode):
    return F.max_pool2d(torch.from_numpy(to_numpy(x)).double(), k, s, padding=0, ceil_mode=ceil_mode, return_indices=True)


def check(x, k=2, s=2, ceil_mode=True):
    y, idx = ops.max_pool2d(x, k, s, ceil_mode=ceil_mode, return_indices=True)
    ref, ref_idx = reference(x, k, s, ceil_mode)
    assert_close(y, ref)
    assert to_numpy(idx).dtype == np.int32
    np.testing.assert_array_equal(to_numpy(idx), ref_idx.numpy())
    # without indices: the same values
    np.testing.assert_array_equal(to_numpy(ops.max_pool2d(x, k, s, ceil_mode=ceil_mode)), to_numpy(y))


# FCN's pool layers at small sizes (odd sizes exercise the ceil-mode edge window), 1x1 images,
# other kernels / strides, overlapping windows, pairs.
SHAPES = [(2, 3, 7, 9), (1, 64, 5, 4), (2, 21, 1, 1), (1, 1, 2, 3), (2, 1, 13, 11)]
CONFIGS = [(2, 2), (3, 2), (3, 3), (1, 1), ((2, 3), (1, 2)), (4, 3)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("ceil_mode", [True, False], ids=["ceil", "floor"])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_matches_torch(be, rng, shape, ceil_mode, config):
    k, s = config
    x = be.xp.asarray(rng.standard_normal(shape).astype(np.float32))  # on the backend, for the errors too
    kh, kw = (k, k) if isinstance(k, int) else k
    if not ceil_mode and (shape[2] < kh or shape[3] < kw):
        with pytest.raises(ValueError, match="kernel_size"):
            ops.max_pool2d(x, k, s, ceil_mode=False)
        return
    if ceil_mode and (shape[2] < kh - (s if isinstance(s, int) else s[0]) + 1 or
                      shape[3] < kw - (s if isinstance(s, int) else s[1]) + 1):
        with pytest.raises(ValueError, match="kernel_size"):
            ops.max_pool2d(x, k, s)
        return
    check(x, k, s, ceil_mode)


# Ceil mode's last window (size, kernel, stride, output size worked out by hand): ceil((size - k) / s) + 1
# windows, less one where the last would start at or past the end of the input (padding 0).
CEIL_LAST_WINDOW = [
    (5, 1, 3, 2),  # 3 windows by the ceil formula, the third would start at 6 >= 5
    (7, 2, 4, 2),  # the third would start at 8 >= 7
    (9, 3, 5, 2),  # the third would start at 10 >= 9
    (7, 2, 2, 4),  # the fourth starts at 6 < 7 and hangs over the edge: kept
    (2, 3, 2, 1),  # one window larger than the input, starting at 0: kept
]


@pytest.mark.parametrize("size,k,s,out", CEIL_LAST_WINDOW, ids=[f"size{c[0]}-k{c[1]}-s{c[2]}" for c in CEIL_LAST_WINDOW])
def test_ceil_mode_last_window_starts_inside_the_input(be, rng, size, k, s, out):
    for shape, kernel, stride, expected in [((2, 3, size, 6), (k, 2), (s, 2), (out, 3)),
                                            ((2, 3, 6, size), (2, k), (2, s), (3, out))]:
        x = be.xp.asarray(rng.standard_normal(shape).astype(np.float32))
        assert ops.max_pool2d(x, kernel, stride).shape[2:] == expected
        check(x, kernel, stride, ceil_mode=True)


def test_fcn_pool_shapes(be, rng):
    """FCN at a 500x500 input: pool1 698 -> 349, pool2 -> 175, pool3 -> 88 (ceil mode);
    here on the same parities with few channels."""
    for h, ho in [(698, 349), (349, 175), (175, 88)]:
        x = be.xp.asarray(rng.standard_normal((1, 1, h, 3)).astype(np.float32))
        assert ops.max_pool2d(x).shape == (1, 1, ho, 2)


def test_default_stride_none_is_kernel(be, rng):
    x = rng.standard_normal((2, 3, 7, 8)).astype(np.float32)
    y = ops.max_pool2d(be.xp.asarray(x), 3, None)
    assert_close(y, F.max_pool2d(torch.from_numpy(x).double(), 3, ceil_mode=True))


def test_ties_pick_first_in_scan_order(be):
    x = np.zeros((1, 2, 4, 4), np.float32)
    x[0, 1, 1, 1] = x[0, 1, 1, 0] = 5.0  # two maxima in one window: the earlier wins
    y, idx = ops.max_pool2d(be.xp.asarray(x), return_indices=True)
    _, ref_idx = reference(x, 2, 2, True)
    np.testing.assert_array_equal(to_numpy(idx), ref_idx.numpy())
    assert to_numpy(idx)[0, 1, 0, 0] == 4


def test_nan_and_inf_like_torch(be):
    x = np.array([[[[1.0, np.nan, 2.0, -np.inf], [np.nan, 3.0, -np.inf, -np.inf], [np.inf, 1.0, 0.0, 0.0]]]],
                 np.float32)
    y, idx = ops.max_pool2d(be.xp.asarray(x), return_indices=True)
    ref, ref_idx = reference(x, 2, 2, True)
    np.testing.assert_array_equal(to_numpy(y), ref.numpy().astype(np.float32))
    np.testing.assert_array_equal(to_numpy(idx), ref_idx.numpy())


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 2), c=st.integers(1, 4), h=st.integers(1, 12), w=st.integers(1, 12),
       k=st.integers(1, 5), s=st.integers(1, 4), ceil_mode=st.booleans(), seed=st.integers(0, 2**16))
def test_fuzz(be, n, c, h, w, k, s, ceil_mode, seed):
    x = be.xp.asarray(np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(np.float32))
    try:
        ref, ref_idx = reference(x, k, s, ceil_mode)
    except RuntimeError:  # torch: output size too small
        with pytest.raises(ValueError, match="kernel_size"):
            ops.max_pool2d(x, k, s, ceil_mode=ceil_mode)
        return
    y, idx = ops.max_pool2d(x, k, s, ceil_mode=ceil_mode, return_indices=True)
    assert_close(y, ref)
    np.testing.assert_array_equal(to_numpy(idx), ref_idx.numpy())


def test_bad_inputs(be):
    xp = be.xp
    x = xp.zeros((1, 2, 4, 4), np.float32)
    with pytest.raises(TypeError, match="x must be float32"):
        ops.max_pool2d(x.astype(np.float64))
    with pytest.raises(ValueError, match="x must be 4-D"):
        ops.max_pool2d(xp.zeros((2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        ops.max_pool2d(xp.zeros((1, 2, 4, 8), np.float32)[..., ::2])
    with pytest.raises(ValueError, match="x is empty"):
        ops.max_pool2d(xp.zeros((0, 2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="kernel_size"):
        ops.max_pool2d(x, 0)
    with pytest.raises(ValueError, match="kernel_size"):
        ops.max_pool2d(x, (2, 3, 4))
    with pytest.raises(TypeError, match="kernel_size"):
        ops.max_pool2d(x, 2.0)
    with pytest.raises(ValueError, match="stride"):
        ops.max_pool2d(x, 2, 0)
    with pytest.raises(ValueError, match="stride"):
        ops.max_pool2d(x, 2, (1, -1))
    with pytest.raises(ValueError, match="kernel_size"):
        ops.max_pool2d(x, 7, ceil_mode=True)  # larger than the input even in ceil mode
    with pytest.raises(TypeError, match="ceil_mode"):
        ops.max_pool2d(x, ceil_mode=1)
    with pytest.raises(TypeError, match="return_indices"):
        ops.max_pool2d(x, return_indices="yes")


class FakeGpuArray:
    """Looks like a device array (CUDA array interface) without needing a GPU."""
    __cuda_array_interface__ = {"shape": (1, 1, 2, 2), "typestr": "<f4", "data": (0, False), "version": 3}


def test_other_backend_array_is_refused(be):
    if be.name == "host":
        with pytest.raises(TypeError, match="x: got an array in GPU memory"):
            ops.max_pool2d(FakeGpuArray())
    else:
        with pytest.raises(TypeError, match="x: got an array in host memory"):
            ops.max_pool2d(np.zeros((1, 1, 2, 2), np.float32))
