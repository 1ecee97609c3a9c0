"""The dense CRF's own exp and log (csrc/kernels/crf.cuh, crf_exp and
crf_log): the correctly rounded float of the exact value (float64, rounded
once) on every input here, over the ranges the CRF uses and beyond, their
ends and fixed points, and the same bits on the GPU as in the emulator (the
reason they exist: CUDA's expf/logf and glibc's round differently)."""

import numpy as np
import pytest

from fcn_cuda import _backend
from fcn_cuda.ops import probes

from _util import to_numpy

pytestmark = pytest.mark.kernels


def assert_correctly_rounded(y, x, fn):
    exact = fn(x.astype(np.float64))
    with np.errstate(over="ignore"):
        rounded = exact.astype(np.float32)
    wrong = np.flatnonzero(y.view(np.uint32) != rounded.view(np.uint32))
    assert wrong.size == 0, f"{wrong.size} results not correctly rounded, e.g. at x = {x[wrong[:3]]}"


def floats_between(lo, hi):
    """Every float32 in [lo, hi] (0 < lo < hi), in order."""
    a, b = np.array([lo, hi], np.float32).view(np.int32)
    return np.arange(a, b + 1, dtype=np.int32).view(np.float32)


def exp_inputs():
    rng = np.random.default_rng(3)
    return np.concatenate([
        np.linspace(-104, 89, 200_001, dtype=np.float32),           # the whole range, subnormals and overflow included
        -floats_between(0.25, 0.5)[::97],                              # around -ln2 / 2, where the reduction turns
        rng.uniform(-30, 0, 50_000).astype(np.float32),                # a softmax's t - max, the Gaussians' -d2/2
        np.float32(np.log(2)) * np.arange(-149, 128, dtype=np.float32),  # near k ln2, where k changes
    ])


def log_inputs():
    rng = np.random.default_rng(4)
    return np.concatenate([
        floats_between(0.95, 1.05)[::17],                              # around 1, where log is small
        np.geomspace(1e-5, 1, 100_001).astype(np.float32),             # the CRF's clipped probabilities
        np.geomspace(np.finfo(np.float32).tiny, np.finfo(np.float32).max, 50_001).astype(np.float32),
        rng.uniform(0.5, 2, 50_000).astype(np.float32),                # around sqrt(2), where m is halved
    ])


def run(be, x, fn):
    return to_numpy(probes.crf_math(be.xp.asarray(x), fn))


# The sweeps are a few hundred thousand threads: left out of the ThreadSanitizer stage (model_scale),
# where the small test after them runs the same kernel.
@pytest.mark.model_scale
def test_exp_is_correctly_rounded(be):
    x = exp_inputs()
    assert_correctly_rounded(run(be, x, "exp"), x, np.exp)


@pytest.mark.model_scale
def test_log_is_correctly_rounded(be):
    x = log_inputs()
    assert_correctly_rounded(run(be, x, "log"), x, np.log)


def test_exact_points_and_the_ends_of_the_range(be):
    inf, nan = np.float32(np.inf), np.float32(np.nan)
    x = np.array([0.0, -0.0, 88.73, 89.0, inf, -104.5, -1e30, -inf, nan], np.float32)
    y = run(be, x, "exp")
    np.testing.assert_array_equal(y[:8], [1, 1, inf, inf, inf, 0, 0, 0])
    assert np.isnan(y[8])
    assert run(be, np.array([-103.9], np.float32), "exp")[0] == np.float32(2.0 ** -149)  # e^-103.9 rounds to it
    x = np.array([1.0, 2.0, 0.5, 2.0 ** -126, 2.0 ** 127], np.float32)
    np.testing.assert_array_equal(run(be, x, "log"), np.log(x.astype(np.float64)).astype(np.float32))
    assert run(be, x[:1], "log")[0] == 0.0


@pytest.mark.skipif(_backend.cuda_unavailable_reason() is not None,
                    reason=f"no GPU: {_backend.cuda_unavailable_reason()}")
@pytest.mark.parametrize("fn", ["exp", "log"])
def test_cuda_gives_the_emulators_bits(fn):
    x = exp_inputs() if fn == "exp" else log_inputs()
    on_gpu = run(_backend.by_name("cuda"), x, fn)
    on_host = run(_backend.by_name("host"), x, fn)
    assert np.array_equal(on_gpu.view(np.uint32), on_host.view(np.uint32))
