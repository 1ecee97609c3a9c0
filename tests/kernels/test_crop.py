"""ops.crop_add and the fused score head ops.score_crop_add against torch
(float64 on the CPU): crop + sum, and 1x1 conv on the cropped window + sum."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st

import fcn_cuda
from fcn_cuda import ops

from _util import assert_close

pytestmark = pytest.mark.kernels


def t64(a):
    return torch.from_numpy(np.asarray(a)).double()


def crop_reference(a, b, oy, ox):
    h, w = a.shape[2:]
    return t64(a) + t64(b)[:, :, oy:oy + h, ox:ox + w]


def score_reference(up, feat, w, b, oy, ox, scale):
    h, wd = up.shape[2:]
    score = F.conv2d(t64(feat) * scale, t64(w), None if b is None else t64(b))
    return t64(up) + score[:, :, oy:oy + h, ox:ox + wd]


# (N, C, H, W, Hb, Wb, offset): FCN's crops at small sizes, odd sizes, 1x1, the whole of b, the far corner
CROPS = [
    (2, 21, 6, 6, 16, 16, 5),
    (1, 21, 7, 9, 11, 13, 4),
    (2, 3, 5, 7, 5, 7, 0),
    (2, 1, 1, 1, 3, 4, (2, 3)),
    (1, 64, 3, 2, 9, 4, (6, 1)),
]


@pytest.mark.parametrize("case", CROPS, ids=str)
def test_crop_add(be, rng, case):
    n, c, h, w, hb, wb, offset = case
    oy, ox = (offset, offset) if isinstance(offset, int) else offset
    a = rng.standard_normal((n, c, h, w)).astype(np.float32)
    b = rng.standard_normal((n, c, hb, wb)).astype(np.float32)
    out = ops.crop_add(be.xp.asarray(a), be.xp.asarray(b), offset)
    assert out.shape == a.shape
    assert_close(out, crop_reference(a, b, oy, ox))


# (N, K, C, H, W, Hf, Wf, offset, scale): score_pool4 (crop 5) and score_pool3 (crop 9) of FCN at
# small sizes and reduced widths, the at-once scales, K not a multiple of the 8-class group, 1x1.
SCORES = [
    (2, 21, 64, 6, 6, 16, 16, 5, 1.0),
    (1, 21, 32, 7, 5, 17, 15, 9, 1e-4),
    (2, 21, 48, 4, 3, 14, 13, 5, 0.01),
    (2, 3, 1, 5, 7, 5, 7, 0, 1.0),
    (1, 1, 3, 1, 1, 2, 3, (1, 2), 2.0),
    (2, 8, 5, 3, 4, 6, 9, (2, 4), 1.0),
    (1, 17, 7, 2, 3, 3, 6, (1, 0), -0.5),
]


@pytest.mark.parametrize("case", SCORES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_score_crop_add(be, rng, case, bias):
    n, k, c, h, w, hf, wf, offset, scale = case
    oy, ox = (offset, offset) if isinstance(offset, int) else offset
    up = rng.standard_normal((n, k, h, w)).astype(np.float32)
    feat = rng.standard_normal((n, c, hf, wf)).astype(np.float32) * 10
    wt = rng.standard_normal((k, c, 1, 1)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32) if bias else None
    xp = be.xp
    out = ops.score_crop_add(xp.asarray(up), xp.asarray(feat), xp.asarray(wt), None if b is None else xp.asarray(b),
                             offset, scale=scale)
    assert out.shape == up.shape
    assert_close(out, score_reference(up, feat, wt, b, oy, ox, scale))


def test_score_crop_add_fcn_head_composition(be, rng):
    """The FCN-16s head on a tiny trunk output: upscore2 (k4 s2) of score_fr, plus
    score_pool4 cropped at 5, then upscore16 (k32 s16) windowed at crop 27."""
    k = 3
    score_fr = rng.standard_normal((1, k, 2, 3)).astype(np.float32)
    pool4 = rng.standard_normal((1, 8, 16, 18)).astype(np.float32)
    w4 = rng.standard_normal((k, 8, 1, 1)).astype(np.float32)
    b4 = rng.standard_normal(k).astype(np.float32)
    up2w, up16w = fcn_cuda.bilinear_weights(k, 4), fcn_cuda.bilinear_weights(k, 32)
    xp = be.xp
    up2 = ops.conv_transpose2d(xp.asarray(score_fr), xp.asarray(up2w), stride=2)
    fuse = ops.score_crop_add(up2, xp.asarray(pool4), xp.asarray(w4), xp.asarray(b4), 5)
    out = ops.conv_transpose2d_window(fuse, xp.asarray(up16w), 16, 20, 30, 27)
    r_up2 = F.conv_transpose2d(t64(score_fr), t64(up2w), stride=2)
    r_fuse = r_up2 + F.conv2d(t64(pool4), t64(w4), t64(b4))[:, :, 5:5 + r_up2.shape[2], 5:5 + r_up2.shape[3]]
    ref = F.conv_transpose2d(r_fuse, t64(up16w), stride=16)[:, :, 27:47, 27:57]
    assert_close(out, ref)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 2), k=st.integers(1, 12), c=st.integers(1, 9), h=st.integers(1, 6), w=st.integers(1, 6),
       hf=st.integers(1, 9), wf=st.integers(1, 9), oy=st.integers(0, 4), ox=st.integers(0, 4),
       scale=st.sampled_from([1.0, 0.01, 1e-4, -3.0]), seed=st.integers(0, 2**16))
def test_fuzz(be, n, k, c, h, w, hf, wf, oy, ox, scale, seed):
    rng = np.random.default_rng(seed)
    up = rng.standard_normal((n, k, h, w)).astype(np.float32)
    feat = rng.standard_normal((n, c, hf, wf)).astype(np.float32)
    wt = rng.standard_normal((k, c, 1, 1)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)
    big = rng.standard_normal((n, k, hf, wf)).astype(np.float32)
    d_up, d_feat, d_wt, d_b, d_big = (be.xp.asarray(a) for a in (up, feat, wt, b, big))
    if oy + h > hf or ox + w > wf:
        with pytest.raises(ValueError, match="offset"):
            ops.score_crop_add(d_up, d_feat, d_wt, d_b, (oy, ox), scale)
        with pytest.raises(ValueError, match="offset"):
            ops.crop_add(d_up, d_big, (oy, ox))
        return
    assert_close(ops.score_crop_add(d_up, d_feat, d_wt, d_b, (oy, ox), scale),
                 score_reference(up, feat, wt, b, oy, ox, scale))
    assert_close(ops.crop_add(d_up, d_big, (oy, ox)), crop_reference(up, big, oy, ox))


def test_crop_add_bad_inputs(be):
    xp = be.xp
    a = xp.zeros((2, 3, 4, 4), np.float32)
    b = xp.zeros((2, 3, 6, 6), np.float32)
    with pytest.raises(TypeError, match="a must be float32"):
        ops.crop_add(a.astype(np.float64), b, 0)
    with pytest.raises(TypeError, match="b must be float32"):
        ops.crop_add(a, b.astype(np.int32), 0)
    with pytest.raises(ValueError, match="a must be 4-D"):
        ops.crop_add(a[0], b, 0)
    with pytest.raises(ValueError, match="b must be 4-D"):
        ops.crop_add(a, b[0], 0)
    with pytest.raises(ValueError, match="b must have the N x C"):
        ops.crop_add(a, xp.zeros((2, 4, 6, 6), np.float32), 0)
    with pytest.raises(ValueError, match="b must have the N x C"):
        ops.crop_add(a, xp.zeros((1, 3, 6, 6), np.float32), 0)
    with pytest.raises(ValueError, match="a must be C-contiguous"):
        ops.crop_add(xp.zeros((2, 3, 4, 8), np.float32)[..., ::2], b, 0)
    with pytest.raises(ValueError, match="b is empty"):
        ops.crop_add(a, xp.zeros((2, 3, 0, 6), np.float32), 0)
    with pytest.raises(ValueError, match="offset"):
        ops.crop_add(a, b, 3)
    with pytest.raises(ValueError, match="offset"):
        ops.crop_add(a, b, (0, 3))
    with pytest.raises(ValueError, match="offset"):
        ops.crop_add(a, b, -1)
    with pytest.raises(TypeError, match="offset"):
        ops.crop_add(a, b, 1.0)
    with pytest.raises(ValueError, match="offset"):
        ops.crop_add(a, b, (1, 1, 1))


def test_score_crop_add_bad_inputs(be):
    xp = be.xp
    up = xp.zeros((2, 5, 4, 4), np.float32)
    feat = xp.zeros((2, 7, 9, 9), np.float32)
    w = xp.zeros((5, 7, 1, 1), np.float32)
    b = xp.zeros(5, np.float32)
    sca = ops.score_crop_add
    with pytest.raises(TypeError, match="up must be float32"):
        sca(up.astype(np.float64), feat, w, b, 0)
    with pytest.raises(TypeError, match="feat must be float32"):
        sca(up, feat.astype(np.float16), w, b, 0)
    with pytest.raises(TypeError, match="w must be float32"):
        sca(up, feat, w.astype(np.float64), b, 0)
    with pytest.raises(TypeError, match="b must be float32"):
        sca(up, feat, w, b.astype(np.float64), 0)
    with pytest.raises(ValueError, match="up must be 4-D"):
        sca(up[0], feat, w, b, 0)
    with pytest.raises(ValueError, match="feat must be 4-D"):
        sca(up, feat[0], w, b, 0)
    with pytest.raises(ValueError, match="w must be 4-D"):
        sca(up, feat, w[:, :, 0, 0], b, 0)
    with pytest.raises(ValueError, match="b must be 1-D"):
        sca(up, feat, w, b[None], 0)
    with pytest.raises(ValueError, match="feat must have the batch size"):
        sca(up, xp.zeros((1, 7, 9, 9), np.float32), w, b, 0)
    with pytest.raises(ValueError, match="w must be K x C x 1 x 1"):
        sca(up, feat, xp.zeros((5, 6, 1, 1), np.float32), b, 0)  # C mismatch
    with pytest.raises(ValueError, match="w must be K x C x 1 x 1"):
        sca(up, feat, xp.zeros((4, 7, 1, 1), np.float32), b, 0)  # K mismatch
    with pytest.raises(ValueError, match="w must be K x C x 1 x 1"):
        sca(up, feat, xp.zeros((5, 7, 3, 3), np.float32), b, 0)  # not 1x1
    with pytest.raises(ValueError, match="b must have K"):
        sca(up, feat, w, xp.zeros(4, np.float32), 0)
    with pytest.raises(ValueError, match="feat must be C-contiguous"):
        sca(up, xp.zeros((2, 7, 9, 18), np.float32)[..., ::2], w, b, 0)
    with pytest.raises(ValueError, match="up is empty"):
        sca(xp.zeros((2, 5, 0, 4), np.float32), feat, w, b, 0)
    with pytest.raises(ValueError, match="offset"):
        sca(up, feat, w, b, 6)
    with pytest.raises(ValueError, match="offset"):
        sca(up, feat, w, b, (-1, 0))
    with pytest.raises(TypeError, match="scale"):
        sca(up, feat, w, b, 0, scale="0.01")
    with pytest.raises(TypeError, match="scale"):
        sca(up, feat, w, b, 0, scale=True)
    many = xp.zeros((65536, 1, 1, 1), np.float32)  # past the grid's z limit
    with pytest.raises(ValueError, match="up: at most 65535 images"):
        sca(many, many, xp.zeros((1, 1, 1, 1), np.float32), None, 0)

