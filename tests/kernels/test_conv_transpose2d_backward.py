"""conv_transpose2d's backward (the input and weight gradients) against torch
autograd in float64."""

import numpy as np
import pytest
import torch.nn.functional as F

from fcn_cuda import ops

from _util import assert_close, assert_each_raises, dev, randn, same_bits, t64

# The API allocates its outputs and workspaces: each is poisoned in every test (conftest.py).
pytestmark = pytest.mark.kernels


# (N, C_in, C_out, H, W, R, S, stride, padding)
DECONV_CASES = [
    (2, 21, 21, 3, 5, 4, 4, 2, 0),      # upscore2 / upscore_pool4: k4 s2
    (2, 3, 3, 3, 4, 16, 16, 8, 0),      # upscore8: k16 s8
    (2, 3, 5, 4, 3, 3, 3, 1, 1),
    (1, 2, 3, 1, 1, 4, 4, 2, 0),        # 1x1 image
    (2, 3, 2, 5, 4, 5, 3, (3, 2), (1, 0)),
    (2, 1, 64, 3, 3, 4, 4, 2, 1),
]


@pytest.mark.parametrize("case", DECONV_CASES, ids=str)
def test_conv_transpose2d_grads(be, rng, case):
    n, cin, cout, h, w_, r, s, stride, padding = case
    x, w = randn(rng, n, cin, h, w_), randn(rng, cin, cout, r, s)
    xt, wt = t64(x, True), t64(w, True)
    y = F.conv_transpose2d(xt, wt, None, stride, padding)
    gy = randn(rng, *y.shape)
    y.backward(t64(gy))
    xd, wd, gyd = dev(be, x, w, gy)
    assert_close(ops.conv_transpose2d_grad_input(gyd, wd, stride, padding, x.shape), xt.grad, what="grad_x")
    gw = ops.conv_transpose2d_grad_weight(xd, gyd, (r, s), stride, padding)
    assert_close(gw, wt.grad, what="grad_w")
    assert same_bits(gw, ops.conv_transpose2d_grad_weight(xd, gyd, (r, s), stride, padding))


def test_bad_input(be, rng):
    dx, dwt, dgy = dev(be, randn(rng, 2, 3, 3, 4), randn(rng, 3, 5, 4, 4), randn(rng, 2, 5, 8, 10))
    ti = lambda **kw: ops.conv_transpose2d_grad_input(**{"grad_y": dgy, "w": dwt, "stride": 2, "padding": 0,
                                                         "x_shape": (2, 3, 3, 4), **kw})
    tw = lambda **kw: ops.conv_transpose2d_grad_weight(**{"x": dx, "grad_y": dgy, "kernel_size": 4, "stride": 2,
                                                          "padding": 0, **kw})
    assert_each_raises((ti, tw), [
        (lambda: ti(grad_y=dgy.astype(np.float64)), TypeError, "grad_y must be float32"),
        (lambda: ti(x_shape=(2, 4, 3, 4)), ValueError, "C_in"),
        (lambda: ti(padding=1), ValueError, "grad_y is"),
        (lambda: ti(stride=-2), ValueError, "stride"),
        (lambda: ti(x_shape=(3, 3, 3, 4)), ValueError, "grad_y must be N x C_out"),
        (lambda: tw(x=dx[:, :, :, :3].copy()), ValueError, "grad_y is"),
        (lambda: tw(kernel_size=(4, 0)), ValueError, "kernel_size"),
        (lambda: tw(grad_y=dgy[:1].copy()), ValueError, "batch size"),
        (lambda: tw(padding=-1), ValueError, "padding"),
        (lambda: tw(stride=2**31 - 1, padding=2**30), ValueError, "stride .* makes the full output"),
    ])
