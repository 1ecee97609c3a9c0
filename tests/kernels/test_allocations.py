"""The test-mode poison (FCN_CUDA_POISON=1, set by conftest.py): every array
the API allocates through Backend.empty starts as NaN, or all bits set for
integers, so that an element a kernel never writes cannot pass a comparison."""

import numpy as np
import pytest

from fcn_cuda import _backend

pytestmark = pytest.mark.kernels


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.uint16, np.int32, np.uint32, np.uint64])
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 5, 2)])
def test_every_allocation_is_poisoned(be, dtype, shape):
    a = be.to_numpy(be.empty(shape, dtype))
    assert a.shape == shape and a.dtype == dtype
    if np.dtype(dtype).kind == "f":
        assert np.isnan(a).all()
    else:
        assert (a == np.iinfo(dtype).max).all() if np.dtype(dtype).kind == "u" else (a == -1).all()


@pytest.mark.parametrize("value, on", [("1", True), (" 1 ", True), ("0", False), ("", False)])
def test_the_switch_reads_the_environment(monkeypatch, value, on):
    monkeypatch.setenv("FCN_CUDA_POISON", value)
    assert _backend._poison_from_env() is on


@pytest.mark.parametrize("value", ["2", "yes", "true"])
def test_a_bad_switch_value_is_refused_by_name(monkeypatch, value):
    monkeypatch.setenv("FCN_CUDA_POISON", value)
    with pytest.raises(RuntimeError, match="FCN_CUDA_POISON must be 0 or 1"):
        _backend._poison_from_env()
