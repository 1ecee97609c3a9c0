"""The benchmark suite (benchmarks/): a smoke run of `python -m benchmarks`
on the host backend, the result files' schema, the generator of
docs/performance.md's tables and the README's GPU line,
the timers, and pytest-benchmark timings of a few suite rows.

Not marked `kernels`: these test the measuring, not the kernels. The GPU
paths (CUDA events, cuDNN flags, torch.compile) only run on a GPU machine.
"""

import importlib.util
import json
import math
import shutil
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fcn_cuda  # noqa: E402
from benchmarks import __main__ as bench_main  # noqa: E402
from benchmarks import context, report, suite, timing  # noqa: E402
from benchmarks.cases import dispatch, model as model_cases, upsample  # noqa: E402

from _util import FP32, HALF, ROOT, TF32  # noqa: E402

# Each conv2d variant is held to its precision's tolerance.
TOLERANCE = {"fp32": FP32, "tf32": TF32, "bf16": HALF}
SMOKE_ONLY = ["1x48x48/conv1_1/", "1x48x48/pool1/", "1x48x48/upscore8/", "1x48x48/score_pool4/",
              "1x48x48/crop_add(score_pool4)", "1x48x48/softmax_argmax/", "1x48x48/preprocess/",
              "1x48x48/forward/", "2x32x32/infer/", "train_step", "1x48x48/conv2d(conv5_1)/"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One `python -m benchmarks --quick` run of a few rows, as a user runs it."""
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--backend", "host", "--out", str(out)]
    for s in SMOKE_ONLY:
        cmd += ["--only", s]
    # CPU seconds, not wall time: the budget is the run's own work, which a
    # machine busy with other jobs does not change (its wall time it does).
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (json_path,) = out.glob("*.json")
    return {"out": out, "stdout": proc.stdout, "json": json_path, "result": json.loads(json_path.read_text()),
            "cpu_s": cpu_s}


def test_smoke_run_writes_labeled_emulation_files(smoke):
    assert "HOST EMULATION" in smoke["stdout"]
    assert smoke["json"].name.startswith("host-emulation-quick-")
    md = smoke["json"].with_suffix(".md").read_text()
    assert "HOST EMULATION" in md
    assert "## Measured peaks (same run)" in md and "## End to end" in md and "## FCN-8s layers" in md
    result = smoke["result"]
    assert result["emulation"] is True and "emulation" in result["backend"] and "emulation" in result["device"]
    for row in result["rows"]:
        assert f"| {row['config']} | {row['layer']} | {row['ours']} | {row['ref']} |" in md
    assert smoke["cpu_s"] < 60
    pngs = [smoke["json"].with_name(f"{smoke['json'].stem}-{k}.png") for k in ("roofline", "ratios")]
    if importlib.util.find_spec("matplotlib"):
        assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    else:
        assert not any(p.exists() for p in pngs) and "matplotlib is not installed" in smoke["stdout"]


def test_smoke_json_schema(smoke):
    result = smoke["result"]
    for key in ("device", "date", "commit", "backend", "peaks", "rows"):
        assert key in result
    assert len(result["date"]) == 10 and smoke["json"].stem.endswith(result["date"].replace("-", ""))
    assert result["commit"] != "unknown"
    peaks = result["peaks"]
    assert peaks["copy_gbps"] > 0 and peaks["matmul_fp32_tflops"] > 0 and "CPU" in peaks["where"]
    rows = result["rows"]
    names = [r["name"] for r in rows]
    assert len(names) == len(set(names))
    for r in rows:
        for key in ("name", "kind", "ours_ms", "ref_ms", "ratio", "tflops", "gbps", "pct_of_peak", "err"):
            assert key in r, (key, r["name"])
        assert r["kind"] in suite.KINDS
        assert r["ours_ms"] > 0 and r["ref_ms"] > 0
        assert r["ratio"] == pytest.approx(r["ref_ms"] / r["ours_ms"], rel=1e-12)
        assert (r["tflops"] is not None) or (r["gbps"] is not None)
        assert r["pct_of_peak"] > 0
        assert any(s in r["name"] for s in SMOKE_ONLY)
        # both sides computed the same function on the same random inputs
        if "rel_l2" in r["err"]:
            assert r["err"]["rel_l2"] < TOLERANCE[fcn_cuda.ops.CONV2D_PRECISION.get(r["ours"], "fp32")], r["name"]
        if "label_mismatch" in r["err"]:
            assert r["err"]["label_mismatch"] < 1e-3, r["name"]
        assert "nonfinite" not in r["err"]
    kinds = {r["kind"] for r in rows}
    assert kinds == {"layer", "kernel", "end_to_end", "train_step", "dispatch"}
    dispatch = {r["layer"]: r for r in rows if r["kind"] == "dispatch"}
    assert set(dispatch) == {"conv2d(conv5_1)", "crop_add(score_pool4)"}
    assert dispatch["conv2d(conv5_1)"]["ours"] == "torch.ops.fcn_cuda" and dispatch["conv2d(conv5_1)"]["ref"] == "fcn_cuda.ops"
    for r in dispatch.values():
        assert r["err"]["rel_l2"] == 0.0  # the same kernels, called two ways
    layers = {(r["config"], r["layer"], r["ours"]) for r in rows}
    for v in fcn_cuda.ops.conv2d_variants((64, 3, 3, 3)):  # the wgmma variants join on an sm_90 GPU only
        assert ("1x48x48", "conv1_1", v) in layers
    for v in fcn_cuda.ops.CONV_TRANSPOSE2D_VARIANTS:
        assert ("1x48x48", "upscore8", v) in layers
    assert ("1x48x48", "score_pool4", "score_crop_add") in layers
    assert ("2x32x32", "infer", "fcn_cuda") in layers


def test_smoke_train_step_rows(smoke):
    result = smoke["result"]
    steps = [r for r in result["rows"] if r["kind"] == "train_step"]
    assert {r["config"] for r in steps} == {"1x48x48", "2x32x32"}
    for r in steps:
        assert r["ours"] == "fcn_cuda" and r["ratio"] == pytest.approx(r["ref_ms"] / r["ours_ms"])
        assert r["err"]["rel_l2"] < 1e-4  # the two steps compute the same loss
    compiled = {s["name"]: s["reason"] for s in result["skipped"] if "compile" in s["name"]}
    assert "--quick" in compiled["1x48x48/forward/fcn_cuda/torch-cpu-compile"]
    assert result["failed"] == []


def test_roofline_fraction_uses_the_measured_peaks(smoke):
    peaks = smoke["result"]["peaks"]
    for r in smoke["result"]["rows"]:
        floors = []
        if r["flops"]:
            floors.append(r["flops"] / (peaks["matmul_fp32_tflops"] * 1e12))
            assert r["tflops"] == pytest.approx(r["flops"] / (r["ours_ms"] * 1e-3) / 1e12)
        if r["bytes"]:
            floors.append(r["bytes"] / (peaks["copy_gbps"] * 1e9))
            assert r["gbps"] == pytest.approx(r["bytes"] / (r["ours_ms"] * 1e-3) / 1e9)
        assert r["pct_of_peak"] == pytest.approx(100 * max(floors) / (r["ours_ms"] * 1e-3))


def _copies(tmp_path):
    """Copies of docs/performance.md and README.md, mode 0o640, to regenerate in."""
    doc, readme = tmp_path / "performance.md", tmp_path / "README.md"
    shutil.copy(report.PERFORMANCE, doc)
    shutil.copy(report.README, readme)
    for p in (doc, readme):
        p.chmod(0o640)
    return doc, readme


def _between(text, begin, end):
    head, rest = text.split(begin)
    block, tail = rest.split(end)
    return head, block, tail


def test_tables_go_between_the_markers_of_the_performance_page(smoke, tmp_path):
    doc, readme = _copies(tmp_path)
    before_doc, before_readme = doc.read_text(), readme.read_text()
    args = ["--doc", str(doc), "--readme", str(readme), "--from", str(smoke["json"])]
    assert report.main(args) == 0
    after = doc.read_text()
    head, table, tail = _between(after, report.BEGIN, report.END)
    old_head, _, old_tail = _between(before_doc, report.BEGIN, report.END)
    assert head == old_head and tail == old_tail
    assert "HOST EMULATION" in table and smoke["json"].name in table
    assert "| input | op | ref | fcn_cuda ms |" in table and "| layer | kind | fcn_cuda variant |" in table
    for r in smoke["result"]["rows"]:
        if r["kind"] == "end_to_end":
            assert f"| {r['config']} | {r['layer']} | {r['ref']} |" in table
    assert "| conv1_1 | layer |" in table
    # an emulator result leaves the README with the line that says no GPU result exists, and no table
    head, line, tail = _between(readme.read_text(), report.GPU_BEGIN, report.GPU_END)
    old_head, _, old_tail = _between(before_readme, report.GPU_BEGIN, report.GPU_END)
    assert head == old_head and tail == old_tail
    assert line.strip() == report.NO_GPU_RESULT and "|" not in line
    for p in (doc, readme):
        assert p.stat().st_mode & 0o777 == 0o640  # the rewrite keeps the file's mode
    assert smoke["json"].stat().st_mode & 0o777 == 0o644
    # regenerating is idempotent
    report.main(args)
    assert doc.read_text() == after


def test_the_readme_shows_a_gpu_results_end_to_end_table(smoke, tmp_path):
    doc, readme = _copies(tmp_path)
    gpu = dict(smoke["result"], emulation=False, device="NVIDIA H100 80GB HBM3")
    source = tmp_path / "nvidia-h100-80gb-hbm3-20300101.json"
    source.write_text(json.dumps(gpu))
    report.update_docs(doc, readme, source)
    _, block, _ = _between(readme.read_text(), report.GPU_BEGIN, report.GPU_END)
    assert "NVIDIA H100 80GB HBM3" in block and "No GPU result" not in block
    ends = [r for r in gpu["rows"] if r["kind"] == "end_to_end"]
    assert ends and all(f"| {r['config']} | {r['layer']} | {r['ref']} |" in block for r in ends)
    assert "| conv1_1 | layer |" not in block  # per layer: the performance page only
    _, table, _ = _between(doc.read_text(), report.BEGIN, report.END)
    assert "HOST EMULATION" not in table and "| conv1_1 | layer |" in table


def test_pages_without_markers_are_refused(smoke, tmp_path):
    doc, readme = _copies(tmp_path)
    bare = tmp_path / "bare.md"
    bare.write_text("# no markers here\n")
    for d, r in ((bare, readme), (doc, bare)):
        before = {p: p.read_text() for p in (d, r)}
        with pytest.raises(ValueError, match="markers"):
            report.update_docs(d, r, smoke["json"])
        assert {p: p.read_text() for p in (d, r)} == before  # neither file written


def test_newest_result_prefers_a_gpu_file(smoke, tmp_path):
    emu = dict(smoke["result"], date="2031-01-02")
    gpu = dict(smoke["result"], date="2030-01-01", emulation=False, device="NVIDIA H100 80GB HBM3")
    for name, r in (("host-emulation-20310102.json", emu), ("nvidia-h100-80gb-hbm3-20300101.json", gpu)):
        (tmp_path / name).write_text(json.dumps(r))
    (tmp_path / "notes.json").write_text("{}")
    assert report.newest_result(tmp_path).name == "nvidia-h100-80gb-hbm3-20300101.json"
    assert report.result_stem(gpu) == "nvidia-h100-80gb-hbm3-quick-20300101"
    assert "HOST EMULATION" not in report.tables(gpu, "x.json")
    (tmp_path / "nvidia-h100-80gb-hbm3-20300101.json").unlink()
    assert report.newest_result(tmp_path).name == "host-emulation-20310102.json"


def test_a_failing_row_is_reported_and_fails_the_run(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(fcn_cuda.ops, "max_pool2d", broken)
    threads, backend = torch.get_num_threads(), fcn_cuda.backend()
    code = bench_main.main(["--quick", "--backend", "host", "--out", str(tmp_path), "--only", "1x48x48/pool1/"])
    assert code == 1
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert result["rows"] == []
    assert [f["name"] for f in result["failed"]] == ["1x48x48/pool1/max_pool2d/torch-cpu"]
    assert "kernel exploded" in result["failed"][0]["error"]
    assert "FAILED" in next(tmp_path.glob("*.md")).read_text()
    assert torch.get_num_threads() == threads  # the run puts the thread settings back
    assert fcn_cuda.backend() == backend


@pytest.fixture
def host():
    previous = fcn_cuda.use_backend("host")
    yield
    if previous:
        fcn_cuda.use_backend(previous)


def test_append_merges_a_split_run(tmp_path):
    args = ["--quick", "--backend", "host", "--out", str(tmp_path)]
    assert bench_main.main(args + ["--only", "1x48x48/pool1/"]) == 0
    assert bench_main.main(args + ["--only", "1x48x48/pool2/", "--only", "train_step", "--append"]) == 0
    (path,) = tmp_path.glob("*.json")
    result = json.loads(path.read_text())
    assert [r["layer"] for r in result["rows"]] == ["pool1", "pool2", "train_step", "train_step"]
    assert len(result["runs"]) == 2 and result["only"] == ["1x48x48/pool1/", "1x48x48/pool2/", "train_step"]
    assert result["peaks"] == result["runs"][1]["peaks"]
    r = result["rows"][0]
    assert r["pct_of_peak"] == pytest.approx(100 * r["bytes"] / (result["peaks"]["copy_gbps"] * 1e9)
                                             / (r["ours_ms"] * 1e-3))
    assert bench_main.main(args + ["--only", "1x48x48/pool1/", "--append"]) == 0  # measured again: replaced
    result = json.loads(path.read_text())
    assert [r["layer"] for r in result["rows"]] == ["pool2", "train_step", "train_step", "pool1"]
    assert len(result["runs"]) == 3
    assert "Merged from 3 runs" in path.with_suffix(".md").read_text()
    other = dict(result, device="NVIDIA H100")
    with pytest.raises(ValueError, match="append"):
        report.merge(other, result)


def test_layer_walk_matches_the_model(host):
    """The shapes the suite benchmarks are the shapes FCN.forward runs."""
    cfg = suite.config_for("host", quick=True)
    model = fcn_cuda.FCN("8s", cfg.classes, state_dict=model_cases.random_state_dict(cfg))
    n, h, w = 2, 37, 45
    keep = {}
    x = np.random.default_rng(0).standard_normal((n, 3, h, w), dtype=np.float32)
    out = model.forward(x, keep=keep)
    layers = model_cases.fcn8s_layers(n, h, w, cfg.widths, cfg.fc, cfg.classes)
    by_name = {L["name"]: L for L in layers}
    names = [L["name"] for L in layers]
    for a, b in zip(names, names[1:]):
        if by_name[a]["type"] == "conv" and by_name[b]["type"] == "conv":
            assert tuple(keep[a].shape) == by_name[b]["x"], a
        if by_name[a]["type"] == "pool":
            assert tuple(keep[a].shape) == by_name[b]["x"], a
    assert tuple(keep["score_fr"].shape) == by_name["upscore2"]["x"]
    assert tuple(keep["upscore2"].shape) == by_name["score_pool4"]["up"]
    assert tuple(keep["upscore_pool4"].shape) == by_name["score_pool3"]["up"]
    assert by_name["score_pool4"]["feat"] == tuple(keep["pool4"].shape)
    assert by_name["upscore8"]["window"][:2] == (h, w) and out.shape == (n, cfg.classes, h, w)
    # 2 x MACs of the trunk: conv1_1 alone is 2 * N * K * P * Q * C * 9
    p, q = h + 2 * 100 - 2, w + 2 * 100 - 2
    assert model_cases.conv_flops(layers[:1]) == 2 * n * cfg.widths[0][0] * p * q * 3 * 9


def test_configs_are_the_benchmark_plan():
    gpu = suite.config_for("cuda", quick=False)
    assert gpu.shapes == ((1, 500, 500), (8, 512, 512)) and gpu.widths == fcn_cuda.model.VGG16_BLOCKS
    assert gpu.fc == 4096 and gpu.repeats >= 20 and gpu.sets >= 2
    host = suite.config_for("host", quick=False)
    assert "emulat" in host.note and host.widths != fcn_cuda.model.VGG16_BLOCKS


def test_dispatch_rows_call_the_same_kernels_both_ways():
    """Every dispatch row (each op through torch.ops.fcn_cuda and directly;
    the nn.Module against fcn_cuda.FCN) computes the same bits both ways
    (called once each here: the smoke run times a few of them)."""
    cfg = suite.config_for("host", quick=True)
    ctx = context.Context("host", cfg, log=lambda *a: None)
    try:
        n, h, w = 1, 32, 32
        cases = dispatch.dispatch_cases(ctx, "1x32x32", n, h, w, model_cases.fcn8s_layers(n, h, w, cfg.widths, cfg.fc,
                                                                                   cfg.classes))
        assert len(cases) == 13 and {c.kind for c in cases} == {"dispatch"}
        for case in cases:
            ours, ref = ctx.ours_numpy(case.ours_fns[0]()), ctx.ref_numpy(case.ref_fns[0]())
            assert set(suite.compare(ours, ref).values()) == {0.0}, case.name
    finally:
        ctx.close()


def test_torch_dispatch_script_runs_every_op():
    """benchmarks/torch_dispatch.py, as its docstring runs it, one call a side: every op's row and the summary."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "benchmarks/torch_dispatch.py", "--calls", "1", "--rounds", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from benchmarks import torch_dispatch
        names = list(torch_dispatch.calls("cpu"))
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    rows = [line.split()[0] for line in proc.stdout.splitlines()[2:-1]]
    assert rows == names and "median cost of the torch dispatch per call" in proc.stdout.splitlines()[-1]


def test_compare_sees_differences():
    a = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    assert suite.compare(a, a.copy()) == {"rel_l2": 0.0}
    b = a.copy()
    b[3] += 1.0
    assert suite.compare(a, b)["rel_l2"] > 1e-3
    c = a.copy()
    c[5] = np.nan
    assert suite.compare(c, a) == {"nonfinite": 1e-3}
    lab = np.arange(10, dtype=np.int32)
    assert suite.compare(lab, lab.astype(np.int64)) == {"label_mismatch": 0.0}
    assert suite.compare((a, lab), (b, lab[::-1].copy()))["label_mismatch"] == 1.0
    with pytest.raises(AssertionError, match="values"):
        suite.compare(a, a[:10])


def test_time_host_median_is_sane():
    t = timing.time_host([lambda: time.sleep(0.004), lambda: time.sleep(0.004)], warmup=1, repeats=5)
    assert t.n == 5
    assert 3.5 <= t.median_ms < 40 and t.min_ms <= t.median_ms and t.iqr_ms >= 0
    calls = []
    t = timing.time_host([lambda: (calls.append(1), time.sleep(0.02))], warmup=0, repeats=100, budget_s=0.05,
                         min_repeats=3)
    assert 3 <= t.n < 100 and len(calls) == t.n
    with pytest.raises(ValueError, match="fns"):
        timing.time_host([])


class FakeClock:
    """A clock with the CupyClock/TorchClock interface, on perf_counter."""

    def __init__(self):
        self.log = []

    def sync(self):
        self.log.append("sync")

    def flush(self, k):
        self.log.append("flush")

    def record(self):
        self.log.append("record")
        return time.perf_counter()

    @staticmethod
    def elapsed_ms(start, end):
        return (end - start) * 1e3


def test_time_device_brackets_each_run_and_rotates_inputs():
    clock, used = FakeClock(), []
    fns = [lambda i=i: (used.append(i), time.sleep(0.002)) for i in range(3)]
    t = timing.time_device(clock, fns, warmup=2, repeats=20)
    assert t.n == 20 and 1.5 <= t.median_ms < 30
    assert used == [0, 1] + [k % 3 for k in range(20)]
    assert clock.log == ["sync", "flush", "record", "record"] * 20 + ["sync"]
    clock.log.clear()
    timing.time_device(clock, fns, warmup=0, repeats=2, flush=False)
    assert "flush" not in clock.log


@pytest.fixture(scope="module")
def host_cases():
    """A few suite rows at the quick configuration, built once."""
    cfg = suite.config_for("host", quick=True)
    ctx = context.Context("host", cfg, only=["1x48x48/conv1_2/igemm/", "1x48x48/pool1/", "1x48x48/upscore8/bilinear",
                                           "1x48x48/softmax_argmax/float4", "1x48x48/forward/"], log=lambda *a: None)
    cases = {}
    try:  # the cases hold host arrays: the host backend stays active until the module is done
        for build in suite.case_groups(ctx, cfg.shapes[0]):
            for case in build():
                if ctx.wants(case.name):
                    cases[case.layer] = case
        yield cases
    finally:
        ctx.close()


def test_upsample_rows_time_what_the_model_runs(monkeypatch):
    """Each upsampling row calls conv_transpose2d as the model does, with
    trusted=True: a timed call never runs the per-channel check on w (two
    reductions and a host sync on a GPU), which the model makes once, at load."""
    cfg = suite.config_for("host", quick=True)
    ctx = context.Context("host", cfg, log=lambda *a: None)
    try:
        n, h, w = cfg.shapes[0]
        layers = [L for L in model_cases.fcn8s_layers(n, h, w, cfg.widths, cfg.fc, cfg.classes) if L["type"] == "upsample"]
        cases = [case for L in layers for case in upsample.upsample_cases(ctx, suite.shape_tag(cfg.shapes[0]), L)]

        def check_in_timing(be, w):
            raise AssertionError("a timed upsampling call checked whether w is per-channel")

        monkeypatch.setattr(importlib.import_module("fcn_cuda.ops.upsample"), "is_diagonal", check_in_timing)
        assert {case.ours for case in cases} == set(fcn_cuda.ops.CONV_TRANSPOSE2D_VARIANTS) and len(layers) == 3
        for case in cases:
            for fn in case.ours_fns:
                fn()
    finally:
        ctx.close()


def test_caffe_memory_never_writes_over_a_file_and_always_removes_its_own(tmp_path, monkeypatch):
    """benchmarks/caffe_memory.py: an existing --path is refused untouched; the file it wrote (at --path or
    in the temp folder) is removed when a step fails, and kept only with --keep."""
    from benchmarks import caffe_memory

    def tiny(f, mb):  # the synthetic net's size is not the point here
        f.write(b"\x0a\x03net")
        return 1

    def failing(step, path):
        assert path.exists()
        raise subprocess.CalledProcessError(1, ["python", "-c", step])

    monkeypatch.setattr(caffe_memory, "write", tiny)
    monkeypatch.setattr(caffe_memory, "peak", failing)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    users = tmp_path / "users.caffemodel"
    users.write_bytes(b"someone's weights")

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["caffe_memory.py", *args])
        caffe_memory.main()

    with pytest.raises(SystemExit):
        run("--path", str(users))
    assert users.read_bytes() == b"someone's weights"
    for args in (("--path", str(tmp_path / "new.caffemodel")), ()):
        with pytest.raises(subprocess.CalledProcessError):
            run(*args)
        assert sorted(p.name for p in tmp_path.rglob("*")) == ["tmp", "users.caffemodel"], args
    with pytest.raises(subprocess.CalledProcessError):
        run("--path", str(tmp_path / "kept.caffemodel"), "--keep")
    assert (tmp_path / "kept.caffemodel").read_bytes() == b"\x0a\x03net"


