"""Times each conv2d variant on the host backend (the CUDA emulation).

Default: one VGG-like layer, 64 -> 64 channels, 3x3, pad 1, 64x64 image,
batch 1. --sweep: a few FCN-like shapes with igemm's tile use, the evidence
behind the host's default-variant rule (fcn_cuda.ops.conv2d.conv2d_default_variant).

Emulator numbers only compare the variants under the emulation (and set how
long tests take); they are not GPU numbers.

    PYTHONPATH=$PWD python benchmarks/emu_conv2d.py [--runs 5] [--sweep]
"""

import argparse

import numpy as np

import fcn_cuda
from fcn_cuda import ops
from fcn_cuda.ops.conv2d import conv2d_default_variant, conv2d_tile_use
from timing import median_seconds  # benchmarks/timing.py: this script's own folder is on sys.path

LAYER = (1, 64, 64, 64, 64, 3, 3, 1, 1)  # N, C, H, W, K, R, S, stride, padding
SWEEP = [
    (1, 3, 5, 5, 8, 3, 3, 1, 100),      # conv1_1 on a tiny image: mostly padding, 8 channels
    (1, 3, 64, 64, 64, 3, 3, 1, 1),
    (1, 1, 64, 64, 64, 3, 3, 1, 1),
    (1, 64, 32, 32, 64, 3, 3, 1, 1),
    (1, 64, 64, 64, 1, 3, 3, 1, 1),     # one output channel
    (1, 64, 16, 16, 21, 1, 1, 1, 0),    # score layer
    (2, 64, 3, 3, 64, 1, 1, 1, 0),
    (1, 512, 8, 8, 512, 7, 7, 1, 0),    # fc6 on a 2x2 output
    (1, 4096, 4, 4, 21, 1, 1, 1, 0),    # score_fr on 16 pixels
]



def bench(shape, runs, rng):
    n, c, h, w, k, r, s, stride, pad = shape
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((k, c, r, s), dtype=np.float32)
    b = rng.standard_normal(k, dtype=np.float32)
    p, q = (h + 2 * pad - r) // stride + 1, (w + 2 * pad - s) // stride + 1
    flop = 2 * n * k * p * q * c * r * s
    use = conv2d_tile_use(n * p * q, k, c * r * s)
    print(f"x {n}x{c}x{h}x{w} * w {k}x{c}x{r}x{s} stride {stride} pad {pad}: {flop / 1e6:.1f} MFLOP, "
          f"igemm tile use {use:.2f}, default {conv2d_default_variant(n * p * q, k, c * r * s)}")
    for variant in ops.conv2d_variants(wt.shape):
        t = median_seconds(lambda: ops.conv2d(x, wt, b, stride, pad, relu=True, variant=variant), runs)
        print(f"  {variant:10s} {t * 1e3:9.2f} ms  {flop / t / 1e9:7.3f} GFLOP/s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per variant (median reported)")
    parser.add_argument("--sweep", action="store_true", help="time the FCN-like shapes of the default rule")
    args = parser.parse_args()
    fcn_cuda.use_backend("host")
    print(f"host emulation, {fcn_cuda.emulator_workers()} workers, median of {args.runs}")
    rng = np.random.default_rng(0)
    for shape in SWEEP if args.sweep else [LAYER]:
        bench(shape, args.runs, rng)


if __name__ == "__main__":
    main()
