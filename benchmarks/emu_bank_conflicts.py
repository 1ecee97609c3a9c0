"""Counts the shared-memory bank conflicts of the conv2d and GEMM kernels in
the host emulation (fcn_cuda.emulator_counters; the model and what is
counted: csrc/emu/smem.h). Counts, not times: they are what the emulator can
say about a GPU without one.

One VGG-like layer (64 -> 64 channels, 3x3, pad 1, 16x16 image, batch 1)
per conv2d variant that stages through shared memory, and a 64 x 64 x 64
GEMM per GEMM variant that does. Prints a Markdown table; --json PATH also
writes the rows.

    PYTHONPATH=$PWD python benchmarks/emu_bank_conflicts.py [--json PATH]
"""

import argparse
import json
import os
import tempfile

import numpy as np

import fcn_cuda
from fcn_cuda import ops
from fcn_cuda.ops import gemm

LAYER = (1, 64, 16, 16, 64, 3, 3)  # N, C, H, W, K, R, S; stride 1, pad 1
CONV_VARIANTS = [v for v in ops.CONV2D_VARIANTS if v.startswith(("igemm", "mma"))]
GEMM_VARIANTS = [v for v in gemm.GEMM_VARIANTS if v != "naive"]  # naive reads no shared memory


def counts(run):
    fcn_cuda.reset_emulator_counters()
    fcn_cuda.count_bank_conflicts(True)
    try:
        run()
    finally:
        fcn_cuda.count_bank_conflicts(False)
    return fcn_cuda.emulator_counters()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    fcn_cuda.use_backend("host")
    rng = np.random.default_rng(0)
    n, c, h, w, k, r, s = LAYER
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((k, c, r, s), dtype=np.float32)
    a = rng.standard_normal((64, 64), dtype=np.float32)
    runs = [(f"conv2d {v}", lambda v=v: ops.conv2d(x, wt, None, 1, 1, True, v)) for v in CONV_VARIANTS]
    runs += [(f"gemm {v}", lambda v=v: gemm.gemm(a, a, v)) for v in GEMM_VARIANTS]
    rows = []
    for label, run in runs:
        for kernel, kinds in sorted(counts(run).items()):
            for kind, cnt in sorted(kinds.items()):
                rows.append(dict(op=label, kernel=kernel, kind=kind, **cnt))
    print("| op | kernel | access | warp accesses | wavefronts | ideal | conflicts | worst n-way |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['op']} | {row['kernel']} | {row['kind']} | {row['accesses']} | {row['wavefronts']} | "
              f"{row['ideal']} | {row['conflicts']} | {row['max_way']} |")
    if args.json:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.json)) or ".")
        with os.fdopen(fd, "w") as f:
            json.dump({"layer": LAYER, "rows": rows}, f, indent=1)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
