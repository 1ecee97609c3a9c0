"""Speed of the host emulation itself.

    python benchmarks/emulator.py [--workers N] [--baseline OTHER_HOST_SO]

Times, on the host backend, the register-blocked tiled SGEMM (a kernel with
two __syncthreads per K step, so fibers switch) and the barrier-free float4
axpy (run as a plain loop, y += a * x in place), with one worker (per-core
figures) and with one worker per core. The launches are called directly
on preallocated arrays, so Python's validation and allocation are not timed. Median of several runs after a warm-up; inputs stay the same
because this measures the emulator's execution, not memory. These are CPU
timings of the emulation, never GPU figures.

--baseline times another build of fcn_cuda._host (its .so file, e.g. this
source with one change undone, built in a scratch checkout) in the same run:
every repeat calls this build, then the baseline, so machine load hits both
alike; the rows show both medians and their ratio (this build's time over
the baseline's: above 1 means this build is slower).
"""

import argparse
import importlib.machinery
import importlib.util
import os
import time

# NumPy's OpenBLAS threads spin after BLAS calls and steal the cores the
# emulator's workers run on; this script does no BLAS work.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import fcn_cuda
from fcn_cuda import _backend
from timing import median_seconds  # benchmarks/timing.py: this script's own folder is on sys.path


def load_build(path):
    """Another build of the emulator extension, loaded beside fcn_cuda._host."""
    loader = importlib.machinery.ExtensionFileLoader("_host", path)
    spec = importlib.util.spec_from_file_location("_host", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def paired_medians(fns, runs):
    """Median seconds of each fn, calling them in turn within every repeat."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(runs):
        for fn, t in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [float(np.median(t)) for t in times]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="workers for the parallel rows")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baseline", help="path of another fcn_cuda._host build to time in the same run")
    args = ap.parse_args()
    fcn_cuda.use_backend("host")
    rng = np.random.default_rng(0)
    m = n = k = 256
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    c = np.empty((m, n), np.float32)
    builds = [_backend.active().ext]  # the launches alone: no Python validation or allocation in the timing
    if args.baseline:
        builds.append(load_build(args.baseline))
    # axpy at two sizes: 256 KiB per vector stays in L2, so it measures the
    # emulator's per-thread cost; 4 MiB per vector also measures the memory.
    vectors = {n: (rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32))
               for n in (1 << 16, 1 << 20)}
    print(f"host emulation on {os.cpu_count()} CPU cores (CPU timings, not GPU figures)")
    if args.baseline:
        print(f"baseline: {args.baseline}, timed in turn with this build")
        print(f"{'kernel':28s} {'workers':>7s} {'ms':>9s} {'GFLOP/s':>9s} {'base ms':>9s} {'base GFLOP/s':>12s} "
              f"{'this/base':>9s}")
    else:
        print(f"{'kernel':28s} {'workers':>7s} {'ms':>9s} {'GFLOP/s':>9s} {'GFLOP/s/core':>13s}")
    for workers in (1, args.workers):
        for ext in builds:
            ext.set_workers(workers)
        rows = [(f"sgemm_{v} {m}x{n}x{k}", 2.0 * m * n * k,
                 lambda ext, v=v: ext.gemm(v, a.ctypes.data, b.ctypes.data, c.ctypes.data, m, n, k, 0))
                for v in ("tiled", "naive")]
        rows += [(f"axpy_float4 n={size}", 2.0 * size,
                  lambda ext, size=size, x=x, y=y: ext.axpy("float4", size, 1.5, x.ctypes.data, y.ctypes.data, 0))
                 for size, (x, y) in vectors.items()]
        for name, flops, fn in rows:
            if args.baseline:
                s, base = paired_medians([lambda ext=ext: fn(ext) for ext in builds], args.repeats)
                print(f"{name:28s} {workers:7d} {s * 1e3:9.2f} {flops / s / 1e9:9.2f} {base * 1e3:9.2f} "
                      f"{flops / base / 1e9:12.2f} {s / base:9.3f}")
            else:
                s = median_seconds(lambda: fn(builds[0]), args.repeats)
                gf = flops / s / 1e9
                print(f"{name:28s} {workers:7d} {s * 1e3:9.2f} {gf:9.2f} {gf / workers:13.2f}")
    for ext in builds:
        ext.set_workers(0)


if __name__ == "__main__":
    main()
