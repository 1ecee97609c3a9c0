"""One training step (forward + loss + backward + SGD update) against the same
step in PyTorch on the same weights and batch: FCN-8s at the suite's widths,
and the bundled model's recipe. The learning rate is 0 on both sides: the
update runs in full (the same arithmetic) but leaves the weights where they
were, so every repeat computes the same loss, the output both compare."""

import numpy as np

import fcn_cuda

from . import Case, plain_ref, row_name
from .model import conv_flops, random_state_dict


def torch_sgd(torch, net, lr, momentum, weight_decay):
    """The reference's SGD: weight decay on the weights only, biases at 2x the
    rate, the upsampling frozen (as in Trainer)."""
    decay = [p for k, p in net.named_parameters() if not k.endswith("bias") and not k.startswith("upscore")]
    biases = [p for k, p in net.named_parameters() if k.endswith("bias")]
    for k, p in net.named_parameters():
        p.requires_grad_(not k.startswith("upscore"))
    return torch.optim.SGD([{"params": decay, "lr": lr, "weight_decay": weight_decay},
                            {"params": biases, "lr": 2 * lr, "weight_decay": 0.0}], lr=lr, momentum=momentum)


def train_step_cases(ctx, tag, n, h, w, layers):
    """One training step of FCN-8s, forward + loss + backward + SGD update:
    fcn_cuda's Trainer.train_step (every step a kernel, fcn_cuda.backward)
    against PyTorch's (cross_entropy summed / N, loss.backward(),
    optimizer.step()) on the same weights and batch. The learning rate is 0:
    the update runs in full on both sides (the same arithmetic) but leaves
    the weights where they were, so the losses of steps repeated a different
    number of times on each side stay comparable; dropout is off on both
    sides so the two compute the same function."""
    from fcn_cuda.training import Trainer, TrainConfig

    from ..torch_fcn8s import TorchFCN8s

    torch = ctx.torch
    cfg = ctx.cfg
    ref = plain_ref(ctx)
    name = row_name(tag, "train_step", "fcn_cuda", ref)
    if not ctx.wants(name):
        return []
    sd = random_state_dict(cfg)
    model = fcn_cuda.FCN("8s", cfg.classes, state_dict=sd)
    net = TorchFCN8s(sd, cfg.classes).to(ctx.device).train()
    del sd
    trainer = Trainer(model, TrainConfig(lr=0.0, dropout=False))
    opt = torch_sgd(torch, net, 0.0, 0.99, 5e-4)
    be = ctx.be
    batches = []
    for _ in range(cfg.sets):
        x = ctx.rng.uniform(-120, 130, (n, 3, h, w)).astype(np.float32)
        labels = ctx.rng.integers(0, cfg.classes, (n, h, w)).astype(np.int32)
        labels[ctx.rng.random((n, h, w)) < 0.1] = 255
        batches.append((be.xp.asarray(x), be.xp.asarray(labels), torch.from_numpy(x).to(ctx.device),
                        torch.from_numpy(labels.astype(np.int64)).to(ctx.device)))

    def ours(x, labels):
        return np.array([trainer.train_step(x, labels)[0]])

    def theirs(xt, lt):
        with torch.inference_mode(False), torch.enable_grad():  # the runner times references without autograd
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(net(xt), lt, ignore_index=255, reduction="sum") / n
            loss.backward()
            opt.step()
        return loss.detach().reshape(1)

    flops = 3.0 * float(conv_flops(layers))  # forward + input gradient + weight gradient
    return [Case(name, "train_step", "train", tag, "train_step", "fcn_cuda", ref,
                 f"FCN-8s x {n}x3x{h}x{w}, loss summed / N, SGD momentum 0.99 at lr 0 (upsampling frozen)",
                 [lambda b=b: ours(b[0], b[1]) for b in batches], [lambda b=b: theirs(b[2], b[3]) for b in batches],
                 "fp32", flops, None, "output compared: the loss")]


def bundled_step_cases(ctx, tag, n, size):
    """The bundled model's recipe (fcn_cuda.bundled.RECIPE: FCN-8s at 1/8 width,
    fc 128, 4 classes, SGD with momentum, per-pixel-normalised class-weighted
    loss, no dropout) on a batch of n synthetic size x size images."""
    from fcn_cuda import bundled
    from fcn_cuda.data import SyntheticShapes
    from fcn_cuda.training import Trainer, TrainConfig, make_batch

    from ..torch_fcn8s import TorchFCN8s

    torch = ctx.torch
    ref = plain_ref(ctx)
    name = row_name(tag, "train_step", "fcn_cuda", ref)
    if not ctx.wants(name):
        return []
    recipe = dict(bundled.RECIPE, lr=0.0, batch_size=n, size=size)
    model = bundled.fresh_model(recipe)
    x, labels = make_batch(SyntheticShapes(n, size, seed=recipe["seed"]), list(range(n)), ctx.be)
    fields = TrainConfig.__dataclass_fields__
    trainer = Trainer(model, TrainConfig(**{k: v for k, v in recipe.items() if k in fields}))
    sd = {k: ctx.be.to_numpy(v) for k, v in model.state_dict().items()}
    net = TorchFCN8s(sd, model.num_classes).to(ctx.device).train()
    opt = torch_sgd(torch, net, 0.0, recipe["momentum"], recipe["weight_decay"])
    xt = torch.from_numpy(np.asarray(ctx.be.to_numpy(x))).to(ctx.device)
    lt = torch.from_numpy(np.asarray(ctx.be.to_numpy(labels)).astype(np.int64)).to(ctx.device)
    weight = torch.tensor(recipe["class_weights"], dtype=torch.float32, device=ctx.device)

    def theirs():
        with torch.inference_mode(False), torch.enable_grad():  # the runner times references without autograd
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(net(xt), lt, weight=weight, ignore_index=255)  # normalised
            loss.backward()
            opt.step()
        return loss.detach().reshape(1)

    def loss64():
        net64 = TorchFCN8s(sd, model.num_classes).double()
        return torch.nn.functional.cross_entropy(net64(ctx.f64(xt)), lt.cpu(), weight=ctx.f64(weight),
                                                 ignore_index=255).reshape(1)

    return [Case(name, "train_step", "train", tag, "train_step", "fcn_cuda", ref,
                 f"bundled recipe: FCN-8s width/{recipe['width_divisor']}, fc {recipe['fc']}, batch {n} x "
                 f"{size}x{size}, lr 0 (the update runs, the weights stay)",
                 [lambda: np.array([trainer.train_step(x, labels)[0]])], [theirs], "fp32", None, None,
                 "output compared: the loss", ref64=loss64)]
