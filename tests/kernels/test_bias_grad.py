"""ops.bias_grad against torch: autograd's gradient of a convolution's bias
(float64), which is grad_y summed over the batch and the map; the same bits
run to run and for any emulator worker count; every bad input refused."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fcn_cuda import ops

from _util import FP32, assert_close, assert_same_bits_for_any_worker_count

pytestmark = pytest.mark.kernels


def torch_bias_grad(grad_y):
    """The gradient torch's autograd gives conv2d's bias for the output gradient grad_y (float64)."""
    g = torch.from_numpy(grad_y).double()
    n, k, p, q = g.shape
    x = torch.zeros(n, 1, p, q, dtype=torch.float64)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    F.conv2d(x, torch.zeros(k, 1, 1, 1, dtype=torch.float64), b).backward(g)
    return b.grad.numpy()


# Maps smaller and larger than the 256 threads of a channel's block, not a multiple of it; one channel;
# one image and several.
SHAPES = [(1, 1, 1, 1), (2, 5, 3, 7), (3, 4, 17, 19), (1, 21, 16, 16), (2, 3, 23, 29), (4, 2, 1, 300)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_torch(be, rng, shape):
    g = rng.standard_normal(shape).astype(np.float32)
    db = ops.bias_grad(be.xp.asarray(g))
    assert isinstance(db, be.xp.ndarray) and db.dtype == np.float32 and db.shape == (shape[1],)
    assert_close(db, torch_bias_grad(g), FP32, what=f"bias_grad of {shape}")


def test_same_bits_for_any_worker_count(be, rng):
    g = be.xp.asarray(rng.standard_normal((3, 7, 19, 23)).astype(np.float32))
    assert_same_bits_for_any_worker_count(be, lambda: ops.bias_grad(g))


def test_bad_inputs(be):
    xp = be.xp
    good = xp.ones((2, 3, 4, 5), np.float32)
    with pytest.raises(TypeError, match="grad_y must be float32"):
        ops.bias_grad(good.astype(np.float64))
    with pytest.raises(ValueError, match="grad_y must be 4-D"):
        ops.bias_grad(xp.ones((3, 4, 5), np.float32))
    with pytest.raises(ValueError, match="grad_y must be C-contiguous"):
        ops.bias_grad(xp.ones((2, 3, 4, 10), np.float32)[..., ::2])
    with pytest.raises(ValueError, match="grad_y is empty"):
        ops.bias_grad(xp.ones((0, 3, 4, 5), np.float32))
    with pytest.raises(TypeError, match="grad_y must be float32"):
        ops.bias_grad([[[["a"]]]])
