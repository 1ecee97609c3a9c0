"""Times conv2d_grad_weight on the host backend (the CUDA emulation) for the
bundled model's layer shapes: VGG16 at 1/8 width trained at 96x96 with FCN's
pad 100 (conv1 maps 294x294), 3x3 pad 1, ReLU mask on, batch 4. Prints the
grid tiling the launcher picked for each shape.

Emulator numbers compare tilings under the emulation (and set how long
training on the host takes); they are not GPU numbers.

    PYTHONPATH=$PWD python benchmarks/emu_grad_weight.py [--runs 3]
"""

import argparse

import numpy as np

import fcn_cuda
from fcn_cuda import ops
from timing import median_seconds  # benchmarks/timing.py: this script's own folder is on sys.path

BATCH = 4
SHAPES = [(8, 8, 294), (8, 16, 147), (16, 16, 147), (16, 32, 74), (32, 32, 74), (64, 64, 37)]  # C, K, H = W


def bench(c, k, h, runs, rng):
    x = rng.standard_normal((BATCH, c, h, h), dtype=np.float32)
    dy = rng.standard_normal((BATCH, k, h, h), dtype=np.float32)
    y = rng.standard_normal((BATCH, k, h, h), dtype=np.float32)
    flop = 2 * BATCH * h * h * k * c * 9
    t = median_seconds(lambda: ops.conv2d_grad_weight(x, dy, 3, padding=1, relu_y=y), runs)
    print(f"| {c:3d} | {k:3d} | {h:3d} | {flop / 1e9:6.3f} | {t:7.3f} | {flop / t / 1e9:6.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per shape (median reported)")
    args = parser.parse_args()
    fcn_cuda.use_backend("host")
    print(f"host emulation, {fcn_cuda.emulator_workers()} workers, median of {args.runs}, batch {BATCH}")
    print("|   C |   K |   H |  GFLOP |     s   | GFLOP/s |")
    print("|----:|----:|----:|-------:|--------:|--------:|")
    rng = np.random.default_rng(0)
    for c, k, h in SHAPES:
        bench(c, k, h, args.runs, rng)


if __name__ == "__main__":
    main()
