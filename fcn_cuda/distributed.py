"""Data-parallel training and inference on torch.distributed (docs/distributed.md).

Launched by torchrun (WORLD_SIZE > 1 in the environment), every rank runs
the same `fcn_cuda.train(...)` (training.train) / `fcn-cuda train` / `fcn-cuda infer` call.
Training is then the one-process run of the same global batch:

  batch      batch_size is the global batch; rank r reads only the images
             at places r*b .. r*b+b-1 of it (b = batch_size / world size)
  loss       divided by the global batch's divisor (its image count, or its
             valid pixels summed over ranks: ops.loss_divisor)
  dropout    each image's mask is keyed by its place in the global batch
             (ops.dropout's offset), so the ranks draw the one-process masks
  gradients  summed over ranks by all_reduce in flat buckets; every rank
             then applies the same SGD step to the same weights
  validation images dealt out over the ranks, confusion matrices summed
             (integers: the very scores of one process)
  files      rank 0 alone writes checkpoints, curves and final weights
             (atomically); every rank resumes from the same checkpoint

The transport is torch.distributed: NCCL between GPUs (CuPy arrays handed
to torch through DLPack, zero-copy, on CuPy's current stream), gloo on the
host backend (NumPy arrays through torch.from_numpy). Every collective
times out after FCN_CUDA_DIST_TIMEOUT seconds (60): a rank that dies stops
the others with RankLost instead of a hang. A signal (Ctrl-C, SIGTERM) on
any rank stops them all after the same step, with one checkpoint.
"""

import atexit
import contextlib
import hashlib
import json
import os
from dataclasses import asdict
from datetime import timedelta

import numpy as np

from . import _backend, metrics, ops
from .training import Trainer, confusion, deployed

TIMEOUT_ENV = "FCN_CUDA_DIST_TIMEOUT"  # seconds a collective may wait for the other ranks
BACKEND_ENV = "FCN_CUDA_DIST_BACKEND"  # 'nccl' | 'gloo'; default: nccl on the cuda backend, gloo on host
DEFAULT_TIMEOUT = 60.0
BUCKET_BYTES = 25 * 2**20  # gradients per all_reduce call (DDP's default bucket: 25 MiB)
_STOP_REASONS = ("SIGINT", "SIGTERM", "the time limit")
_lost = False  # whether a collective of this process's group failed


class RankLost(RuntimeError):
    """A collective failed: another rank died or did not answer within the timeout."""


def world_size():
    """WORLD_SIZE from the environment (torchrun sets it); 1 when unset."""
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"WORLD_SIZE must be an integer >= 1, got {text!r}")
    return n


def launched():
    """Whether this process is one rank of a data-parallel run (WORLD_SIZE > 1)."""
    return world_size() > 1


def timeout():
    """The collectives' timeout in seconds: FCN_CUDA_DIST_TIMEOUT, else 60."""
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        t = float(text)
    except ValueError:
        t = 0.0
    if not 0 < t < float("inf"):
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds > 0, got {text!r}")
    return t


def _torch():
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        raise ImportError("a data-parallel run (WORLD_SIZE > 1, under torchrun) needs PyTorch for torch.distributed: "
                          "pip install 'fcn_cuda[dist]' (or pip install torch)") from None
    if not dist.is_available():
        raise ImportError(f"this PyTorch ({torch.__version__}) was built without torch.distributed")
    return torch, dist


def trainer_class():
    """The Trainer this process runs (fcn_cuda.train's, the CLI's): DataParallelTrainer under torchrun with
    WORLD_SIZE > 1, else Trainer."""
    return DataParallelTrainer if launched() else Trainer


