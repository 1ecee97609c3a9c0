"""The training loop: the reference's SGD recipe over the hand-written
backward pass, with validation, atomic checkpoints and exact resume.

Every step is kernels: forward (training mode), the loss kernel, the
backward pass (fcn_cuda.backward), one SGD kernel per parameter. Given a seed,
the image order (a permutation per epoch) and the dropout masks (Philox,
keyed by seed and step) are functions of the step alone, so a run resumed
from a checkpoint computes exactly the losses an unbroken run would.
"""

import functools
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import _backend, metrics, ops
from .backward import backward, forward_loss
from .model import deployed
from .weights import CHECKPOINT_FORMAT, MOMENTUM_PREFIX, WeightFileError, load_safetensors, save_safetensors

REFERENCE_LR = {"32s": 1e-10, "16s": 1e-12, "8s": 1e-14}


def _is_int_at_least(v, least):
    return not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v >= least


def _is_finite_nonnegative(v):
    return not isinstance(v, bool) and isinstance(v, (int, float, np.floating)) and 0 <= v < math.inf


def _is_sequence(v):
    return isinstance(v, (tuple, list)) or (isinstance(v, np.ndarray) and v.ndim == 1)


@dataclass
class TrainConfig:
    """The reference recipe by default (docs/fcn-reference.md, 'Training recipe')."""

    iterations: int = 100_000
    lr: float = None  # None: the reference's per-variant rate
    momentum: float = 0.99
    weight_decay: float = 5e-4
    bias_lr_mult: float = 2.0  # biases: 2x lr, no decay
    input_lr_mult: float = 1.0  # conv1_1's weights (see Trainer.rate)
    warmup: int = 0  # ramp the rate up linearly over this many steps (0: none, the reference)
    lr_drops: tuple = ()  # steps from which the rate is 10x lower, each ("multistep"; (): constant, the reference)
    train_upsampling: bool = False  # the reference freezes the bilinear deconvolutions
    normalize: bool = False  # the reference sums the loss over pixels (divides by the batch only)
    class_weights: tuple = None  # per-class loss weights, as torch's cross_entropy(weight=); None: all 1
    dropout: bool = True
    batch_size: int = 1
    val_every: int = 4000
    checkpoint_every: int = 4000
    seed: int = 0
    target_mean_iu: float = None  # stop early once a validation reaches this mean IU

    def __post_init__(self):
        for name, least in (("iterations", 0), ("warmup", 0), ("batch_size", 1), ("val_every", 0),
                            ("checkpoint_every", 0)):
            if not _is_int_at_least(getattr(self, name), least):
                raise ValueError(f"TrainConfig.{name} must be an integer >= {least}, got {getattr(self, name)!r}")
        for name in ("lr", "weight_decay", "bias_lr_mult", "input_lr_mult"):
            v = getattr(self, name)
            if name == "lr" and v is None:  # the reference's rate
                continue
            if not _is_finite_nonnegative(v):
                raise ValueError(f"TrainConfig.{name} must be a finite number >= 0, got {v!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"TrainConfig.momentum must be in [0, 1), got {self.momentum!r}")
        # Tuples, also when read back from a checkpoint's JSON lists.
        if not _is_sequence(self.lr_drops) or not all(_is_int_at_least(d, 1) for d in self.lr_drops):
            raise ValueError(f"TrainConfig.lr_drops must be steps >= 1, got {self.lr_drops!r}")
        self.lr_drops = tuple(sorted(int(d) for d in self.lr_drops))
        if self.class_weights is not None:
            w = self.class_weights
            if not _is_sequence(w) or not len(w) or not all(_is_finite_nonnegative(v) for v in w):
                raise ValueError(f"TrainConfig.class_weights must be None or one finite number >= 0 per class, "
                                 f"got {w!r}")
            self.class_weights = tuple(float(v) for v in w)

    def resolved_lr(self, variant):
        return REFERENCE_LR[variant] if self.lr is None else self.lr


@dataclass
class History:
    step: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    pixel_acc: list = field(default_factory=list)
    val_step: list = field(default_factory=list)
    val: list = field(default_factory=list)  # dicts of the four scores


@functools.lru_cache(maxsize=4)  # every image of a batch asks: draw each epoch's order once
def _order(n, seed, epoch):
    order = np.random.default_rng([seed, epoch]).permutation(n)
    order.setflags(write=False)  # shared by the cache
    return order


def batch_indices(n, batch_size, seed, step):
    """Dataset indices of batch `step`: epochs are seeded permutations."""
    first = step * batch_size
    out = []
    for j in range(first, first + batch_size):
        epoch, pos = divmod(j, n)
        out.append(int(_order(n, seed, epoch)[pos]))
    return out


def make_batch(dataset, indices, be):
    """(x, labels) on the device: preprocessed images and int32 labels (same size within a batch)."""
    imgs, lbls = zip(*(dataset[i] for i in indices))
    if len({im.shape for im in imgs}) != 1:
        raise ValueError("images of one batch must share a size; use batch_size=1 for mixed sizes")
    x = ops.preprocess(be.xp.asarray(np.stack(imgs)))
    return x, be.xp.asarray(np.stack(lbls).astype(np.int32))


def confusion(model, dataset, indices, num_classes, progress=None, crf=None):
    """The confusion matrix (C x C uint64, on the device) of the model's predictions on dataset[i], i in indices.
    crf: as fcn_cuda.infer's (True, or dense_crf parameters): the labels are the dense CRF's, on the softmax of
    the scores."""
    from .crf import settings
    from .inference import infer

    be = _backend.active()
    hist = be.xp.zeros((num_classes, num_classes), dtype=np.uint64)
    with_crf = settings(crf) is not None
    for i in indices:
        img, lbl = dataset[i]
        if with_crf:
            pred = be.xp.asarray(infer(img, model, crf=crf))[None]
        else:
            pred = ops.argmax(model(ops.preprocess(be.xp.asarray(img))))
        hist = metrics.confusion_matrix(be.xp.asarray(lbl.astype(np.int32))[None], pred, num_classes, hist)
        if progress:
            progress.update(1)
    return hist


def evaluate(model, dataset, num_classes=None, progress=None, crf=None):
    """The four reference scores over a whole dataset (one confusion matrix); crf as confusion's."""
    return metrics.scores(confusion(model, dataset, range(len(dataset)), num_classes or model.num_classes, progress,
                                    crf))


class Trainer:
    """Holds the model, the momentum buffers and the history of one run.

    With class_weights, validation scores and final.safetensors hold the
    model with the class prior removed (`deployed`); checkpoints keep the
    trained weights, and load_model reads them as the deployed model too.

    One process sees each whole batch. distributed.DataParallelTrainer (a
    torchrun rank) overrides the few methods under "data-parallel seams" to
    see its share of it and sum what the ranks computed."""

    writes = True  # whether this process writes the run's files (of data-parallel ranks, rank 0 alone)

    def __init__(self, model, config=None, out=None):
        self.model = model
        self.config = config or TrainConfig()
        weights = self.config.class_weights
        if weights is not None and len(weights) != model.num_classes:
            raise ValueError(f"TrainConfig.class_weights holds {len(weights)} weights, the model has "
                             f"{model.num_classes} classes")
        self.out = Path(out) if out else None
        self.step = 0
        self.saved_step = None  # the step of the checkpoint in out/, if any
        self.history = History()
        self.stopped_by = None  # why the last fit() returned early: "the time limit", "SIGINT", "SIGTERM"
        be = _backend.active()
        self.velocity = {k: be.xp.zeros_like(v) for k, v in model.params.items()}

    # ------------------------------------------------------------ update
    def trainable(self, name):
        return self.config.train_upsampling or not name.startswith("upscore")

    def rate(self, name):
        """The learning rate of parameter `name` at this step: the config's
        rate, times bias_lr_mult for biases, times input_lr_mult for conv1_1's
        weights, ramped up over the first `warmup` steps.

        input_lr_mult exists because the inputs are mean-subtracted pixels,
        about PIXEL_STD = 60 wide: conv1_1's gradient is 60x larger, and its
        He-initialised weights 60x smaller, than with unit-scale inputs, so
        one SGD step moves it 3600x further relative to its size. A mult of
        1 / PIXEL_STD**2 trains it as SGD would on normalised inputs."""
        cfg = self.config
        lr = cfg.resolved_lr(self.model.variant)
        if name.endswith(".bias"):
            lr *= cfg.bias_lr_mult
        elif name == "conv1_1.weight":
            lr *= cfg.input_lr_mult
        if cfg.warmup:
            lr *= min(1.0, (self.step + 1) / cfg.warmup)
        return lr * 0.1 ** sum(self.step >= d for d in cfg.lr_drops)

    def sgd(self, grads):
        cfg = self.config
        for name, g in grads.items():
            if not self.trainable(name):
                continue
            decay = 0.0 if name.endswith(".bias") else cfg.weight_decay
            ops.sgd_step(self.model.params[name], g, self.velocity[name], self.rate(name), cfg.momentum, decay)
        if cfg.train_upsampling:  # a trained deconvolution may no longer be per-channel
            self.model.upsampling_changed()

    def train_step(self, x, labels):
        """One SGD step on one batch (this process's share of it: share());
        returns (loss, pixel accuracy of the batch)."""
        cfg = self.config
        key = (cfg.seed, self.step, self.share()[0]) if cfg.dropout else None  # masks keyed by place in the batch
        scores, loss, grad, keep = forward_loss(self.model, x, labels, key, cfg.normalize, cfg.class_weights,
                                                self.loss_divisor(labels))
        pred = ops.argmax(scores)
        valid = labels != 255
        loss, correct, total = self.sum_over_ranks(loss, int(((pred == labels) & valid).sum()), int(valid.sum()))
        if not math.isfinite(loss):
            raise FloatingPointError(f"the loss is {loss} at step {self.step + 1}; training stopped"
                                     + self._nan_advice())
        del scores
        self.sgd(self.sum_gradients(backward(self.model, keep, grad, dropout=key)))
        self.step += 1
        return loss, correct / total if total else float("nan")

    # ------------------------------------------------------------ data-parallel seams
    def share(self):
        """(first, count): the places in each batch whose images this process reads (here: all)."""
        return 0, self.config.batch_size

    def loss_divisor(self, labels):
        """What the loss divides by (ops.softmax_cross_entropy's divisor); None: the batch's own."""
        return None

    def sum_over_ranks(self, *values):
        """The step's loss, correct and valid pixel counts over the whole batch."""
        return values

    def sum_gradients(self, grads):
        """The whole batch's gradients from this process's."""
        return grads

    def agree_to_stop(self, reason):
        """Why the run stops after this step (a signal's name, "the time limit") or None."""
        return reason

    def checkpoint_written(self, failure):
        """Raises unless this step's checkpoint was written (failure: the
        writer's exception, or None)."""
        if failure is not None:
            raise failure

    def validate(self, dataset):
        """The four scores of the deployed model on the validation set."""
        return evaluate(deployed(self.model, self.config.class_weights), dataset)

    # ------------------------------------------------------------ the loop
    def fit(self, dataset, val_dataset=None, progress=True, max_seconds=None):
        """Runs until config.iterations (or a validation reaches
        config.target_mean_iu); validates and checkpoints on schedule. With
        max_seconds, stops after that much wall time with a checkpoint, to be
        resumed later (for machines lent by the slice). Ctrl-C or SIGTERM
        stops it the same way once the step in flight is done."""
        from ._progress import Progress

        bar = Progress(self.config.iterations, "train", initial=self.step) if progress else None
        self.stopped_by = None
        started, first_step = time.perf_counter(), self.step
        with _StopRequests() as stop:
            return self._loop(dataset, val_dataset, bar, started, first_step, max_seconds, stop)

    def _loop(self, dataset, val_dataset, bar, started, first_step, max_seconds, stop):
        cfg = self.config
        be = _backend.active()
        while not self.finished:
            first, count = self.share()
            indices = batch_indices(len(dataset), cfg.batch_size, cfg.seed, self.step)[first:first + count]
            x, labels = make_batch(dataset, indices, be)
            loss, acc = self.train_step(x, labels)
            h = self.history
            h.step.append(self.step)
            h.loss.append(loss)
            h.pixel_acc.append(acc)
            if bar:
                rate = (self.step - first_step) * cfg.batch_size / (time.perf_counter() - started)
                bar.update(1, f"loss {loss:.4g} acc {acc:.3f} {rate:.2f} img/s")
            if val_dataset is not None and cfg.val_every and self.step % cfg.val_every == 0:
                h.val_step.append(self.step)
                h.val.append(self.validate(val_dataset))
                if bar:
                    bar.stream.write(f"\nstep {self.step}: " + "  ".join(f"{k} {v:.4f}" for k, v in h.val[-1].items()) + "\n")
            if self.out and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if self.reached_target():
                break
            timed_out = max_seconds is not None and time.perf_counter() - started >= max_seconds
            self.stopped_by = self.agree_to_stop(stop.requested or ("the time limit" if timed_out else None))
            if self.stopped_by:
                if self.out:
                    self.save_checkpoint()
                if self.stopped_by != "the time limit" and bar:
                    bar.stream.write(f"\nstopped by {self.stopped_by} at step {self.step}"
                                     + (f"; checkpoint in {self.checkpoint_path()}\n" if self.out else "\n"))
                return self.history
        if self.out:
            self.save_checkpoint()
        if self.out and self.writes:
            deployed(self.model, self.config.class_weights).save(self.out / "final.safetensors", step=str(self.step),
                                                                 config=json.dumps(asdict(self.config)))
            plot_history(self.history, self.out / "curves.png")
        return self.history

    def reached_target(self):
        """Whether the latest validation, taken at this very step, met config.target_mean_iu."""
        t, h = self.config.target_mean_iu, self.history
        return t is not None and bool(h.val) and h.val_step[-1] == self.step and h.val[-1]["mean_iu"] >= t

    @property
    def finished(self):
        return self.step >= self.config.iterations or self.reached_target()

    # ------------------------------------------------------------ checkpoints
    def _nan_advice(self):
        if not self.out or self.saved_step is None:
            return ""
        s = self.saved_step
        drops = ",".join(str(d) for d in sorted({*self.config.lr_drops, s}))
        return (f". The last good checkpoint is {self.checkpoint_path()} (step {s}). Resuming it as it is replays "
                f"the same batches into the same blow-up; to go on 10x slower after step {s}, resume with "
                f"lr_drops ({drops}) (fcn-cuda train ... --lr-drops {drops})")

    def checkpoint_path(self):
        return self.out / "checkpoint.safetensors"

    def save_checkpoint(self):
        """Weights, momentum, step, history and config in one file, written
        atomically (by the process that writes the run's files); the step
        counts as saved once checkpoint_written says the file is there."""
        failure = None
        if self.writes:
            try:
                self._write_checkpoint()
            except Exception as e:  # a full disk, say: the others must hear of it before it propagates
                failure = e
        self.checkpoint_written(failure)
        self.saved_step = self.step

    def _write_checkpoint(self):
        be = _backend.active()
        tensors = dict(self.model.state_dict())
        tensors.update({f"{MOMENTUM_PREFIX}{k}": be.to_numpy(v) for k, v in self.velocity.items()})
        meta = {"format": CHECKPOINT_FORMAT, "variant": self.model.variant,
                "num_classes": str(self.model.num_classes), "at_once": str(self.model.at_once),
                "step": str(self.step), "history": json.dumps(asdict(self.history)),
                "config": json.dumps(asdict(self.config))}
        save_safetensors(self.checkpoint_path(), tensors, meta)

    @classmethod
    def resume(cls, path, out=None, config=None):
        """A Trainer in the state a checkpoint recorded (model on the active backend)."""
        from .model import FCN

        tensors, meta = load_safetensors(path)
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise WeightFileError(f"{path} is not an fcn_cuda training checkpoint")
        weights = {k: v for k, v in tensors.items() if not k.startswith(MOMENTUM_PREFIX)}
        model = FCN(meta["variant"], int(meta["num_classes"]), at_once=meta["at_once"] == "True", state_dict=weights)
        saved = TrainConfig(**json.loads(meta["config"]))
        step = int(meta["step"])
        if config is not None:  # a longer run: only the schedule may change, and only from this step on
            for k in ("iterations", "val_every", "checkpoint_every", "target_mean_iu"):
                setattr(saved, k, getattr(config, k))
            past = [d for d in saved.lr_drops if d < step]
            if [d for d in config.lr_drops if d < step] != past:
                raise ValueError(f"{path} is at step {step}: lr_drops before it are {past} and cannot change "
                                 f"(asked for {list(config.lr_drops)})")
            saved.lr_drops = config.lr_drops
        trainer = cls(model, saved, out or Path(path).parent)
        be = _backend.active()
        trainer.velocity = {k: be.xp.asarray(tensors[f"{MOMENTUM_PREFIX}{k}"]) for k in model.params}
        trainer.step = trainer.saved_step = step
        trainer.history = History(**json.loads(meta["history"]))  # as read_history
        return trainer


class _StopRequests:
    """Within it, SIGINT (Ctrl-C) and SIGTERM ask the training loop to stop
    after the step in flight, with a checkpoint, rather than killing it
    between two parameter updates; `requested` names the signal. A second
    Ctrl-C interrupts at once. Handlers are installed only in the main
    thread (Python allows no other) and restored on exit."""

    def __init__(self):
        self.requested = None
        self._saved = {}

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        import signal

        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc):
        import signal

        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        return False


