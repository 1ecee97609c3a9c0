"""Times FCN's last stage on the host backend (the CUDA emulation): the fused
ops.upsample_argmax against the unfused conv_transpose2d_window + argmax
(and + softmax_argmax with probabilities).

Default: 21 classes, a 63 x 63 coarse map upsampled by k16 s8 (upscore8)
into a 500 x 500 window at offset 6 (offset 31 needs a 70 x 70 map, FCN-8s'
own at 500 x 500: that row too). Python validation and allocation are
included on both sides (trusted=True: no per-channel check), as a caller sees
them. One emulator worker unless --workers.

Emulator numbers compare the two paths under the emulation only; they are
not GPU numbers.

    PYTHONPATH=$PWD python benchmarks/emu_head.py [--runs 5] [--workers 1]
"""

import argparse

import numpy as np

import fcn_cuda
from fcn_cuda import ops
from timing import median_seconds  # benchmarks/timing.py: this script's own folder is on sys.path

CASES = [  # (C, h, w, k, stride, out, offset)
    (21, 63, 63, 16, 8, 500, 6),
    (21, 70, 70, 16, 8, 500, 31),
]



def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    fcn_cuda.use_backend("host")
    fcn_cuda.set_emulator_workers(args.workers)
    rng = np.random.default_rng(0)
    print(f"host emulation, {args.workers} worker(s), median of {args.runs} (CPU timings, not GPU figures)")
    print(f"{'case':34s} {'path':28s} {'ms':>9s} {'vs unfused':>10s}")
    for c, h, w, k, s, out, off in CASES:
        x = rng.standard_normal((1, c, h, w)).astype(np.float32)
        wt = fcn_cuda.bilinear_weights(c, k)
        window = (x, wt, s, out, out, off)

        def unfused(probs):
            up = ops.conv_transpose2d_window(*window, variant="bilinear", trusted=True)
            return ops.softmax_argmax(up) if probs else ops.argmax(up)

        case = f"{c}x{h}x{w} k{k}s{s} -> {out}x{out} @{off}"
        for probs in (False, True):
            base = median_seconds(lambda: unfused(probs), args.runs)
            fused = median_seconds(lambda: ops.upsample_argmax(*window, probs=probs, trusted=True), args.runs)
            what = "labels + probs" if probs else "labels"
            print(f"{case:34s} {'unfused ' + what:28s} {1e3 * base:9.2f} {1.0:10.2f}")
            print(f"{case:34s} {'fused ' + what:28s} {1e3 * fused:9.2f} {base / fused:10.2f}")


if __name__ == "__main__":
    main()
