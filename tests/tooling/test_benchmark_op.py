"""python -m benchmarks.op, the one-op runner: each variant checked against
PyTorch in float64 and timed beside the others, on the host (where it says
its times are the emulator's CPU time)."""

import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")

import fcn_cuda  # noqa: E402
from fcn_cuda import _backend  # noqa: E402
from benchmarks import op  # noqa: E402

from _util import ROOT  # noqa: E402


@pytest.mark.parametrize("name,shape,variants", [("max_pool2d", "1,3,9,9", ["max_pool2d"]),
                                                  ("softmax_argmax", "1,5,8,8", ["scalar", "float4"])])
def test_runs_each_variant_checked_and_timed(name, shape, variants):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.op", name, "--shape", shape, "--repeats", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "emulator's CPU time, not GPU time" in out.splitlines()[0]
    for v in variants:  # each variant: its check against float64 and its median time
        line = next(line for line in out.splitlines() if line.startswith("  ") and line.split()[0] == v)
        assert re.search(r"\bok\s+\d+\.\d+ ms", line) and "tolerance 1e-05" in line, line
    assert re.search(r"torch-cpu \(fp32\)\s+ref\s+\d+\.\d+ ms", out)
    assert out.splitlines()[-1] == "every check passed"


def test_a_wrong_result_fails_its_check_and_the_run(monkeypatch, capsys):
    real = fcn_cuda.ops.max_pool2d
    monkeypatch.setattr(fcn_cuda.ops, "max_pool2d", lambda *a, **k: real(*a, **k) + np.float32(1e-3))
    assert op.main(["max_pool2d", "--shape", "1,2,6,6", "--repeats", "1", "--backend", "host"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"max_pool2d\s+FAIL .*rel_l2 [0-9.e+-]+ \(tolerance 1e-05\)", out)
    assert out.splitlines()[-1] == "1 check(s) failed"


def test_labels_are_checked_exactly_where_the_reference_is_sure():
    ref = np.array([0, 1, -1, 2])  # -1: a near-tie in float64, either label is right
    assert op.check(np.array([0, 1, 2, 2], np.int32), ref, 1e-5)[0]
    ok, text = op.check(np.array([0, 2, 1, 2], np.int32), ref, 1e-5)
    assert not ok and text.startswith("labels 1 of 3 differ")
    assert not op.check(np.ones(3, np.float32), np.ones(3) * 1.001, 1e-5)[0]


@pytest.mark.parametrize("argv,message", [(["conv2d", "--shape", "1,2,3"], "conv2d takes 8 numbers"),
                                          (["conv2d", "--shape", "1,a,3"], "comma-separated integers"),
                                          (["max_pool2d", "--shape", "0,2,6,6"], "N must be at least 1"),
                                          (["max_pool2d", "--sweep"], "max_pool2d has no sweep"),
                                          (["--repeats", "1"], "name an op")])
def test_bad_arguments_are_refused(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        op.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_an_unknown_variant_is_refused_with_the_ones_there_are():
    with pytest.raises(SystemExit, match="max_pool2d at 1x2x6x6 has no variant fast .it has: max_pool2d."):
        op.main(["max_pool2d", "--shape", "1,2,6,6", "--variant", "fast", "--backend", "host"])


@pytest.mark.gpu
@pytest.mark.skipif(_backend.cuda_unavailable_reason() is not None,
                    reason=f"no GPU: {_backend.cuda_unavailable_reason()}")
def test_on_a_gpu_every_conv2d_variant_passes_and_is_timed_with_cuda_events():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.op", "conv2d", "--shape", "2,16,20,20,32,3,3,1",
                           "--backend", "cuda", "--repeats", "20"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CUDA events" in proc.stdout.splitlines()[0]
    for v in fcn_cuda.ops.conv2d_variants((32, 16, 3, 3)):
        assert re.search(rf"^  {v}\s+ok\s+\d+\.\d+ ms", proc.stdout, re.M), proc.stdout
    assert re.search(r"cudnn-fp32 \(fp32\)\s+ref", proc.stdout) and proc.stdout.splitlines()[-1] == "every check passed"
