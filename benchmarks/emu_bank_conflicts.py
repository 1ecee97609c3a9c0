"""Counts the shared-memory bank conflicts of every kernel that uses shared
memory, in the host emulation (fcn_cuda.emulator_counters; the model and
what is counted: csrc/emu/smem.h). Counts, not times: they are what the
emulator can say about a GPU without one.

Each run below is one op on one small, typical shape; the table has one row
per kernel (its launch name; a kernel that several runs launch, such as
block_sum, is reported from the first) and kind of access: warp-wide accesses,
wavefronts, the wavefronts without conflicts, the worst n-way conflict of
any one access and where (file:line) the first access that bad is. A new
kernel gets a line in RUNS. Prints a Markdown table; --json PATH also writes
the rows.

    PYTHONPATH=$PWD python benchmarks/emu_bank_conflicts.py [--json PATH]
"""

import argparse
import json
import os
import tempfile

import numpy as np

import fcn_cuda
from fcn_cuda import ops
from fcn_cuda.ops import gemm, metrics, reduce, scan

LAYER = (1, 64, 16, 16, 64, 3, 3)  # N, C, H, W, K, R, S; stride 1, pad 1: a VGG-like conv layer


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def runs():
    """(what ran, a call that runs it): every op whose kernels stage through shared memory."""
    n, c, h, w, k, r, s = LAYER
    x, wt, b = rand(n, c, h, w), rand(k, c, r, s, seed=1), rand(k, seed=2)
    y = np.maximum(ops.conv2d(x, wt, b, 1, 1, False, "igemm"), 0)
    dy = rand(*y.shape, seed=3)
    x3, w3 = rand(1, 3, 64, 64), rand(64, 3, 3, 3, seed=4)  # conv1_1's shape, on a 64 x 64 image
    a = rand(64, 64, seed=5)
    scores, labels = rand(1, 21, 32, 32, seed=6), np.arange(1024, dtype=np.int32).reshape(1, 32, 32) % 21
    layer = "64->64 3x3, 16x16"
    return [
        (f"conv2d igemm, {layer}", lambda: ops.conv2d(x, wt, b, 1, 1, True, "igemm")),
        (f"conv2d igemm_tf32, {layer}", lambda: ops.conv2d(x, wt, b, 1, 1, True, "igemm_tf32")),
        (f"conv2d igemm_bf16, {layer}", lambda: ops.conv2d(x, wt, b, 1, 1, True, "igemm_bf16")),
        (f"conv2d igemm_bf16 (bf16 weights), {layer}",
         lambda: ops.conv2d(x, ops.to_bf16_weights(wt), b, 1, 1, True, "igemm_bf16")),
        *[(f"conv2d {v}, {layer}", lambda v=v: ops.conv2d(x, wt, b, 1, 1, True, v))
          for v in ("mma_tf32", "mma_bf16", "wgmma_tf32", "wgmma_bf16")],
        (f"conv2d mma_bf16 (bf16 weights), {layer}",
         lambda: ops.conv2d(x, ops.to_bf16_weights(wt), b, 1, 1, True, "mma_bf16")),
        ("conv2d small_c, 3->64 3x3, 64x64", lambda: ops.conv2d(x3, w3, None, 1, 1, True, "small_c")),
        (f"conv2d_grad_weight (ReLU mask), {layer}", lambda: ops.conv2d_grad_weight(x, dy, 3, 1, 1, y)),
        ("gemm tiled, 64x64x64", lambda: gemm.gemm(a, a, "tiled")),
        *[(f"gemm wmma_{t}, 64x64x64", lambda t=t: gemm.gemm(a, a, f"wmma_{t}")) for t in ("tf32", "f16", "bf16")],
        ("block_sum, 65536 floats", lambda: reduce.block_sum(rand(65536))),
        ("softmax_cross_entropy, 21 x 32x32", lambda: ops.softmax_cross_entropy(scores, labels)),
        ("exclusive_scan, 4096 ints", lambda: scan.exclusive_scan(np.ones(4096, np.int32))),
        ("confusion_matrix, 21 classes, 32x32", lambda: metrics.confusion_matrix(labels.ravel(), labels.ravel(), 21)),
    ]


def counts(run):
    fcn_cuda.reset_emulator_counters()
    fcn_cuda.count_bank_conflicts(True)
    try:
        run()
    finally:
        fcn_cuda.count_bank_conflicts(False)
    return fcn_cuda.emulator_counters()


def table():
    """The rows: one per kernel and kind of access."""
    rows, seen = [], set()
    for label, run in runs():
        for kernel, kinds in sorted(counts(run).items()):
            if kernel in seen:
                continue
            seen.add(kernel)
            for kind, cnt in sorted(kinds.items()):
                rows.append(dict(op=label, kernel=kernel, kind=kind, **cnt))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    fcn_cuda.use_backend("host")
    rows = table()
    print("| kernel | op, shape | access | warp accesses | wavefronts | ideal | worst | where |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    for row in rows:
        worst = f"{row['max_way']}-way" if row["max_way"] > 1 else "none"
        print(f"| {row['kernel']} | {row['op']} | {row['kind']} | {row['accesses']} | {row['wavefronts']} | "
              f"{row['ideal']} | {worst} | {row['worst_at'] or '-'} |")
    if args.json:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.json)) or ".")
        with os.fdopen(fd, "w") as f:
            json.dump({"layer": LAYER, "rows": rows}, f, indent=1)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