@pytest.mark.parametrize("layer", ["conv1_2", "pool1", "upscore8", "softmax_argmax", "forward"])
def test_benchmark_suite_row(benchmark, host_cases, layer):
    """pytest-benchmark timing of one suite row's fcn_cuda side (host emulation), checked against its reference."""
    case = host_cases[layer]
    benchmark.extra_info.update(name=case.name, emulation=True)
    out = benchmark.pedantic(case.ours_fns[0], rounds=3, iterations=1, warmup_rounds=1)
    with torch.inference_mode():
        ref = case.ref_fns[0]()
    ref = tuple(r.numpy() for r in ref) if isinstance(ref, tuple) else ref.numpy()
    err = suite.compare(out, ref)
    assert err.get("rel_l2", 0.0) < 1e-5 and err.get("label_mismatch", 0.0) == 0.0
    assert not math.isnan(err.get("rel_l2", 0.0))


def _pool_that_turns(after_calls, spoil):
    """ops.max_pool2d, whose outputs from call `after_calls` on go through spoil."""
    real, calls = fcn_cuda.ops.max_pool2d, []

    def pool(*args, **kwargs):
        calls.append(1)
        y = real(*args, **kwargs)
        return spoil(y) if len(calls) > after_calls else y
    return pool


@pytest.mark.parametrize("after_calls, spoil, message", [
    (0, lambda y: y * np.float32("nan"), "the output is not finite"),
    # quick config: 1 call before the loop, 1 warm-up and 3 timed runs; the 6th call is the re-check
    (5, lambda y: y + np.float32(1), "differs from the one before it"),
    (5, lambda y: y * np.float32("inf"), "the output after the timing loop is not finite"),
])
def test_a_row_is_checked_again_after_its_timing_loop(tmp_path, monkeypatch, after_calls, spoil, message):
    monkeypatch.setattr(fcn_cuda.ops, "max_pool2d", _pool_that_turns(after_calls, spoil))
    code = bench_main.main(["--quick", "--backend", "host", "--out", str(tmp_path), "--only", "1x48x48/pool1/"])
    assert code == 1
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert result["rows"] == []
    assert [f["name"] for f in result["failed"]] == ["1x48x48/pool1/max_pool2d/torch-cpu"]
    assert message in result["failed"][0]["error"]
