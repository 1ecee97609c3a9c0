"""The sanitizer builds of the emulator, for the tests that run a probe on one
(kernels/test_emulator.py) and the test of what .ci/run demands of them
(tooling/test_ci.py)."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

# Each probe runs in a fresh interpreter on a sanitizer build of the
# emulator, with the sanitizer's runtime preloaded into the real interpreter
# binary (sys.executable: never a pyenv shim, which is a shell script).
# .ci/run builds both and sets FCN_CUDA_REQUIRE_SANITIZER_BUILDS=1: there a
# missing build fails the test rather than skipping it.
SANITIZER_BUILDS = {
    "address": ("1", "_host_asan", "libasan.so libstdc++.so"),
    "thread": ("thread", "_host_tsan", "libtsan.so"),
}


def run_sanitized(sanitizer, code, timeout=600):
    switch, module, runtimes = SANITIZER_BUILDS[sanitizer]
    if importlib.util.find_spec(f"fcn_cuda.{module}") is None:
        how = f"FCN_CUDA_SANITIZE={switch} python setup.py build_ext --inplace"
        if os.environ.get("FCN_CUDA_REQUIRE_SANITIZER_BUILDS") == "1":
            pytest.fail(f"fcn_cuda.{module} is not built, and FCN_CUDA_REQUIRE_SANITIZER_BUILDS=1 requires it "
                        f"(build it: {how})")
        pytest.skip(f"fcn_cuda.{module} is not built ({how} builds it)")
    preload = " ".join(subprocess.run(["gcc", f"-print-file-name={lib}"], capture_output=True, text=True,
                                      check=True).stdout.strip() for lib in runtimes.split())
    env = {k: v for k, v in os.environ.items() if k not in ("FCN_CUDA_EMU_WORKERS", "LD_PRELOAD")}
    env.update(FCN_CUDA_BACKEND="host", FCN_CUDA_SANITIZE=switch, LD_PRELOAD=preload,
               ASAN_OPTIONS="detect_leaks=0", TSAN_OPTIONS="halt_on_error=1 exitcode=66", OMP_NUM_THREADS="1")
    code = f"from fcn_cuda import _backend\nassert _backend.active().ext.SANITIZE == {sanitizer!r}\n" + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
