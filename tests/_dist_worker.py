"""One rank of the data-parallel tests' runs (launched by torchrun from
tests/training/test_distributed.py), and the pieces those tests share with it: the
tiny model, the data, the config.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/_dist_worker.py OUT LOG [options]

trains (fcn_cuda.train, resuming from OUT if a checkpoint is there) and
leaves in LOG, per rank: the dataset indices it read, the files it wrote,
its final weights and the sharded validation scores of `varied_model`.
The gradients go in buckets of 2 KiB, so that the tiny model's span several.
"""

import argparse
import errno
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

import fcn_cuda
from fcn_cuda.data import SyntheticShapes

WIDTHS = ((2, 3), (3, 3), (4, 4, 4), (4, 4, 4), (4, 4, 4))


def small_model():
    """A tiny FCN-8s whose score layers start non-zero, so that every parameter moves from the first step."""
    m = fcn_cuda.FCN("8s", 4, widths=WIDTHS, fc=6, seed=3)
    sd = m.state_dict()
    rng = np.random.default_rng(3)
    for k in sd:
        if k.startswith("score"):
            sd[k] = (rng.standard_normal(sd[k].shape) * 0.01).astype(np.float32)
    m.load_state_dict(sd)
    return m


def varied_model():
    """small_model with large score layers: its predictions spread over every class (a confusion matrix to check)."""
    m = small_model()
    sd = m.state_dict()
    for k in sd:
        if k.startswith("score"):
            sd[k] = sd[k] * np.float32(300)
    m.load_state_dict(sd)
    return m


def datasets():
    return SyntheticShapes(10, size=20, seed=1), SyntheticShapes(5, size=20, seed=2)


def config(**kw):
    """Dropout on, a per-pixel loss with class weights (the global valid-pixel count matters), a rate that moves."""
    base = dict(iterations=4, batch_size=4, lr=2e-3, momentum=0.9, normalize=True, class_weights=(1, 3, 4.5, 6),
                val_every=2, checkpoint_every=2, seed=5)
    base.update(kw)
    return fcn_cuda.TrainConfig(**base)


class Logged:
    """A dataset that notes every index read."""

    def __init__(self, data, log, kind):
        self.data, self.log, self.kind = data, log, kind

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.log.append((self.kind, int(i)))
        return self.data[i]


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("log")
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--kill-at", type=int, help="rank 1 kills itself (SIGKILL) as this step starts")
    ap.add_argument("--term-at", type=int, help="rank 1 sends itself SIGTERM as this step starts")
    ap.add_argument("--stall-at", type=int, help="rank 1 stops answering (sleeps) as this step starts")
    ap.add_argument("--full-disk-at", type=int, help="rank 0's checkpoint of this step fails as on a full disk")
    args = ap.parse_args(argv)
    fcn_cuda.use_backend(os.environ.get("FCN_CUDA_BACKEND", "host"))
    if fcn_cuda.backend() == "host":
        fcn_cuda.set_emulator_workers(1)
    from fcn_cuda import distributed, files, training
    from fcn_cuda.weights import safetensors as own_files

    distributed.BUCKET_BYTES = 2048
    rank = int(os.environ["RANK"])
    log = Path(args.log)
    log.mkdir(parents=True, exist_ok=True)
    reads, writes = [], []

    def logging(fn):
        def wrapped(path, *a, **kw):
            writes.append(Path(path).name)
            return fn(path, *a, **kw)
        return wrapped

    def full_disk(fn):
        def wrapped(path, tensors, meta):
            if int(meta["step"]) == args.full_disk_at:
                raise OSError(errno.ENOSPC, "No space left on device (the test's)", str(path))
            return fn(path, tensors, meta)
        return wrapped

    training.save_safetensors = logging(full_disk(training.save_safetensors))
    own_files.save = logging(own_files.save)  # FCN.save: the final weights
    files.save_png = logging(files.save_png)  # the curves
    step = training.Trainer.train_step

    def train_step(self, x, labels):
        if rank == 1 and self.step + 1 == args.kill_at:
            (log / "killed_at").write_text(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
        if rank == 1 and self.step + 1 == args.term_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if rank == 1 and self.step + 1 == args.stall_at:
            (log / "stalled_at").write_text(repr(time.time()))
            time.sleep(float(os.environ.get("STALL_SECONDS", "3600")))
        return step(self, x, labels)

    training.Trainer.train_step = train_step
    train, val = datasets()
    try:
        trainer = fcn_cuda.train(small_model(), Logged(train, reads, "train"), Logged(val, reads, "val"),
                                 out=args.out, config=config(iterations=args.iterations),
                                 progress=False)
    except distributed.RankLost:
        (log / f"lost_at{rank}").write_text(repr(time.time()))
        raise
    np.savez(log / f"rank{rank}.npz", **trainer.model.state_dict())
    scores = distributed.evaluate_sharded(varied_model(), val)
    (log / f"rank{rank}.json").write_text(json.dumps({
        "reads": reads, "writes": writes, "step": trainer.step, "stopped_by": trainer.stopped_by,
        "loss": trainer.history.loss, "val": trainer.history.val, "final_scores": scores}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