def train(model, dataset, val_dataset=None, out=None, config=None, resume=True, progress=True, max_seconds=None,
          **overrides):
    """Trains `model` on `dataset` (items: (rgb uint8 H x W x 3, labels H x W));
    returns the Trainer. Keyword overrides set TrainConfig fields. With `out`,
    checkpoints go to out/checkpoint.safetensors and, if one is there and
    resume=True, training continues from it exactly. Launched by torchrun
    with WORLD_SIZE > 1, every rank runs this same call and the run is
    data-parallel: distributed.trainer_class picks the Trainer (imported
    when called, since distributed.py extends this module)."""
    from .distributed import trainer_class

    config = config or TrainConfig()
    for k, v in overrides.items():
        if not hasattr(config, k):
            raise TypeError(f"unknown training option {k!r}")
        setattr(config, k, v)
    cls = trainer_class()  # under torchrun (WORLD_SIZE > 1): data-parallel, batch_size the global batch
    if out and resume and (Path(out) / "checkpoint.safetensors").exists():
        trainer = cls.resume(Path(out) / "checkpoint.safetensors", out, config)
    else:
        trainer = cls(model, config, out)
    trainer.fit(dataset, val_dataset, progress=progress, max_seconds=max_seconds)
    return trainer


def read_history(path):
    """The History (losses, accuracies, validation scores) a training checkpoint recorded."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    meta = load_safetensors(path)[1]
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise WeightFileError(f"{path} is not an fcn_cuda training checkpoint (its final weights keep no history)")
    return History(**json.loads(meta["history"]))


def running_mean(ys, window):
    """The mean of the last `window` values at each point (fewer at the start)."""
    sums = np.cumsum(np.concatenate([[0.0], np.asarray(ys, np.float64)]))
    n = np.arange(1, len(ys) + 1)
    lo = np.maximum(n - window, 0)
    return (sums[n] - sums[lo]) / (n - lo)


def plot_history(history, path):
    """Loss and accuracy curves as a PNG (drawn with Pillow, no plotting library): each step's value in a pale
    line, its running mean over a 50th of the run in a dark one; the loss on a log scale."""
    from PIL import Image, ImageDraw

    from .files import save_png

    w, h, pad = 640, 360, 40
    img = Image.new("RGB", (w, 2 * h), "white")
    draw = ImageDraw.Draw(img)
    panels = [("training loss (log scale; pale: each step, dark: running mean)", history.loss, (200, 30, 30), True),
              ("pixel accuracy (train: grey), validation mean IU (blue)", history.pixel_acc, (90, 90, 90), False)]
    for row, (title, ys, color, log) in enumerate(panels):
        top = row * h
        draw.text((pad, top + 8), title, fill="black")
        draw.rectangle([pad, top + pad, w - pad, top + h - pad], outline="black")
        pts = [(x, y) for x, y in zip(history.step, ys) if y is not None and math.isfinite(y) and (y > 0 or not log)]
        pale = tuple(255 - (255 - c) // 4 for c in color)
        series = [(pts, pale, False)]
        if pts:
            smooth = running_mean([y for _, y in pts], max(1, len(pts) // 50))
            series.append(([(x, y) for (x, _), y in zip(pts, smooth)], color, False))
        if row == 1:
            series.append(([(s, v["mean_iu"]) for s, v in zip(history.val_step, history.val)], (30, 60, 200), True))
        all_pts = [p for s, _, _ in series for p in s]
        if not all_pts:
            continue
        x0, x1 = min(p[0] for p in all_pts), max(p[0] for p in all_pts)
        y0, y1 = min(p[1] for p in all_pts), max(p[1] for p in all_pts)
        if row == 1:
            y0, y1 = 0.0, 1.0
        fy = math.log10 if log else float
        sx = (w - 2 * pad) / max(x1 - x0, 1)
        sy = (h - 2 * pad) / (fy(y1) - fy(y0) if y1 > y0 else 1)
        draw.text((pad, top + h - pad + 4), f"step {x0} .. {x1}", fill="black")
        draw.text((w - pad - 120, top + 8), f"{y0:.3g} .. {y1:.3g}", fill="black")
        for s, col, labelled in series:
            xy = [(pad + (x - x0) * sx, top + h - pad - (fy(y) - fy(y0)) * sy) for x, y in s]
            if len(xy) > 1:
                draw.line(xy, fill=col, width=2)
            for p in xy[-1:]:
                draw.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=col)
                if labelled:
                    draw.text((p[0] - 34, p[1] + 6), f"{s[-1][1]:.3f}", fill=col)
    save_png(path, img)
