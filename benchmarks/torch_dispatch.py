"""The per-call cost of reaching the kernels through PyTorch: each op on tiny
inputs (its kernel takes microseconds, so the call itself is what is timed)
through torch.ops.fcn_cuda, through the fcn_cuda.torch wrapper (its argument
checks on top), and directly through fcn_cuda.ops on arrays. Rounds
alternate the three; each figure is the median over rounds of each round's
median. The suite's dispatch rows (python -m benchmarks --only
torch.ops.fcn_cuda) time the same calls at FCN-8s shapes.

On the host these are CPU timings of the emulation's Python and launch path,
not GPU numbers; --device cuda times the GPU path (a sync after every call,
on both sides).

    PYTHONPATH=$PWD python benchmarks/torch_dispatch.py [--device cpu|cuda] [--calls 300] [--rounds 7]
"""

import argparse
import statistics

import numpy as np
import torch

import fcn_cuda
import fcn_cuda.torch as fct
from fcn_cuda import ops
from fcn_cuda.bilinear import bilinear_weights
from fcn_cuda.ops.loss import softmax_cross_entropy_on_device
from timing import median_seconds  # benchmarks/timing.py: this script's own folder is on sys.path


def calls(device):
    """{op: (torch.ops call, wrapper call, direct call)} on shared tiny inputs."""
    gen = torch.Generator().manual_seed(0)

    def t(*shape):
        return torch.randn(*shape, generator=gen).to(device)

    x, w, b, s = t(1, 3, 5, 6), t(4, 3, 3, 3), t(4), t(1, 3, 5, 6)
    big, feat, sw = t(1, 3, 9, 11), t(1, 6, 9, 11), t(3, 6, 1, 1)
    bil = torch.from_numpy(bilinear_weights(3, 4)).to(device)
    labels = torch.zeros(1, 5, 6, dtype=torch.int32, device=device)
    top = torch.ops.fcn_cuda
    tensors = dict(x=x, w=w, b=b, s=s, big=big, bil=bil, feat=feat, sw=sw, labels=labels)
    xp = fcn_cuda._backend.active().xp
    arr = {k: xp.asarray(v.cpu().numpy()) for k, v in tensors.items()}  # the direct calls' own copies
    return {
        "conv2d": (lambda: top.conv2d(x, w, b, [1, 1], [1, 1], True), lambda: fct.conv2d(x, w, b, 1, 1, True),
                   lambda: ops.conv2d(arr["x"], arr["w"], arr["b"], 1, 1, True)),
        "max_pool2d": (lambda: top.max_pool2d(big, [2, 2], [2, 2], True), lambda: fct.max_pool2d(big),
                       lambda: ops.max_pool2d(arr["big"])),
        "conv_transpose2d": (lambda: top.conv_transpose2d(x, bil, None, [2, 2], [0, 0]),
                             lambda: fct.conv_transpose2d(x, bil, stride=2),
                             lambda: ops.conv_transpose2d(arr["x"], arr["bil"], stride=2)),
        "crop_add": (lambda: top.crop_add(x, big, [1, 2]), lambda: fct.crop_add(x, big, (1, 2)),
                     lambda: ops.crop_add(arr["x"], arr["big"], (1, 2))),
        "score_crop_add": (lambda: top.score_crop_add(x, feat, sw, None, [1, 2], 1.0),
                           lambda: fct.score_crop_add(x, feat, sw, offset=(1, 2)),
                           lambda: ops.score_crop_add(arr["x"], arr["feat"], arr["sw"], None, (1, 2))),
        "softmax": (lambda: top.softmax(s), lambda: fct.softmax(s), lambda: ops.softmax(arr["s"])),
        "argmax": (lambda: top.argmax(s), lambda: fct.argmax(s), lambda: ops.argmax(arr["s"])),
        "upsample_argmax": (lambda: top.upsample_argmax(x, bil, [2, 2], [9, 11], [1, 1]),
                            lambda: fct.upsample_argmax(x, bil, 2, (9, 11), 1),
                            lambda: ops.upsample_argmax(arr["x"], arr["bil"], 2, 9, 11, 1)),
        "softmax_cross_entropy": (lambda: top.softmax_cross_entropy(s, labels, 255, False, None),
                                  lambda: fct.softmax_cross_entropy(s, labels),
                                  # the op's own work: the loss stays on the device, as the op leaves it
                                  lambda: softmax_cross_entropy_on_device(arr["s"], arr["labels"])),
        "dropout": (lambda: top.dropout(x, 0.5, 1, 2, 0), lambda: fct.dropout(x, 0.5, 1, 2),
                    lambda: ops.dropout(arr["x"], 0.5, 1, 2)),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--calls", type=int, default=300, help="calls per round and side")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    fcn_cuda.use_backend("host" if args.device == "cpu" else "cuda")
    if args.device == "cpu":
        fcn_cuda.set_emulator_workers(1)
        torch.set_num_threads(1)
        print("HOST EMULATION: CPU timings of the call path, not GPU numbers")
        sync = lambda: None  # noqa: E731
    else:
        print(f"GPU: {torch.cuda.get_device_name()}")
        sync = torch.cuda.synchronize
    print(f"{'op':24s} {'torch.ops us':>13s} {'wrapper us':>11s} {'direct us':>10s} {'torch.ops - direct':>19s}")
    overheads = []
    for name, fns in calls(args.device).items():
        timed = [lambda f=f: (f(), sync()) for f in fns]
        rounds = [[median_seconds(f, args.calls) * 1e6 for f in timed] for _ in range(args.rounds)]
        through, wrapper, direct = (statistics.median(r[i] for r in rounds) for i in range(3))
        overheads.append(through - direct)
        print(f"{name:24s} {through:13.1f} {wrapper:11.1f} {direct:10.1f} {through - direct:19.1f}")
    print(f"median cost of the torch dispatch per call: {statistics.median(overheads):.1f} us "
          f"({args.rounds} rounds x {args.calls} calls per op and side)")


if __name__ == "__main__":
    main()
