"""`bash .ci/gpu all`, rehearsed on this machine (FCN_CUDA_GPU_REHEARSAL=1):
every stage runs under its own budget, the summary has a row per stage, at
most 8 files come back two folders down, and a stage that overruns its
budget is stopped, recorded as a timeout, and the next stage still runs."""

import os
import re
import subprocess
import sys
import tarfile

from _util import ROOT


def gpu(*args, out, **env):
    full = dict(os.environ, PYTHON=sys.executable, OUT=str(out), FCN_CUDA_GPU_REHEARSAL="1", **env)
    for key in ("FCN_CUDA_GPU_BUDGETS", "FCN_CUDA_GPU_STAGES", "FCN_CUDA_GPU_STALL", "FCN_CUDA_BACKEND"):
        if key not in env:
            full.pop(key, None)
    return subprocess.run(["bash", ".ci/gpu", *args], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=600)


def summary_rows(out):
    rows = {}
    for line in (out / "summary.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and re.fullmatch(r"[a-z][a-z-]*", cells[0]) and cells[0] != "stage":
            rows[cells[0]] = cells
    return rows


def test_the_plan_fits_one_command(tmp_path):
    proc = gpu("plan", out=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    budgets = dict(re.findall(r"^(\S+)\s+(\d+) s", proc.stdout, re.M))
    total = budgets.pop("total")
    assert list(budgets) == ["preflight", "install", "smoke", "gpu-tests", "cross", "memcheck", "racecheck", "bench"]
    assert sum(map(int, budgets.values())) == int(total) <= 540
    assert gpu("plan", out=tmp_path, FCN_CUDA_GPU_BUDGETS="bench=200").returncode == 1  # 670 s: refused


def test_the_rehearsal_runs_every_stage(tmp_path):
    proc = gpu("all", out=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rows = summary_rows(tmp_path)
    assert list(rows) == ["preflight", "install", "smoke", "gpu-tests", "cross", "memcheck", "racecheck", "bench"]
    for name, (_, budget, wall, status, counts, first) in rows.items():
        if name in ("memcheck", "racecheck"):
            assert status == "skipped" and "no compute-sanitizer" in first, name
        else:
            assert status == "passed" and float(wall) < float(budget), name
    for name in ("gpu-tests", "cross"):
        passed, failed, skipped = map(int, rows[name][4].split(" / "))
        assert passed > 0 and failed == 0, name
    text = (tmp_path / "summary.md").read_text()
    assert "REHEARSAL" in text and re.search(r"\| 1x48x48/forward/fcn_cuda/torch-cpu \| [\d.]+ \| [\d.]+ \|", text)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(p.relative_to(tmp_path).parts) <= 3 for p in files)
    with tarfile.open(tmp_path / "logs.tar.gz") as tar:
        names = tar.getnames()
    assert "logs/smoke.log" in names and any(n.startswith("logs/gpu-tests/") and n.endswith(".xml") for n in names)


def test_a_stage_past_its_budget_is_stopped_and_the_next_one_runs(tmp_path):
    proc = gpu("all", out=tmp_path, FCN_CUDA_GPU_STAGES="preflight,smoke", FCN_CUDA_GPU_STALL="preflight",
               FCN_CUDA_GPU_BUDGETS="preflight=2")
    assert proc.returncode == 1
    rows = summary_rows(tmp_path)
    assert list(rows) == ["preflight", "smoke"]
    assert rows["preflight"][3] == "timeout" and 2 <= float(rows["preflight"][2]) < 10
    assert "stopped at its budget of 2 s" in rows["preflight"][5]
    assert rows["smoke"][3] == "passed"
