"""The stages of `bash .ci/gpu all`: what one lent GPU machine (one command of
at most 10 minutes) yields, each stage under its own `timeout` and budget so
that a slow or hung stage costs its budget and no more; the next one runs.

    python3 .ci/gpu_all.py plan        the stages and their budgets (at most 540 s in all)
    python3 .ci/gpu_all.py all OUT     runs them; OUT/summary.md, the result files, OUT/logs.tar.gz
    python3 .ci/gpu_all.py check OUT   the same without the benchmark

FCN_CUDA_GPU_REHEARSAL=1 runs the same stages on a machine without a GPU:
the host backend, small test subsets and benchmark sizes, the
compute-sanitizer stages skipped (said so in the summary). For the tests of
this script: FCN_CUDA_GPU_BUDGETS="stage=seconds,..." overrides budgets,
FCN_CUDA_GPU_STAGES="a,b" runs only those stages, and in a rehearsal
FCN_CUDA_GPU_STALL=stage makes that stage hang (it sleeps), so that its
timeout and the stages after it can be seen.

What comes back from the machine is at most 8 files, two folders down:
summary.md, ptxas_report.txt, logs.tar.gz (every stage's log and JUnit
file) and bench/ (the result .json and .md and two charts).
"""

import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
REHEARSAL = os.environ.get("FCN_CUDA_GPU_REHEARSAL") == "1"
MIN_DRIVER = 580  # the static CUDA 13 runtime in fcn_cuda._cuda needs a 580+ driver
TOTAL_BUDGET = 540

# GPU tests: the cuda backend's cases (`be` and `device` parameters) and the tests marked gpu, less
# those the next stage runs and names, and two host tests whose names say gpu (each runs a host
# benchmark of a minute).
GPU_TESTS = ("(cuda or gpu) and not pydensecrf and not emulators_bits and not matches_hardware "
             "and not prefers_a_gpu_file and not shows_a_gpu_results")
CROSS_TESTS = "(cuda or gpu) and (pydensecrf or emulators_bits) or emulator_matches_hardware"
# memcheck: the kernel tests' GPU cases, but the one that faults on purpose (sync launches).
MEMCHECK = "cuda and not fault_is_raised"
# racecheck: a few tests of each kernel that uses shared memory, small sizes only (not model_scale):
# conv2d's igemm, split-K and wmma tiles and the wgmma rung (relu_and_bias, rounds_like_its_precision), the
# mma rung (relu_and_no_bias), conv2d_small_c
# (conv1_1), the weight and bias gradients (conv2d_grads), gemm tiled and wmma (gemm_against),
# block_sum (block_reduction), the barrier and dynamic shared memory probes, softmax_xent, the
# confusion matrix and the scan.
RACECHECK = ("cuda and (relu_and_bias or relu_and_no_bias or rounds_like_its_precision or conv1_1 or conv2d_grads "
             "or gemm_against "
             "or block_reduction or barrier_really or dynamic_shared or test_softmax_cross_entropy "
             "or confusion_matrix or exclusive_scan_matches)")


@dataclass
class Stage:
    name: str
    budget: float
    what: str
    gpu: list                      # the command on a GPU machine
    rehearsal: list = None         # the command in a rehearsal; None: skipped there
    env: dict = field(default_factory=dict)
    junit: bool = False            # a pytest stage: counts come from its JUnit files


def modules(select, marks, junit_dir, jobs, paths=("tests",)):
    """A pytest stage that runs each selected test module in its own process, `jobs` at a time. What
    that costs: a process's start (Python, torch, fcn_cuda, conftest) took 2.9 to 3.4 s on a busy
    two-core machine here, about 36 modules hold GPU cases: about 26 s of wall time at 4 at a time,
    the price of a fault costing its own module only (one process would lose every later module)."""
    cmd = [PY, __file__, "modules", "-k", select, "--junit-dir", str(junit_dir), "--jobs", str(jobs)]
    return cmd + (["-m", marks] if marks else []) + list(paths)


