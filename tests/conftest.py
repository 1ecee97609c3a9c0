"""Shared fixtures: every kernel test runs on each backend present.

`be` is parametrized over 'host' (always) and 'cuda' (where a GPU and the
_cuda build are present; elsewhere those cases skip with the reason). A
test that switches the backend itself gets the previous one back after it.

Every array the API allocates (outputs and workspaces, through
Backend.empty) starts poisoned in every test, here and in the processes
tests start: FCN_CUDA_POISON=1 is set before fcn_cuda is imported, so an
element a kernel fails to write shows up as NaN (or all bits set in an
integer array) in what the test checks.

FCN_CUDA_NO_MEMORY_POOL=1 (set by .ci/gpu's compute-sanitizer stages) turns
CuPy's memory pool off: the pool cuts many arrays out of one cudaMalloc, so
memcheck would take an overrun into a neighbouring array for valid memory.
"""

import os

import numpy as np
import pytest

os.environ["FCN_CUDA_POISON"] = "1"  # read when fcn_cuda is imported, just below
import fcn_cuda
from fcn_cuda import _backend


def memory_pool_from_env():
    if os.environ.get("FCN_CUDA_NO_MEMORY_POOL") == "1":
        import cupy

        cupy.cuda.set_allocator(None)
        cupy.cuda.set_pinned_memory_allocator(None)


memory_pool_from_env()


def _backends():
    params = [pytest.param("host", id="host")]
    reason = _backend.cuda_unavailable_reason()
    params.append(pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(reason is not None, reason=f"no GPU: {reason}")))
    return params


@pytest.fixture(params=_backends())
def be(request):
    """The Backend object for one backend, made active for the test (_backend_put_back restores the one
    before)."""
    fcn_cuda.use_backend(request.param)
    return _backend.active()


@pytest.fixture(autouse=True)
def _backend_put_back():
    """The backend active before each test is active after it, and the
    emulator's worker count: a switch never leaks into later tests (on a GPU
    machine they would run on the host, or the reverse, depending on test
    order; after set_emulator_workers(1) they would never meet the
    multi-worker orderings)."""
    previous, workers = fcn_cuda.backend(), fcn_cuda.emulator_workers()
    yield
    fcn_cuda.use_backend(previous)
    if fcn_cuda.emulator_workers() != workers:
        fcn_cuda.set_emulator_workers(workers)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def counting():
    """The host emulator with the bank-conflict counter on and zeroed, off
    and zeroed again after the test (fcn_cuda.emulator_counters reads it)."""
    fcn_cuda.use_backend("host")
    fcn_cuda.reset_emulator_counters()
    fcn_cuda.count_bank_conflicts(True)
    yield
    fcn_cuda.count_bank_conflicts(False)
    fcn_cuda.reset_emulator_counters()
