"""Times each conv2d variant on the host backend (the CUDA emulation) on one
VGG-like layer: 64 -> 64 channels, 3x3, pad 1, 64x64 image, batch 1.

Emulator numbers only say how the variants compare under the emulation (and
how long tests take); they are not GPU numbers.

    PYTHONPATH=$PWD python benchmarks/emu_conv2d.py [--runs 5]
"""

import argparse
import time

import numpy as np

import fcn_cuda
from fcn_cuda import ops


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per variant (median reported)")
    args = parser.parse_args()
    fcn_cuda.use_backend("host")
    n, c, h, w, k, r, s, pad = 1, 64, 64, 64, 64, 3, 3, 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((k, c, r, s), dtype=np.float32)
    b = rng.standard_normal(k, dtype=np.float32)
    p, q = h + 2 * pad - r + 1, w + 2 * pad - s + 1
    flop = 2 * n * k * p * q * c * r * s
    print(f"conv2d {n}x{c}x{h}x{w} * {k}x{c}x{r}x{s} pad {pad}: {flop / 1e6:.0f} MFLOP, "
          f"host emulation, {fcn_cuda.emulator_workers()} workers")
    for variant in ops.CONV2D_VARIANTS:
        ops.conv2d(x, wt, b, padding=pad, relu=True, variant=variant)  # warm-up
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            ops.conv2d(x, wt, b, padding=pad, relu=True, variant=variant)
            times.append(time.perf_counter() - t0)
        t = float(np.median(times))
        print(f"  {variant:8s} {t * 1e3:9.2f} ms  {flop / t / 1e9:7.3f} GFLOP/s")


if __name__ == "__main__":
    main()
