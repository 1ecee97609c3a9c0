"""Times one training step of the bundled model's recipe (fcn_cuda.bundled.RECIPE:
FCN-8s at 1/8 width, fc 128, 4 classes, batch 4 of 160 x 160 synthetic
shapes, SGD with momentum, per-pixel-normalised class-weighted loss, no
dropout) on the host
backend, against the same step in PyTorch on the CPU, measured in the same
run on the same weights and batch: forward + loss + backward + SGD update.

PyTorch gets as many threads as the emulator has workers. Emulator numbers
are CPU time of the CUDA emulation, not GPU figures; the PyTorch row is
PyTorch's CPU kernels, not cuDNN.

    PYTHONPATH=$PWD python benchmarks/emu_train_step.py [--runs 5] [--workers 2] [--profile]

--profile adds the time each fcn_cuda op takes within one step.
"""

import argparse
import collections
import functools
import inspect
import time

import numpy as np

import fcn_cuda
from fcn_cuda import _backend, bundled, ops
from fcn_cuda.data import SyntheticShapes
from fcn_cuda.training import Trainer, TrainConfig, make_batch
from timing import median_seconds  # benchmarks/timing.py: this script's own folder is on sys.path
from torch_fcn8s import TorchFCN8s


def torch_step(model, batch, recipe):
    """PyTorch's version of Trainer.train_step for the recipe: returns a step function."""
    import torch

    net = TorchFCN8s(model.state_dict(), model.num_classes).train()
    decay = [p for k, p in net.named_parameters() if not k.endswith("bias") and not k.startswith("upscore")]
    biases = [p for k, p in net.named_parameters() if k.endswith("bias")]
    for k, p in net.named_parameters():
        p.requires_grad_(not k.startswith("upscore"))  # frozen, as in Trainer
    lr = recipe["lr"]
    opt = torch.optim.SGD([{"params": decay, "lr": lr, "weight_decay": recipe["weight_decay"]},
                           {"params": biases, "lr": 2 * lr, "weight_decay": 0.0}], lr=lr,
                          momentum=recipe["momentum"])
    x = torch.from_numpy(np.asarray(batch[0]))
    labels = torch.from_numpy(np.asarray(batch[1]).astype(np.int64))
    weight = None if recipe.get("class_weights") is None else torch.tensor(recipe["class_weights"])

    def step():
        opt.zero_grad(set_to_none=True)
        # mean: the normalised loss (divided by the valid pixels' summed weight, as ours)
        loss = torch.nn.functional.cross_entropy(net(x), labels, weight=weight, ignore_index=255)
        loss.backward()
        opt.step()
        return loss.detach().item()

    return step


def profile(trainer, batch):
    """Seconds per fcn_cuda op within one training step, largest first."""
    spent = collections.Counter()
    originals = {name: getattr(ops, name) for name in ops.__all__ if inspect.isfunction(getattr(ops, name))}

    def timed(name, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0
        return wrapper

    try:
        for name, fn in originals.items():
            setattr(ops, name, timed(name, fn))
        trainer.train_step(*batch)
    finally:
        for name, fn in originals.items():
            setattr(ops, name, fn)
    return spent.most_common()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    import torch

    fcn_cuda.use_backend("host")
    fcn_cuda.set_emulator_workers(args.workers)
    torch.set_num_threads(args.workers)
    recipe = bundled.RECIPE
    model = bundled.fresh_model()
    data = SyntheticShapes(recipe["batch_size"], recipe["size"], seed=recipe["seed"])
    batch = make_batch(data, list(range(recipe["batch_size"])), _backend.active())
    theirs = torch_step(model, batch, recipe)  # the weights before any of our steps move them
    fields = TrainConfig.__dataclass_fields__
    trainer = Trainer(model, TrainConfig(**{k: v for k, v in recipe.items() if k in fields}))

    n, size = recipe["batch_size"], recipe["size"]
    print(f"bundled recipe step: FCN-8s width/{recipe['width_divisor']}, fc {recipe['fc']}, batch {n} x {size}x{size}; "
          f"{args.workers} emulator worker(s) / torch thread(s), median of {args.runs} (CPU timings, not GPU figures)")
    ours_s = median_seconds(lambda: trainer.train_step(*batch), args.runs)
    ref_s = median_seconds(theirs, args.runs)
    print(f"  fcn_cuda (host emulation)  {ours_s:8.3f} s/step  {n / ours_s:7.2f} img/s")
    print(f"  PyTorch (CPU)              {ref_s:8.3f} s/step  {n / ref_s:7.2f} img/s")
    print(f"  ratio (PyTorch / fcn_cuda time): {ref_s / ours_s:.3f}")
    if args.profile:
        print("one fcn_cuda step by op:")
        for name, seconds in profile(trainer, batch):
            print(f"  {name:32s} {seconds:7.3f} s")


if __name__ == "__main__":
    main()