class Ranks:
    """This process's place in the run and the collectives it calls.

    Joins the default process group from torchrun's environment (or uses one
    already set up): NCCL on the cuda backend, gloo on host (FCN_CUDA_DIST_BACKEND
    overrides, e.g. gloo for two ranks sharing one GPU). Every collective
    goes through `all_reduce`, which turns a failure into RankLost."""

    def __init__(self):
        self.torch, self.dist = _torch()
        self.be = _backend.active()
        self.timeout = timeout()
        if not self.dist.is_initialized():
            name = os.environ.get(BACKEND_ENV) or ("nccl" if self.be.name == "cuda" else "gloo")
            if name not in ("nccl", "gloo"):
                raise ValueError(f"{BACKEND_ENV} must be 'nccl' or 'gloo', got {name!r}")
            if name == "nccl":
                if self.be.name != "cuda":
                    raise ValueError("NCCL moves GPU memory: use the cuda backend, or gloo on host")
                # wait() blocks the host and raises on timeout, rather than the watchdog ending the process
                os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
                self.torch.cuda.set_device(self.be.xp.cuda.Device().id)
            self.dist.init_process_group(name, timeout=timedelta(seconds=self.timeout))
            atexit.register(self._close)
        self.rank, self.size = self.dist.get_rank(), self.dist.get_world_size()

    def _close(self):
        """Leaves the group before the interpreter tears down (left to it, gloo's threads
        can abort the process at exit). A group that lost a rank is left alone: its
        collectives may still be waiting."""
        if self.dist.is_initialized() and not _lost:
            self.dist.destroy_process_group()

    def share(self, n):
        """(first, count) of this rank's equal share of n places; n must divide by the world size."""
        count = n // self.size
        return self.rank * count, count

    def stream(self):
        """Torch's current stream made CuPy's, so that NCCL (or gloo's copy) reads the
        arrays after CuPy's kernels wrote them and CuPy's next kernels wait for the sum."""
        if self.be.name == "host":
            return contextlib.nullcontext()
        ptr = self.be.xp.cuda.get_current_stream().ptr
        cuda = self.torch.cuda
        return cuda.stream(cuda.default_stream() if ptr == 0 else cuda.ExternalStream(ptr))

    def tensor(self, a):
        """A torch view of a backend array: NumPy through from_numpy, CuPy through DLPack (no copy)."""
        return self.torch.from_numpy(a) if self.be.name == "host" else self.torch.from_dlpack(a)

    def all_reduce(self, arrays):
        """Sums each (contiguous, backend) array over the ranks, in place: all calls issued, then waited on."""
        try:
            with self.stream():
                works = [self.dist.all_reduce(self.tensor(a), async_op=True) for a in arrays]
                for w in works:
                    w.wait()
        except RuntimeError as e:  # torch's DistError family: a dead peer, a timeout
            global _lost
            _lost = True
            raise RankLost(f"rank {self.rank} of {self.size}: a rank was lost (it died, or did not answer within "
                           f"{self.timeout:g} s; {TIMEOUT_ENV} sets the limit): {e}") from e

    def sum(self, values):
        """Small values (exact as float64: counts, flags, losses) summed over the ranks -> float64 NumPy."""
        a = self.be.xp.array(np.asarray(values, np.float64).ravel())
        self.all_reduce([a])
        return self.be.to_numpy(a)

    def sum_flat(self, arrays):
        """{name: float32 array} summed over the ranks, BUCKET_BYTES per all_reduce
        call rather than one call per tensor; returns views into the summed buckets."""
        xp = self.be.xp
        buckets, current, size = [], [], 0
        for name, a in arrays.items():
            if current and (size + a.size) * 4 > BUCKET_BYTES:
                buckets.append((current, size))
                current, size = [], 0
            current.append((name, size, a))
            size += a.size
        if current:
            buckets.append((current, size))
        flats = []
        for members, size in buckets:
            flat = xp.empty(size, np.float32)
            for _, start, a in members:
                flat[start:start + a.size] = a.ravel()
            flats.append(flat)
        self.all_reduce(flats)
        return {name: flat[start:start + a.size].reshape(a.shape)
                for (members, _), flat in zip(buckets, flats) for name, start, a in members}

    def fingerprint_agrees(self, arrays):
        """Whether every rank holds bit-identical arrays ({name: NumPy array}, same names on all)."""
        h = hashlib.sha256()
        for name, a in arrays.items():
            h.update(name.encode())
            h.update(memoryview(np.ascontiguousarray(a)))  # the array's own bytes: no copy unless it is strided
        words = np.frombuffer(h.digest(), np.uint16).astype(np.float64)  # sums stay exact in float64
        # Every rank's words equal the mean of all ranks' exactly when all are the same.
        mine_is_mean = bool((self.sum(words) == self.size * words).all())
        return self.sum([not mine_is_mean])[0] == 0


