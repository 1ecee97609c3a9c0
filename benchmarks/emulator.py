"""Speed of the host emulation itself (issue: foundation).

    python benchmarks/emulator.py [--workers N]

Times, on the host backend, the register-blocked tiled SGEMM (a kernel with
two __syncthreads per K step, so fibers switch) and the barrier-free float4
axpy (run as a plain loop, y += a * x in place), with one worker (per-core
figures) and with one worker per core. The launches are called directly
on preallocated arrays, so Python's validation and allocation are not timed. Median of several runs after a warm-up; inputs stay the same
because this measures the emulator's execution, not memory. These are CPU
timings of the emulation, never GPU figures.
"""

import argparse
import os

# NumPy's OpenBLAS threads spin after BLAS calls and steal the cores the
# emulator's workers run on; this script does no BLAS work.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import fcn_cuda
from fcn_cuda import _backend
from timing import median_seconds  # benchmarks/timing.py: this script's own folder is on sys.path



def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="workers for the parallel rows")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    fcn_cuda.use_backend("host")
    rng = np.random.default_rng(0)
    m = n = k = 256
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    c = np.empty((m, n), np.float32)
    ext = _backend.active().ext  # the launches alone: no Python validation or allocation in the timing
    # axpy at two sizes: 256 KiB per vector stays in L2, so it measures the
    # emulator's per-thread cost; 4 MiB per vector also measures the memory.
    vectors = {n: (rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32))
               for n in (1 << 16, 1 << 20)}
    print(f"host emulation on {os.cpu_count()} CPU cores (CPU timings, not GPU figures)")
    print(f"{'kernel':28s} {'workers':>7s} {'ms':>9s} {'GFLOP/s':>9s} {'GFLOP/s/core':>13s}")
    for workers in (1, args.workers):
        fcn_cuda.set_emulator_workers(workers)
        rows = [(f"sgemm_{v} {m}x{n}x{k}", 2.0 * m * n * k,
                 lambda v=v: ext.gemm(v, a.ctypes.data, b.ctypes.data, c.ctypes.data, m, n, k, 0))
                for v in ("tiled", "naive")]
        rows += [(f"axpy_float4 n={size}", 2.0 * size,
                  lambda size=size, x=x, y=y: ext.axpy(size, 1.5, x.ctypes.data, y.ctypes.data, 0))
                 for size, (x, y) in vectors.items()]
        for name, flops, fn in rows:
            s = median_seconds(fn, args.repeats)
            gf = flops / s / 1e9
            print(f"{name:28s} {workers:7d} {s * 1e3:9.2f} {gf:9.2f} {gf / workers:13.2f}")
    fcn_cuda.set_emulator_workers(0)


if __name__ == "__main__":
    main()
