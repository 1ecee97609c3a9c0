"""Times the gradient all-reduce of one data-parallel step
(fcn_cuda.distributed.Ranks.sum_flat) for FCN-8s's trainable parameters,
cut three ways: one call per tensor, 25 MiB buckets (what training uses),
one flat call. Run under torchrun, one rank per GPU (NCCL), or on the host
backend (gloo, host memory: not a GPU figure):

    torchrun --nproc-per-node 8 benchmarks/dist_allreduce.py [--runs 10] [--width-divisor 1] [--out DIR]

Each time is the median wall time of --runs calls after a warm-up, from the
packing of the buckets to the sums being readable on CuPy's stream (the
stream is synchronised). Rank 0 prints ms and the bus bandwidth
2 (N - 1) / N x bytes / time (nccl-tests' definition) per way, and writes
them to <DIR: benchmarks/results>/<device>-dist-allreduce-<date>.json.
docs/distributed.md holds what they should be, on paper.
"""

import argparse
import datetime
import json
import math
import sys
from pathlib import Path

import numpy as np

import fcn_cuda
from fcn_cuda import _backend, distributed
from fcn_cuda.model import VGG16_BLOCKS, param_shapes
from timing import median_seconds  # benchmarks/timing.py: this script's own folder is on sys.path

WAYS = {"per tensor": 0, "25 MiB buckets": distributed.BUCKET_BYTES, "one flat call": math.inf}


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--width-divisor", type=int, default=1, help="VGG16 channels / this (1: full width)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder for the result file")
    args = ap.parse_args(argv)
    if not distributed.launched():
        raise SystemExit("run it under torchrun with --nproc-per-node 2 or more")
    be = _backend.active()
    if be.name == "host":
        fcn_cuda.set_emulator_workers(1)
    ranks = distributed.Ranks()
    widths = tuple(tuple(max(1, c // args.width_divisor) for c in block) for block in VGG16_BLOCKS)
    shapes = {k: v for k, v in param_shapes("8s", 21, widths, max(1, 4096 // args.width_divisor)).items()
              if not k.startswith("upscore")}  # frozen: never sent
    grads = {k: be.xp.ones(v, np.float32) for k, v in shapes.items()}
    nbytes = 4 * sum(g.size for g in grads.values())
    def reduce():
        ranks.sum_flat(grads)
        if be.name == "cuda":
            be.xp.cuda.get_current_stream().synchronize()

    rows = []
    for way, bucket in WAYS.items():
        distributed.BUCKET_BYTES = bucket
        summed = ranks.sum_flat(grads)  # each way timed does the work: every element sums to the world size
        if not all(bool((s == ranks.size).all()) for s in summed.values()):
            raise SystemExit(f"rank {ranks.rank}: the all-reduce {way} did not sum the gradients")
        seconds = median_seconds(reduce, args.runs)
        busbw = 2 * (ranks.size - 1) / ranks.size * nbytes / seconds / 1e9
        rows.append({"way": way, "bucket_bytes": None if math.isinf(bucket) else bucket, "ms": 1e3 * seconds,
                     "bus_GBps": busbw})
    if ranks.rank != 0:
        return 0
    device = (be.xp.cuda.runtime.getDeviceProperties(be.xp.cuda.Device().id)["name"].decode()
              if be.name == "cuda" else "host-gloo")
    print(f"{device}, {ranks.size} ranks, {len(grads)} tensors, {nbytes / 1e6:.1f} MB of fp32 gradients"
          f" ({'a GPU measurement' if be.name == 'cuda' else 'host memory over gloo: not a GPU figure'})")
    for r in rows:
        print(f"  {r['way']:>15s}  {r['ms']:9.2f} ms  {r['bus_GBps']:7.2f} GB/s bus bandwidth")
    out = Path(args.out) / f"{device.replace(' ', '-')}-dist-allreduce-{datetime.date.today():%Y%m%d}.json"
    from fcn_cuda.files import atomic_write

    atomic_write(out, [json.dumps({"device": device, "ranks": ranks.size, "transport": ranks.dist.get_backend(),
                                   "bytes": nbytes, "tensors": len(grads), "runs": args.runs,
                                   "width_divisor": args.width_divisor, "rows": rows}, indent=1).encode()])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