def rehearsal_paths():
    """The rehearsal collects only tests/kernels and the CRF's tests: collecting the whole suite on a
    busy two-core CI machine takes most of a minute."""
    crf = [str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_crf.py")]
    return ["tests/kernels", *[p for p in crf if not p.startswith("tests/kernels/")]]


def stages(out):
    logs = out / "logs"
    pytest = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf"]
    sanitizer = ["env", "FCN_CUDA_NO_MEMORY_POOL=1", "compute-sanitizer", "--error-exitcode", "1", "--tool"]
    host_small = "host and (sync_launches or exclusive_scan)"
    return [
        Stage("preflight", 15, "nvidia-smi, driver >= 580, versions", [PY, __file__, "preflight"],
              [PY, __file__, "preflight"]),
        Stage("install", 110, "carried wheels, then the nvcc build for this device (pip install -e .)",
              [PY, __file__, "install", str(out)], [PY, __file__, "install", str(out)]),
        Stage("smoke", 25, "one launch per kernel family, each synchronized", [PY, __file__, "smoke"],
              [PY, __file__, "smoke"], env={"FCN_CUDA_SYNC_LAUNCHES": "1"}),
        Stage("gpu-tests", 140, f"-k '{GPU_TESTS}', a process per module, 4 at a time",
              modules(GPU_TESTS, None, logs / "gpu-tests", 4),
              modules(host_small, "kernels and not model_scale", logs / "gpu-tests", 2, ["tests/kernels"]),
              env={"FCN_CUDA_SYNC_LAUNCHES": "1"}, junit=True),
        Stage("cross", 40, "the emulator against the hardware; the CRF against pydensecrf",
              modules(CROSS_TESTS, None, logs / "cross", 2),
              modules("host and (pydensecrf and readme-23x17 or crf_math)", None, logs / "cross", 2,
                      rehearsal_paths()),
              env={"FCN_CUDA_SYNC_LAUNCHES": "1"}, junit=True),
        Stage("memcheck", 90, "compute-sanitizer memcheck, -m 'kernels and not model_scale' -k cuda, no memory pool",
              sanitizer + ["memcheck"] + pytest + ["-m", "kernels and not model_scale", "-k", MEMCHECK,
                                                    f"--junitxml={logs / 'memcheck' / 'memcheck.xml'}"],
              junit=True),
        Stage("racecheck", 50, "compute-sanitizer racecheck on the shared-memory kernels' tests",
              sanitizer + ["racecheck"] + pytest + ["-m", "kernels and not model_scale", "-k", RACECHECK,
                                                     f"--junitxml={logs / 'racecheck' / 'racecheck.xml'}"],
              junit=True),
        Stage("bench", 70, "python -m benchmarks: FCN-8s 1x500x500 full width, forward and infer, "
                           "against cuDNN (TF32 off, on) and torch.compile",
              [PY, "-m", "benchmarks", "--only", "1x500x500/forward/", "--only", "1x500x500/infer/",
               "--out", str(out / "bench"), "--no-tables"],
              [PY, "-m", "benchmarks", "--quick", "--backend", "host", "--only", "1x48x48/forward/",
               "--only", "1x48x48/pool1/", "--out", str(out / "bench"), "--no-tables"]),
    ]


def budgets_from_env(all_stages):
    spec = os.environ.get("FCN_CUDA_GPU_BUDGETS", "").strip()
    names = {s.name: s for s in all_stages}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        name, _, seconds = item.partition("=")
        if name not in names:
            raise SystemExit(f"FCN_CUDA_GPU_BUDGETS: no stage {name!r} (stages: {', '.join(names)})")
        names[name].budget = float(seconds)


def chosen(all_stages, mode):
    spec = os.environ.get("FCN_CUDA_GPU_STAGES", "").strip()
    picked = [s for s in all_stages if mode == "all" or s.name != "bench"]
    if spec:
        wanted = [p.strip() for p in spec.split(",") if p.strip()]
        unknown = set(wanted) - {s.name for s in all_stages}
        if unknown:
            raise SystemExit(f"FCN_CUDA_GPU_STAGES: no stage {', '.join(sorted(unknown))}")
        picked = [s for s in picked if s.name in wanted]
    return picked


# ------------------------------------------------------------------ running
def junit_counts(folder):
    """(passed, failed, skipped, first failure line) over the JUnit files in folder."""
    passed = failed = skipped = 0
    first = ""
    for path in sorted(Path(folder).glob("*.xml")):
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError:  # a file cut short by the timeout
            continue
        for case in root.iter("testcase"):
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            if bad is not None:
                failed += 1
                if not first:
                    msg = (bad.get("message") or bad.text or "").strip().splitlines()
                    first = f"{case.get('classname')}::{case.get('name')}: {msg[0] if msg else ''}"
            elif case.find("skipped") is not None:
                skipped += 1
            else:
                passed += 1
    return passed, failed, skipped, first


def first_error_line(log):
    lines = [l for l in log.read_text(errors="replace").splitlines() if l.strip()]
    for line in lines:
        if re.search(r"error|fail|refus|not found|traceback", line, re.I):
            return line.strip()
    return lines[-1].strip() if lines else ""


def run_stage(stage, out, env):
    log = out / "logs" / f"{stage.name}.log"
    (out / "logs" / stage.name).mkdir(parents=True, exist_ok=True)
    row = {"stage": stage.name, "budget": stage.budget, "what": stage.what}
    cmd = stage.rehearsal if REHEARSAL else stage.gpu
    if cmd is None:
        row.update(wall=0.0, status="skipped", counts="", first="skipped: no compute-sanitizer (rehearsal)")
        print(f"==== {stage.name}: skipped (rehearsal)", flush=True)
        return row
    if REHEARSAL and os.environ.get("FCN_CUDA_GPU_STALL") == stage.name:
        cmd = ["sleep", "600"]
    print(f"==== {stage.name} (budget {stage.budget:g} s): {' '.join(cmd)}", flush=True)
    t0 = time.monotonic()
    with open(log, "w") as f:
        # timeout signals the whole process group it leads: a stage's children go with it.
        rc = subprocess.run(["timeout", "-k", "5", f"{stage.budget:g}", *cmd], stdout=f, stderr=subprocess.STDOUT,
                            cwd=ROOT, env={**env, **stage.env}).returncode
    wall = time.monotonic() - t0
    if stage.junit:
        p, fl, sk, first = junit_counts(out / "logs" / stage.name)
        counts = f"{p} / {fl} / {sk}"
    else:
        counts, first = "", ""
    if rc in (124, 137):
        status = "timeout"
        first = first or f"stopped at its budget of {stage.budget:g} s"
    elif rc == 0:
        status = "passed"
    else:
        status = f"failed ({rc})"
        first = first or first_error_line(log)
    tail = log.read_text(errors="replace").splitlines()[-15:]
    print("\n".join(tail), flush=True)
    print(f"==== {stage.name}: {status}, {wall:.1f} s", flush=True)
    row.update(wall=wall, status=status, counts=counts, first=first)
    return row


def end_to_end(out):
    rows = []
    for path in sorted((out / "bench").glob("*.json")):
        result = json.loads(path.read_text())
        for r in result.get("rows", []):
            if r.get("kind") == "end_to_end":
                rows.append(f"| {r['name']} | {r['ours_ms']:.3f} | {r['ref_ms']:.3f} | {r['ratio']:.2f} |")
        for f in result.get("failed", []):
            rows.append(f"| {f['name']} | failed | | {f['error'][:80]} |")
    return rows


def write_summary(out, rows, device):
    cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")[:200]  # noqa: E731
    lines = [f"# .ci/gpu all{' (REHEARSAL on the host: no GPU)' if REHEARSAL else ''}", "",
             f"device: {device}", "",
             "| stage | budget s | wall s | exit status | passed / failed / skipped | first failure |",
             "| --- | ---: | ---: | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['budget']:g} | {r['wall']:.1f} | {r['status']} | {r['counts']} | "
                     f"{cell(r['first'])} |")
    e2e = end_to_end(out)
    lines += ["", "## End to end (ref_ms / ours_ms: > 1, fcn_cuda faster)", ""]
    lines += (["| row | ours ms | ref ms | ratio |", "| --- | ---: | ---: | ---: |"] + e2e) if e2e else ["no rows"]
    tmp = out / "summary.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out / "summary.md")


def pack_logs(out):
    """Every log and JUnit file into one archive: what comes back is at most 8 files."""
    tmp = out / "logs.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(out / "logs", arcname="logs")
    tmp.replace(out / "logs.tar.gz")
    shutil.rmtree(out / "logs")


def device_name():
    if REHEARSAL:
        return "host (rehearsal: the CUDA emulation, no GPU)"
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown (nvidia-smi did not answer)"


def run_all(mode, out):
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("summary.md", "logs.tar.gz"):
        (out / stale).unlink(missing_ok=True)
    shutil.rmtree(out / "logs", ignore_errors=True)
    shutil.rmtree(out / "bench", ignore_errors=True)
    (out / "logs").mkdir()
    all_stages = stages(out)
    budgets_from_env(all_stages)
    env = dict(os.environ)
    site = out / "logs" / "site"  # wheels installed by the install stage, seen by the later ones
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    if REHEARSAL:
        env["FCN_CUDA_BACKEND"] = "host"
    rows = []
    for stage in chosen(all_stages, mode):
        rows.append(run_stage(stage, out, env))
        write_summary(out, rows, device_name())
    shutil.rmtree(site, ignore_errors=True)
    pack_logs(out)
    print((out / "summary.md").read_text())
    return 0 if all(r["status"] in ("passed", "skipped") for r in rows) else 1


# ------------------------------------------------------------------ stage bodies
def preflight():
    import platform

    print(f"python {platform.python_version()} at {sys.executable}")
    if REHEARSAL:
        print("rehearsal: no nvidia-smi, no driver check")
        return 0
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        print(f"nvidia-smi did not run: {e}")
        return 1
    print(smi.stdout.strip() or smi.stderr.strip())
    if smi.returncode != 0:
        return 1
    driver = smi.stdout.split(",")[1].strip()
    if int(driver.split(".")[0]) < MIN_DRIVER:
        print(f"driver {driver} is too old: the static CUDA 13 runtime of fcn_cuda._cuda needs {MIN_DRIVER} or newer")
        return 1
    subprocess.run(["nvcc", "--version"], timeout=20)
    subprocess.run(["compute-sanitizer", "--version"], timeout=20)
    import cupy
    import torch

    print(f"cupy {cupy.__version__}, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}, "
          f"driver {cupy.cuda.runtime.driverGetVersion()}; torch {torch.__version__} (CUDA {torch.version.cuda})")
    return 0


def install(out):
    site = Path(out) / "logs" / "site"
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    here = set(sys_tags())
    wheels = []
    for w in sorted((ROOT / ".whl").glob("*.whl")):
        if here & set(parse_wheel_filename(w.name)[3]):
            wheels.append(w)
        else:
            print(f"{w.name}: not for this Python, left out")
    if wheels:
        print("wheels:", ", ".join(w.name for w in wheels))
        subprocess.run([PY, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--upgrade", "--target", str(site), *map(str, wheels)], check=True)
    else:
        print("no wheels in .whl/ (bash .ci/gpu-wheels builds them): the CRF's comparisons with pydensecrf "
              "skip unless pydensecrf2 is installed")
    t0 = time.monotonic()
    if REHEARSAL:
        build = [PY, "-c", "import fcn_cuda._host"]  # the host build is the checkout's own
    else:
        build = [PY, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "-e", "."]
    subprocess.run(build, cwd=ROOT, check=True)
    print(f"build: {time.monotonic() - t0:.1f} s")
    report = ROOT / "build" / "ptxas_report.txt"
    if report.exists() and not REHEARSAL:
        shutil.copy(report, Path(out) / "ptxas_report.txt")
    return 0


def smoke():
    """One launch of each kernel family on small random inputs, FCN_CUDA_SYNC_LAUNCHES=1: a fault
    names its kernel; every output must be finite."""
    import numpy as np

    sys.path.insert(0, str(ROOT))  # the checkout's fcn_cuda (pip install -e . on the GPU machine)
    import fcn_cuda
    from fcn_cuda import _backend, ops
    from fcn_cuda.ops import elementwise, gemm, metrics, reduce, scan

    be = _backend.active()
    print("backend:", be.name, "| sync launches:", be.ext.sync_launches())
    rng = np.random.default_rng(0)

    def a(*shape, scale=1.0):
        return be.xp.asarray((rng.standard_normal(shape) * scale).astype(np.float32))

    labels = be.xp.asarray(rng.integers(0, 3, (1, 16, 16)).astype(np.int32))
    img = be.xp.asarray(rng.integers(0, 256, (16, 16, 3)).astype(np.uint8))
    x, w = a(1, 8, 16, 16), a(8, 8, 3, 3, scale=0.2)
    probs = ops.softmax(a(1, 3, 16, 16))[0]
    off_this_gpu = object()
    families = {
        "elementwise": lambda: elementwise.axpy(2.0, a(1000), a(1000)),
        "reduce": lambda: reduce.block_sum(a(5000)),
        "gemm": lambda: gemm.gemm(a(33, 17), a(17, 9)),
        "scan": lambda: scan.exclusive_scan(be.xp.asarray(np.arange(100, dtype=np.int32) % 5)),
        "metrics": lambda: metrics.confusion_matrix(labels, labels, 3),
        "conv2d": lambda: ops.conv2d(x, w, a(8), 1, 1, True),
        # The tensor-core rungs: Ampere's mma.sync on any GPU from sm_80, Hopper's wgmma + TMA on sm_90.
        "conv2d_mma": lambda: ops.conv2d(x, w, a(8), 1, 1, True, variant="mma_tf32"),
        "conv2d_wgmma": lambda: (ops.conv2d(x, w, a(8), 1, 1, True, variant="wgmma_tf32")
                                 if be.compute_capability() in (None, 90) else off_this_gpu),
        "conv2d_backward": lambda: ops.conv2d_grad_weight(x, a(1, 8, 16, 16), 3, 1, 1),
        "pool": lambda: ops.max_pool2d(x),
        "upsample": lambda: ops.conv_transpose2d(a(1, 3, 8, 8), fcn_cuda.bilinear.bilinear_weights(3, 4), stride=2),
        "crop": lambda: ops.crop_add(a(1, 3, 8, 8), a(1, 3, 12, 12), 2),
        "softmax": lambda: ops.softmax_argmax(a(1, 3, 16, 16)),
        "loss": lambda: ops.softmax_cross_entropy(a(1, 3, 16, 16), labels),
        "dropout": lambda: ops.dropout(x, 0.5, 1, 2),
        "preprocess": lambda: ops.preprocess(img[None]),
        "sgd": lambda: ops.sgd_step(a(100), a(100), a(100), 0.1, 0.9, 5e-4),
        "crf": lambda: fcn_cuda.dense_crf(img, probs, 2),
    }
    failed = 0
    for name, call in families.items():
        t0 = time.perf_counter()
        try:
            result = call()
            if result is off_this_gpu:  # a family this GPU cannot run (wgmma off sm_90)
                print(f"{name:16s} skipped (compute capability {be.compute_capability()})")
                continue
            outs = result if isinstance(result, tuple) else (result,)
            for o in outs:
                if o is None or np.isscalar(o):
                    continue
                v = np.asarray(be.to_numpy(o))
                if v.dtype.kind == "f" and not np.isfinite(v).all():
                    raise AssertionError("output not finite")
            print(f"{name:16s} ok     {1e3 * (time.perf_counter() - t0):8.1f} ms")
        except Exception as e:  # every family is tried; the stage fails at the end
            failed += 1
            print(f"{name:16s} FAILED {type(e).__name__}: {e}")
    return 1 if failed else 0


def run_modules(argv):
    """pytest, one process per test module, `jobs` at a time: a device fault (which leaves the CUDA
    context unusable) costs the tests of its own module only. Each module writes a JUnit file."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("-k", required=True)
    ap.add_argument("-m")
    ap.add_argument("--junit-dir", required=True)
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("paths", nargs="+")
    args = ap.parse_args(argv)
    sel = ["-k", args.k] + (["-m", args.m] if args.m else [])
    base = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    t0 = time.monotonic()
    listing = subprocess.run(base + ["--collect-only"] + sel + args.paths, cwd=ROOT, capture_output=True, text=True)
    files = sorted({line.split("::")[0] for line in listing.stdout.splitlines() if "::" in line})
    print(f"{len(files)} modules with selected tests (collected in {time.monotonic() - t0:.1f} s)", flush=True)
    if listing.returncode not in (0, 5):
        print(listing.stdout[-3000:], listing.stderr[-3000:])
        return 1
    junit = Path(args.junit_dir)
    junit.mkdir(parents=True, exist_ok=True)

    def one(path):
        name = path.replace("/", "_").removesuffix(".py")
        t = time.monotonic()
        p = subprocess.run(base + ["-rf", path, *sel, f"--junitxml={junit / name}.xml"], cwd=ROOT,
                           capture_output=True, text=True)
        return path, p.returncode, time.monotonic() - t, p.stdout + p.stderr

    failed = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        for path, rc, wall, text in pool.map(one, files):
            last = [l for l in text.splitlines() if l.strip()][-1:] or [""]
            print(f"{path}: exit {rc}, {wall:.1f} s: {last[0]}", flush=True)
            if rc not in (0, 5):
                failed.append(path)
                for line in text.splitlines():
                    if line.startswith(("FAILED", "ERROR")):
                        print(f"    {line}")
    print(f"{len(files) - len(failed)} modules passed, {len(failed)} failed: {', '.join(failed) or '-'}")
    return 1 if failed else 0


def plan():
    all_stages = stages(Path(os.environ.get("OUT", "gpu-out")))
    budgets_from_env(all_stages)
    total = 0
    for s in all_stages:
        total += s.budget
        print(f"{s.name:10s} {s.budget:5g} s  {s.what}")
    print(f"{'total':10s} {total:5g} s  (at most {TOTAL_BUDGET})")
    return 0 if total <= TOTAL_BUDGET else 1


def main(argv):
    if not argv:
        print(__doc__)
        return 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "plan":
        return plan()
    if cmd in ("all", "check"):
        return run_all(cmd, rest[0] if rest else os.environ.get("OUT", "gpu-out"))
    if cmd == "preflight":
        return preflight()
    if cmd == "install":
        return install(rest[0])
    if cmd == "smoke":
        return smoke()
    if cmd == "modules":
        return run_modules(rest)
    print(f"unknown command {cmd!r}\n{__doc__}")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