class DataParallelTrainer(Trainer):
    """A Trainer that is one rank of a data-parallel run (see the module
    docstring); every rank runs the same code on its share of each batch.
    Construct it, resume it and fit it exactly as a Trainer."""

    def __init__(self, model, config=None, out=None):
        self.ranks = Ranks()
        super().__init__(model, config, out)
        if self.config.batch_size % self.ranks.size:
            raise ValueError(f"batch_size ({self.config.batch_size}) is the global batch and must divide by the "
                             f"world size ({self.ranks.size}): every rank reads an equal share of it")
        self.writes = self.ranks.rank == 0

    def share(self):
        return self.ranks.share(self.config.batch_size)

    def loss_divisor(self, labels):
        cfg = self.config
        counts = None
        if cfg.normalize:
            counts = self.ranks.sum(ops.class_pixel_counts(labels, self.model.num_classes)).astype(np.int64)
        return ops.loss_divisor(counts, cfg.batch_size, cfg.normalize, cfg.class_weights)

    def sum_over_ranks(self, loss, correct, total):
        loss, correct, total = self.ranks.sum([loss, correct, total])
        return float(loss), int(correct), int(total)

    def sum_gradients(self, grads):
        # Frozen parameters (the bilinear upsampling) are never stepped: their gradients stay unsent.
        return {**grads, **self.ranks.sum_flat({k: g for k, g in grads.items() if self.trainable(k)})}

    def agree_to_stop(self, reason):
        """A stop on any rank (a signal, its clock's time limit) stops all after this same step."""
        flags = self.ranks.sum([reason == r for r in _STOP_REASONS])
        if reason or not flags.any():
            return reason
        return f"{_STOP_REASONS[int(np.flatnonzero(flags)[0])]} on another rank"

    def checkpoint_written(self, failure):
        """Rank 0's outcome, shared in one collective before any rank counts
        the step as saved: where rank 0 could not write (a full disk), every
        rank stops, each naming the checkpoint that is still intact."""
        written = self.ranks.sum([self.writes and failure is None])[0] > 0
        if failure is not None:
            raise failure
        if not written:
            raise RuntimeError(f"rank {self.ranks.rank}: rank 0 could not write {self.checkpoint_path()} at step "
                               f"{self.step} (its own error says why); {self._kept()}")

    def _kept(self):
        """What a stopped run leaves to resume from."""
        if not (self.out and self.saved_step is not None):
            return "no checkpoint was written"
        return (f"the last checkpoint, {self.checkpoint_path()} (step {self.saved_step}), is intact: run the same "
                "command again to resume from it")

    def validate(self, dataset):
        model = deployed(self.model, self.config.class_weights)
        return evaluate_sharded(model, dataset, ranks=self.ranks)

    def fit(self, dataset, val_dataset=None, progress=True, max_seconds=None):
        """Trainer.fit on every rank; rank 0 alone shows progress. Raises
        RankLost (naming the last checkpoint, which resumes) when a rank is lost."""
        to_numpy = _backend.active().to_numpy
        config = np.frombuffer(json.dumps(asdict(self.config)).encode(), np.uint8)
        state = {"step": np.array([self.step]), "config": config, **self.model.state_dict(),
                 **{f"momentum.{k}": to_numpy(v) for k, v in self.velocity.items()}}
        if not self.ranks.fingerprint_agrees(state):
            raise ValueError(f"rank {self.ranks.rank}: the ranks start from different weights, momentum, step or "
                             "training config; build the model the same way on every rank (same seed or file) and "
                             "give every rank the same out folder (shared between machines) to resume from")
        try:
            return super().fit(dataset, val_dataset, progress=progress and self.writes, max_seconds=max_seconds)
        except RankLost as e:
            raise RankLost(f"{e}\nTraining stopped at step {self.step}; {self._kept()}") from e


def evaluate_sharded(model, dataset, num_classes=None, ranks=None):
    """fcn_cuda.evaluate with the images dealt out over the ranks (rank r
    scores images r, r + N, ...) and the confusion matrices summed: the same
    four scores as one process, on every rank."""
    ranks = ranks or Ranks()
    c = num_classes or model.num_classes
    hist = confusion(model, dataset, range(ranks.rank, len(dataset), ranks.size), c)
    ranks.all_reduce([hist.view(np.int64)])  # counts < 2^63: the int64 sum is the uint64 one
    return metrics.scores(hist)


def infer_share(items):
    """(this process's items, Ranks or None): under torchrun with WORLD_SIZE > 1,
    rank r of N takes items r, r + N, ...; else every item, and None."""
    if not launched():
        return list(items), None
    ranks = Ranks()
    return list(items)[ranks.rank::ranks.size], ranks
