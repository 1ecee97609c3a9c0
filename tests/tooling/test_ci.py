"""What the CI scripts promise: .ci/gpu's compute-sanitizer stages run with
CuPy's memory pool off, .ci/run's TSan stage fails on a report, and .ci/run
(not any CI=true) makes the sanitizer tests fail where a build is missing."""

import importlib.util
import re
import sys
import types

import pytest

import _sanitizers
import conftest
from _util import ROOT

CI = ROOT / ".ci"


def _gpu_all():
    spec = importlib.util.spec_from_file_location("gpu_all", CI / "gpu_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compute_sanitizer_stages_turn_the_memory_pool_off():
    stages = [s for s in _gpu_all().stages(ROOT / "gpu-out") if "compute-sanitizer" in s.gpu]
    assert sorted(s.name for s in stages) == ["memcheck", "racecheck"]
    for s in stages:
        assert s.gpu[:3] == ["env", "FCN_CUDA_NO_MEMORY_POOL=1", "compute-sanitizer"], s.name
        assert s.rehearsal is None  # a machine without a GPU has no compute-sanitizer: the stage says skipped


def test_the_switch_turns_cupys_pools_off(monkeypatch):
    calls = []
    cuda = types.SimpleNamespace(set_allocator=lambda a: calls.append(("device", a)),
                                 set_pinned_memory_allocator=lambda a: calls.append(("pinned", a)))
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=cuda))
    monkeypatch.delenv("FCN_CUDA_NO_MEMORY_POOL", raising=False)
    conftest.memory_pool_from_env()
    assert calls == []
    monkeypatch.setenv("FCN_CUDA_NO_MEMORY_POOL", "1")
    conftest.memory_pool_from_env()
    assert calls == [("device", None), ("pinned", None)]


def test_the_tsan_stage_stops_at_the_first_report():
    script = (CI / "run").read_text()
    stage = script[script.index('stage "kernel tests under the ThreadSanitizer build'):]
    assert 'TSAN_OPTIONS="halt_on_error=1 exitcode=66"' in stage and "libtsan.so" in stage
    assert '-m "kernels and not model_scale"' in stage
    assert "set -euo pipefail" in script  # a non-zero pytest (66 on a report) fails the script


def test_ci_run_requires_the_sanitizer_builds_and_the_test_extras_by_its_own_variables():
    script = (CI / "run").read_text()
    exports = re.findall(r"^export (.*)$", script, re.M)
    assert "FCN_CUDA_REQUIRE_SANITIZER_BUILDS=1 FCN_CUDA_REQUIRE_TEST_EXTRAS=1" in exports
    code = "\n".join(line.split("#", 1)[0] for line in script.splitlines())
    assert not re.search(r"\bCI=", code)  # a user's CI sets CI=true; it must not change what the tests demand


@pytest.mark.parametrize("env,outcome", [({}, "skip"), ({"CI": "true"}, "skip"),
                                         ({"FCN_CUDA_REQUIRE_SANITIZER_BUILDS": "1"}, "fail")])
def test_a_missing_sanitizer_build_fails_only_where_required(monkeypatch, env, outcome):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("FCN_CUDA_REQUIRE_SANITIZER_BUILDS", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(_sanitizers.SANITIZER_BUILDS, "thread", ("thread", "_host_never_built", "libtsan.so"))
    expected = pytest.fail.Exception if outcome == "fail" else pytest.skip.Exception
    with pytest.raises(expected, match="fcn_cuda._host_never_built is not built"):
        _sanitizers.run_sanitized("thread", "pass")
