"""The hand-written backward pass against PyTorch autograd on a whole FCN."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fcn_cuda
from fcn_cuda import ops

from _util import FP32, assert_close, to_numpy
from torch_fcn import random_fcn, state_dict_f32


def torch_loss_and_grads(net, x, labels, normalize=False, masks=None, class_weights=None):
    net.zero_grad()
    if masks is None:
        scores = net(torch.from_numpy(x))
    else:
        scores = net.forward_with_masks(torch.from_numpy(x), masks)
    lbl = torch.from_numpy(labels.astype(np.int64))
    weight = None if class_weights is None else torch.tensor(class_weights, dtype=scores.dtype)
    if normalize:  # 'mean' divides by the valid pixels' summed weight
        loss = F.cross_entropy(scores, lbl, weight=weight, ignore_index=255)
    else:
        loss = F.cross_entropy(scores, lbl, weight=weight, ignore_index=255, reduction="sum") / x.shape[0]
    loss.backward()
    return float(loss.detach()), {k: p.grad.numpy() for k, p in net.named_parameters()}


def labels_with_ignore(rng, n, h, w, classes):
    labels = rng.integers(0, classes, size=(n, h, w)).astype(np.int32)
    labels[rng.random((n, h, w)) < 0.2] = 255
    return labels


def route_pools_like(be, model, net, x):
    """Makes the reference pool by the argmaxes our forward chose (see TorchFCN.pool)."""
    keep = {}
    model.forward(be.xp.asarray(x.astype(np.float32)), keep=keep)
    net.pool_indices = {b: to_numpy(keep[f"pool{b}_idx"]) for b in range(1, 6)}


def check(be, net, x, labels, **kw):
    model = fcn_cuda.load_model(state_dict_f32(net), at_once=net.at_once)
    route_pools_like(be, model, net, x)
    ref_loss, ref_grads = torch_loss_and_grads(net, x, labels, normalize=kw.get("normalize", False),
                                               class_weights=kw.get("class_weights"))
    loss, grads = fcn_cuda.loss_and_grads(model, be.xp.asarray(x.astype(np.float32)), be.xp.asarray(labels), **kw)
    assert abs(loss - ref_loss) <= FP32 * abs(ref_loss), (loss, ref_loss)
    assert list(grads) == list(model.state_dict())
    for name, ref in ref_grads.items():
        assert_close(grads[name], ref, FP32, what=f"grad {name}")


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
@pytest.mark.parametrize("size", [(1, 1), (23, 37)])
def test_whole_network_gradients(be, variant, size):
    rng = np.random.default_rng(len(variant) + size[0])
    net = random_fcn(variant, seed=11, num_classes=5)
    x = rng.uniform(-120, 130, size=(1, 3, *size))
    check(be, net, x, labels_with_ignore(rng, 1, *size, 5))


def test_batch_at_once_and_normalized_loss(be):
    rng = np.random.default_rng(7)
    net = random_fcn("8s", seed=2, num_classes=4, at_once=True, bilinear=False)
    x = rng.uniform(-120, 130, size=(2, 3, 19, 26))
    check(be, net, x, labels_with_ignore(rng, 2, 19, 26, 4), normalize=True)


@pytest.mark.parametrize("normalize", [False, True])
def test_class_weighted_loss(be, normalize):
    rng = np.random.default_rng(9)
    net = random_fcn("8s", seed=4, num_classes=4)
    x = rng.uniform(-120, 130, size=(2, 3, 17, 21))
    check(be, net, x, labels_with_ignore(rng, 2, 17, 21, 4), normalize=normalize, class_weights=(0.5, 2.0, 0.0, 3.5))


def test_dropout_uses_the_same_masks_in_forward_and_backward(be):
    """With dropout the gradient is checked against torch applying the very
    masks the Philox kernel draws (recovered by dropping out a tensor of ones)."""
    rng = np.random.default_rng(3)
    net = random_fcn("32s", seed=4, num_classes=3)
    x = rng.uniform(-120, 130, size=(1, 3, 17, 15))
    labels = labels_with_ignore(rng, 1, 17, 15, 3)
    model = fcn_cuda.load_model(state_dict_f32(net))
    keep = {}
    model.forward(be.xp.asarray(x.astype(np.float32)), keep=keep)
    route_pools_like(be, model, net, x)
    seed, step = 9, 4
    ones = {name: be.xp.ones(keep[name].shape, np.float32) for name in ("fc6", "fc7")}
    masks = {name: to_numpy(ops.dropout(ones[name], 0.5, *fcn_cuda.model.dropout_key((seed, step), i, ones[name])))
             for i, name in enumerate(("fc6", "fc7"))}

    def forward_with_masks(t, m):
        h = t
        for b, block in enumerate(net.blocks):
            for name in block:
                h = F.relu(getattr(net, name)(h))
            h = net.pool(h, b + 1)
        h = F.relu(net.fc6(h)) * torch.from_numpy(m["fc6"]).double()
        h = F.relu(net.fc7(h)) * torch.from_numpy(m["fc7"]).double()
        score = net.score_fr(h)
        return net.upscore(score)[:, :, 19:19 + t.shape[2], 19:19 + t.shape[3]]

    net.forward_with_masks = forward_with_masks
    ref_loss, ref_grads = torch_loss_and_grads(net, x, labels, masks=masks)
    loss, grads = fcn_cuda.loss_and_grads(model, be.xp.asarray(x.astype(np.float32)), be.xp.asarray(labels),
                                          dropout=True, seed=seed, step=step)
    assert abs(loss - ref_loss) <= FP32 * abs(ref_loss)
    for name, ref in ref_grads.items():
        assert_close(grads[name], ref, FP32, what=f"grad {name}")
    kept = masks["fc6"] > 0
    assert 0.2 < kept.mean() < 0.8 and np.allclose(masks["fc6"][kept], 2.0)
