"""FCN_CUDA_SYNC_LAUNCHES=1: every launch waits for its kernel, so a fault
is raised by the launch that caused it, naming the kernel, its grid and its
block (csrc/kernels/common.cuh, fcn::launch).

The setting is read once per process, so each case runs in a subprocess; a
device fault also leaves the CUDA context unusable, another reason to keep
it out of the test process. On the host the emulator runs every grid to
completion anyway: there the variable is validated and the emulator's own
message (kernel and failing block) stands.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from fcn_cuda import _backend

from _util import ROOT

pytestmark = pytest.mark.kernels


def _run(backend, code, sync):
    env = dict(os.environ, FCN_CUDA_BACKEND=backend)
    env.pop("FCN_CUDA_SYNC_LAUNCHES", None)
    if sync is not None:
        env["FCN_CUDA_SYNC_LAUNCHES"] = sync
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)


def test_host_reads_and_validates_the_setting():
    proc = _run("host", """
        import os
        import numpy as np
        from fcn_cuda import _backend
        from fcn_cuda.ops import probes
        ext = _backend.active().ext
        try:  # refused at every launch while the value is wrong
            probes.barrier_rotate(np.arange(32, dtype=np.float32), 1)
        except RuntimeError as e:
            print("refused:", e)
        os.environ["FCN_CUDA_SYNC_LAUNCHES"] = "1"
        print("sync:", ext.sync_launches())
        print("rotate:", probes.barrier_rotate(np.arange(4, dtype=np.float32), 1).tolist())
        try:
            probes.out_of_bounds("misaligned_float4")
        except RuntimeError as e:
            print("fault:", e)
    """, sync="yes")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "refused: FCN_CUDA_SYNC_LAUNCHES must be 0 or 1, got 'yes'"
    assert lines[1:3] == ["sync: True", "rotate: [1.0, 2.0, 3.0, 0.0]"]
    assert lines[3].startswith("fault: kernel out_of_bounds_probe, block (0,0,0): thread (0,0,0): misaligned address")


@pytest.mark.parametrize("value, on", [(None, False), ("0", False), ("", False)])
def test_host_setting_off(value, on):
    proc = _run("host", "from fcn_cuda import _backend; print(_backend.active().ext.sync_launches())", value)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(on)


@pytest.mark.skipif(_backend.cuda_unavailable_reason() is not None,
                    reason=f"no GPU: {_backend.cuda_unavailable_reason()}")
def test_cuda_fault_is_raised_by_its_own_launch():
    """A misaligned float4 load faults on the GPU (cudaErrorMisalignedAddress).
    With the setting on, the probe's own launch raises, naming it; the call
    after it is never reached."""
    proc = _run("cuda", """
        from fcn_cuda import _backend
        from fcn_cuda.ops import probes
        assert _backend.active().name == "cuda" and _backend.active().ext.sync_launches()
        try:
            probes.out_of_bounds("misaligned_float4")
        except RuntimeError as e:
            print("fault:", e)
        else:
            print("no fault at the launch")
    """, sync="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ("fault: kernel out_of_bounds_probe (grid 1x1x1, block 64x1x1): "
                                   "misaligned address")
