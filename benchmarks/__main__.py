"""python -m benchmarks: the whole suite, fcn_cuda against PyTorch.

On a GPU (backend 'cuda'): the full-width FCN-8s, batch 1 at 500x500 and
batch 8 at 512x512, against cuDNN / PyTorch CUDA (TF32 off and on,
torch.compile), CUDA events, L2 flushed before each run, median of 25.
Where one command may only run for a few minutes, run the inputs apart
into one file: --only 1x500x500/, then --only 8x512x512/ --append (each run
measures the peaks; the file lists every run's).
On the host: the CUDA emulation against PyTorch on the CPU at reduced width
and size, labeled as emulation in every output.

Writes <out>/<device>-<yyyymmdd>.json and .md (host: host-emulation-...,
--quick adds -quick), a roofline and a per-layer ratio chart (PNG, with
matplotlib), and, when writing to benchmarks/results/, the tables of
docs/performance.md and the README's GPU line (report.py).
Exit status 1 when any fcn_cuda row failed.
"""

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

import fcn_cuda

from . import report
from .context import Context
from .suite import config_for, run


def git_commit():
    """HEAD's short hash, with +dirty when tracked files differ from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=report.ROOT, capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "--short", "HEAD")
        if head.returncode != 0:
            return "unknown"
        dirty = git("diff", "--quiet", "HEAD", "--").returncode != 0
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty else "")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_result(ctx, peaks, rows, elapsed_s):
    torch = ctx.torch
    now = datetime.datetime.now(datetime.timezone.utc)
    versions = {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
                "fcn_cuda": fcn_cuda.__version__}
    if ctx.gpu:
        import cupy

        device = torch.cuda.get_device_name()
        versions["cupy"] = cupy.__version__
        versions["cuda (torch)"] = torch.version.cuda
        versions["cudnn"] = torch.backends.cudnn.version()
        timing = (f"CUDA events on each side's stream, device idle and L2 flushed (256 MiB write) before every run, "
                  f"{ctx.cfg.warmup} warm-up runs, median of {ctx.cfg.repeats}, {ctx.cfg.sets} input sets rotated; "
                  "cudnn.benchmark on; each timed call includes its side's Python and launch overhead (no CUDA graphs)")
        backend = "cuda"
    else:
        device = f"host emulation on {cpu_name()}"
        timing = (f"time.perf_counter, {ctx.cfg.warmup} warm-up run(s), median of up to {ctx.cfg.repeats} "
                  f"(at least 3, {ctx.cfg.budget_s} s budget per side); fcn_cuda: CUDA emulation with "
                  f"{fcn_cuda.emulator_workers()} workers; torch CPU with {torch.get_num_threads()} threads")
        backend = "host (CUDA emulation on the CPU)"
    return {
        "device": device, "date": now.date().isoformat(), "timestamp": now.isoformat(timespec="seconds"),
        "commit": git_commit(), "backend": backend, "emulation": not ctx.gpu,
        "label": "GPU measurement" if ctx.gpu else report.EMULATION_LABEL,
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "versions": versions,
        "config": asdict(ctx.cfg), "timing": timing, "only": list(ctx.only), "elapsed_s": round(elapsed_s, 1),
        "peaks": peaks, "rows": rows, "skipped": ctx.skipped, "failed": ctx.failed,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0],
                                 epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes and a reduced-width model (smoke run)")
    ap.add_argument("--only", action="append", default=[], metavar="SUBSTRING",
                    help="run only rows whose name contains this (repeatable; names: INPUT/LAYER/OURS/REF, "
                         "e.g. 1x500x500/conv1_1/igemm/cudnn-fp32)")
    ap.add_argument("--out", default=str(report.RESULTS_DIR), help="output folder (default benchmarks/results)")
    ap.add_argument("--backend", choices=("host", "cuda"), help="default: fcn_cuda's choice (cuda where a GPU is)")
    ap.add_argument("--repeats", type=int, help="timed runs per side (GPU default 25; at least 20 on a GPU)")
    ap.add_argument("--threads", type=int, default=1,
                    help="host only: emulator workers and torch CPU threads, the same for both sides (default 1)")
    ap.add_argument("--append", action="store_true",
                    help="add these rows to today's result file for this device and config (a run split with --only)")
    ap.add_argument("--no-tables", action="store_true",
                    help="do not regenerate docs/performance.md's tables and the README's GPU line")
    args = ap.parse_args(argv)

    backend = args.backend or fcn_cuda.backend()
    cfg = config_for(backend, args.quick)
    if args.repeats is not None:
        if args.repeats < (20 if backend == "cuda" else 1):
            ap.error("--repeats must be at least 20 on a GPU (median of >= 20) and at least 1 on the host")
        cfg = replace(cfg, repeats=args.repeats)
    if backend == "host":
        print(f"*** {report.EMULATION_LABEL} ***")
    print(f"config {cfg.name}: {cfg.note}")
    if args.threads < 1:
        ap.error("--threads must be at least 1")
    ctx = Context(backend, cfg, args.only, threads=args.threads)
    try:
        t0 = time.perf_counter()
        peaks, rows = run(ctx)
        result = build_result(ctx, peaks, rows, time.perf_counter() - t0)
    finally:
        ctx.close()
    if args.append:
        previous = Path(args.out) / f"{report.result_stem(result)}.json"
        if previous.exists():
            result = report.merge(report.load_result(previous), result)
            print(f"appended to {previous} ({len(result['runs'])} runs, {len(result['rows'])} rows)")
    paths = report.write_all(result, args.out)
    print(f"{len(rows)} rows, {len(ctx.skipped)} not measured, {len(ctx.failed)} failed, "
          f"{result['elapsed_s']} s")
    for p in paths.values():
        print(f"wrote {p}")
    out_is_default = Path(args.out).resolve() == report.RESULTS_DIR.resolve()
    if out_is_default and not args.no_tables and report.PERFORMANCE.exists() and report.README.exists():
        used = report.update_docs()
        print(f"docs/performance.md's tables and the README's GPU line regenerated from {used.name}")
    return 1 if ctx.failed else 0


if __name__ == "__main__":
    sys.exit(main())
