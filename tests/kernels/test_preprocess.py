"""ops.preprocess against the reference transform computed in float64 with
torch (RGB -> BGR, minus the mean, HWC -> CHW) on every backend present."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fcn_cuda import ops
from _util import assert_close, to_numpy

pytestmark = pytest.mark.kernels


def reference(img):
    """N x H x W x 3 (or H x W x 3) uint8 RGB -> N x 3 x H x W float64 BGR minus the mean."""
    t = torch.from_numpy(to_numpy(img)).double()
    if t.ndim == 3:
        t = t[None]
    mean = torch.tensor([104.00698793, 116.66876762, 122.67891434], dtype=torch.float64)
    return (t.flip(-1) - mean).permute(0, 3, 1, 2).numpy()


def float32_reference(img):
    """The same in float32: what the kernel computes, rounded once."""
    a = to_numpy(img)
    a = a[None] if a.ndim == 3 else a
    return a[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) - np.array(ops.MEAN_BGR, np.float32)[:, None, None]


def test_mean_constant():
    assert ops.MEAN_BGR == (104.00698793, 116.66876762, 122.67891434)


SHAPES = [(1, 1, 3), (5, 7, 3), (17, 9, 3), (2, 1, 1, 3), (2, 5, 7, 3), (2, 13, 11, 3), (3, 4, 4, 3)]


@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_matches_reference(be, rng, shape):
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    img[..., 0, 0, :] = (0, 255, 128)  # both ends of the range in every image
    x = be.xp.asarray(img)
    out = ops.preprocess(x)
    n = shape[0] if len(shape) == 4 else 1
    assert out.shape == (n, 3, shape[-3], shape[-2]) and out.dtype == np.float32
    assert_close(out, reference(img))
    np.testing.assert_array_equal(to_numpy(out), float32_reference(img))
    np.testing.assert_array_equal(to_numpy(x), img)  # the input is only read


def test_channel_order(be):
    """A pure red image: only the last output channel (R of BGR) sees 255."""
    img = np.zeros((3, 4, 3), np.uint8)
    img[..., 0] = 255
    out = to_numpy(ops.preprocess(be.xp.asarray(img)))
    b, g, r = ops.MEAN_BGR
    np.testing.assert_allclose(out[0, 0], -b, rtol=1e-7)
    np.testing.assert_allclose(out[0, 1], -g, rtol=1e-7)
    np.testing.assert_allclose(out[0, 2], 255 - r, rtol=1e-7)


def test_batch_equals_images_one_by_one(be, rng):
    imgs = rng.integers(0, 256, (3, 6, 5, 3), dtype=np.uint8)
    batch = to_numpy(ops.preprocess(be.xp.asarray(imgs)))
    for i in range(3):
        np.testing.assert_array_equal(batch[i:i + 1], to_numpy(ops.preprocess(be.xp.asarray(imgs[i]))))


def test_unaligned_image(be, rng):
    """A contiguous view starting at an odd byte address reads correctly."""
    buf = be.xp.asarray(rng.integers(0, 256, 5 * 7 * 3 + 1, dtype=np.uint8))
    img = buf[1:].reshape(5, 7, 3)
    assert be.ptr(img) % 2 == 1 - be.ptr(buf) % 2
    np.testing.assert_array_equal(to_numpy(ops.preprocess(img)), float32_reference(img))


def test_accepts_torch_tensor(be, rng):
    img = rng.integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)
    t = torch.from_numpy(img).to("cuda" if be.name == "cuda" else "cpu")
    np.testing.assert_array_equal(to_numpy(ops.preprocess(t)), float32_reference(img))


class _FakeGpuArray:
    __cuda_array_interface__ = {"shape": (2, 2, 3), "typestr": "|u1", "data": (0, False), "version": 3}


def _huge_view(be, shape):
    buf = be.xp.zeros(1, np.uint8)
    strides = tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
    return be.xp.lib.stride_tricks.as_strided(buf, shape=shape, strides=strides)


BAD = [
    ("float32", TypeError, lambda be: be.xp.zeros((4, 4, 3), np.float32)),
    ("int16", TypeError, lambda be: be.xp.zeros((4, 4, 3), np.int16)),
    ("int8", TypeError, lambda be: be.xp.zeros((4, 4, 3), np.int8)),
    ("bool", TypeError, lambda be: be.xp.zeros((4, 4, 3), bool)),
    ("rank2", ValueError, lambda be: be.xp.zeros((4, 4), np.uint8)),
    ("rank5", ValueError, lambda be: be.xp.zeros((1, 2, 4, 4, 3), np.uint8)),
    ("four_channels", ValueError, lambda be: be.xp.zeros((4, 4, 4), np.uint8)),
    ("channels_first", ValueError, lambda be: be.xp.zeros((3, 4, 5), np.uint8)),
    ("batch_one_channel", ValueError, lambda be: be.xp.zeros((2, 4, 4, 1), np.uint8)),
    ("noncontiguous", ValueError, lambda be: be.xp.zeros((4, 6, 3), np.uint8)[:, ::2]),
    ("zero_height", ValueError, lambda be: be.xp.zeros((0, 4, 3), np.uint8)),
    ("zero_batch", ValueError, lambda be: be.xp.zeros((0, 4, 4, 3), np.uint8)),
    ("int32_overflow", ValueError, lambda be: _huge_view(be, (1, 2**15, 2**15, 3))),
    ("other_backend", TypeError,
     lambda be: _FakeGpuArray() if be.name == "host" else np.zeros((2, 2, 3), np.uint8)),
]


@pytest.mark.parametrize("case,error,make", BAD, ids=[b[0] for b in BAD])
def test_bad_input(be, case, error, make):
    with pytest.raises(error, match="img"):
        ops.preprocess(make(be))


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.lists(st.integers(0, 9), min_size=2, max_size=5), last=st.sampled_from([3, 3, 3, 1, 4]),
       seed=st.integers(0, 2**32 - 1))
def test_fuzz(be, shape, last, seed):
    shape = tuple(shape[:-1]) + (last,)
    img = be.xp.asarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))
    if len(shape) not in (3, 4) or last != 3 or 0 in shape:
        with pytest.raises(ValueError, match="img"):
            ops.preprocess(img)
        return
    out = ops.preprocess(img)
    assert_close(out, reference(img))
    np.testing.assert_array_equal(to_numpy(out), float32_reference(img))
