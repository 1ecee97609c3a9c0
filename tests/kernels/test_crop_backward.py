"""crop_backward and the fused score head's backward (score_crop_add_backward)
against torch autograd in float64."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fcn_cuda.torch as fct
from fcn_cuda import ops

from _util import assert_close, assert_each_raises, dev, randn, t64

# The API allocates its outputs and workspaces: each is poisoned in every test (conftest.py).
pytestmark = pytest.mark.kernels


# (N, C, a's H x W, b's Hb x Wb, offset)
CROP_CASES = [
    (2, 21, (5, 7), (9, 11), (2, 3)),
    (1, 3, (1, 1), (4, 5), (3, 4)),     # the last pixel
    (2, 1, (6, 4), (6, 4), 0),          # the whole map
    (2, 64, (3, 3), (13, 12), 5),       # FCN-16s score_pool4 crop 5
]


@pytest.mark.parametrize("case", CROP_CASES, ids=str)
def test_crop_backward(be, rng, case):
    n, c, (h, w), (hb, wb), offset = case
    oy, ox = (offset, offset) if isinstance(offset, int) else offset
    a, b = t64(randn(rng, n, c, h, w), True), t64(randn(rng, n, c, hb, wb), True)
    g = randn(rng, n, c, h, w)
    (a + b[:, :, oy:oy + h, ox:ox + w]).backward(t64(g))
    assert_close(ops.crop_backward(be.xp.asarray(g), (n, c, hb, wb), offset), b.grad)


# (N, K classes, C channels, H x W window, Hf x Wf feature map, offset, scale)
SCORE_CASES = [
    (2, 21, 64, (5, 7), (9, 11), (2, 3), 1.0),
    (2, 21, 3, (3, 3), (13, 12), 5, 0.01),    # FCN-16s / 8s at-once pool4: crop 5, scale 0.01
    (1, 3, 1, (1, 1), (2, 2), 1, 1e-4),
    (2, 70, 5, (4, 6), (4, 6), 0, 1.0),       # K past one 64-row tile
]


@pytest.mark.parametrize("case", SCORE_CASES, ids=str)
def test_score_crop_add_backward(be, rng, case):
    n, k, c, (h, w), (hf, wf), offset, scale = case
    oy, ox = (offset, offset) if isinstance(offset, int) else offset
    up, feat = t64(randn(rng, n, k, h, w), True), t64(randn(rng, n, c, hf, wf), True)
    wt, bt = t64(randn(rng, k, c, 1, 1), True), t64(randn(rng, k), True)
    out = up + F.conv2d(scale * feat, wt, bt)[:, :, oy:oy + h, ox:ox + w]
    g = randn(rng, n, k, h, w)
    out.backward(t64(g))
    gfeat, gw, gb = ops.score_crop_add_backward(*dev(be, g, feat.detach().numpy().astype(np.float32),
                                                     wt.detach().numpy().astype(np.float32)), offset, scale)
    assert_close(gfeat, feat.grad, what="grad_feat")
    assert_close(gw, wt.grad, what="grad_w")
    assert_close(gb, bt.grad, what="grad_b")
    # grad_up is grad_out: no kernel computes it, the autograd op hands grad_out on. Through
    # fcn_cuda.torch's op every input's gradient, up's included, is held to torch's.
    device = "cpu" if be.name == "host" else "cuda"
    inputs = [torch.tensor(t.detach().numpy().astype(np.float32), device=device, requires_grad=True)
              for t in (up, feat, wt, bt)]
    fct.score_crop_add(*inputs, offset, scale).backward(torch.tensor(g, device=device))
    for t, ref, name in zip(inputs, (up, feat, wt, bt), ("up", "feat", "weight", "bias")):
        assert_close(t.grad, ref.grad, what=f"fcn_cuda.torch.score_crop_add's gradient of {name}")


def test_bad_input(be, rng):
    xs = (2, 3, 7, 5)
    cg = be.xp.asarray(randn(rng, 2, 3, 3, 2))
    cb = lambda **kw: ops.crop_backward(**{"grad": cg, "b_shape": xs, "offset": (1, 2), **kw})
    sg, sf, sw_ = dev(be, randn(rng, 2, 4, 3, 2), randn(rng, 2, 3, 7, 5), randn(rng, 4, 3, 1, 1))
    sb = lambda **kw: ops.score_crop_add_backward(**{"grad_out": sg, "feat": sf, "w": sw_, "offset": 1, **kw})
    assert_each_raises((cb, sb), [
        (lambda: cb(offset=(5, 0)), ValueError, "offset"),
        (lambda: cb(offset=-1), ValueError, "offset"),
        (lambda: cb(b_shape=(2, 4, 7, 5)), ValueError, "grad must have b_shape"),
        (lambda: cb(b_shape=(2, 3, 7)), ValueError, "b_shape"),
        (lambda: cb(grad=cg[0]), ValueError, "grad must be 4-D"),
        (lambda: sb(offset=(5, 0)), ValueError, "offset"),
        (lambda: sb(w=sw_[:3].copy()), ValueError, "w must be K x C x 1 x 1"),
        (lambda: sb(feat=sf[:1].copy()), ValueError, "feat must have grad_out's batch size"),
        (lambda: sb(scale="1"), TypeError, "scale"),
        (lambda: sb(scale=float("nan")), ValueError, "scale"),
        (lambda: sb(grad_out=sg.astype(np.float64)), TypeError, "grad_out must be float32"),
    ])
