"""Shared fixtures: every kernel test runs on each backend present.

`be` is parametrized over 'host' (always) and 'cuda' (where a GPU and the
_cuda build are present; elsewhere those cases skip with the reason).
"""

import numpy as np
import pytest

import fcn_cuda
from fcn_cuda import _backend


def _backends():
    params = [pytest.param("host", id="host")]
    reason = _backend.cuda_unavailable_reason()
    params.append(pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(reason is not None, reason=f"no GPU: {reason}")))
    return params


@pytest.fixture(params=_backends())
def be(request):
    """The Backend object for one backend, made active for the test."""
    previous = fcn_cuda.backend()
    fcn_cuda.use_backend(request.param)
    yield _backend.active()
    fcn_cuda.use_backend(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
