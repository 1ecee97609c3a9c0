"""ops.upsample_argmax (csrc/kernels/head.cuh), FCN.labels and infer's fused
path: against the unfused sequence (conv_transpose2d_window, then argmax /
softmax), which it must match exactly in its labels, and against torch in
float64 (F.conv_transpose2d, crop, softmax, argmax)."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st

import fcn_cuda
from fcn_cuda import ops

from _util import assert_close, to_numpy
from torch_fcn import SMALL_FC, SMALL_WIDTHS, random_fcn, state_dict_f32

pytestmark = pytest.mark.kernels


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def torch_reference(x, w, stride, out_h, out_w, offset):
    """(probs, labels, upsampled scores) in float64."""
    oy, ox = pair(offset)
    up = F.conv_transpose2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), stride=stride)
    up = up[:, :, oy:oy + out_h, ox:ox + out_w]
    return torch.softmax(up, 1).numpy(), up.argmax(1).numpy(), up.numpy()


def decisive(up):
    """Pixels whose top two classes differ by more than fp32 rounding can
    blur: there the fp32 labels must be torch's."""
    if up.shape[1] == 1:
        return np.ones(up.shape[:1] + up.shape[2:], bool)
    top2 = np.sort(up, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0] > 1e-5 * max(1.0, np.abs(up).max())


def per_channel(rng, c, r, s, bilinear):
    if bilinear:
        assert r == s
        return fcn_cuda.bilinear_weights(c, r)
    return (rng.standard_normal((c, c, r, s)) * np.eye(c)[:, :, None, None]).astype(np.float32)


def check(be, x, w, stride, out_h, out_w, offset, probs):
    """Runs the fused op and checks it against the unfused ops and torch."""
    xd, wd = be.xp.asarray(x), be.xp.asarray(w)
    out = ops.upsample_argmax(xd, wd, stride, out_h, out_w, offset, probs=probs)
    lab, p = out if probs else (out, None)
    n, c = x.shape[:2]
    assert lab.shape == (n, out_h, out_w) and lab.dtype == np.int32
    up = ops.conv_transpose2d_window(xd, wd, stride, out_h, out_w, offset, variant="bilinear")
    lab = to_numpy(lab)
    np.testing.assert_array_equal(lab, to_numpy(ops.argmax(up)))
    ref_p, ref_l, ref_up = torch_reference(x, w, stride, out_h, out_w, offset)
    sure = decisive(ref_up)
    np.testing.assert_array_equal(lab[sure], ref_l[sure])
    if probs:
        assert p.shape == (n, c, out_h, out_w) and p.dtype == np.float32
        assert np.isfinite(to_numpy(p)).all()
        assert_close(p, ops.softmax(up), what="vs unfused softmax")
        assert_close(p, ref_p, what="vs torch")
    return lab


# (N, C, H, W, k, stride, out_h, out_w, offset, bilinear)
CASES = [
    (2, 21, 6, 7, 16, 8, 23, 29, 31, True),           # FCN-8s upscore8 + crop 31
    (1, 21, 3, 4, 32, 16, 21, 37, 27, True),          # FCN-16s upscore16 + crop 27
    (2, 21, 2, 3, 64, 32, 23, 31, 19, True),          # FCN-32s upscore + crop 19
    (2, 2, 6, 5, 16, 8, 17, 9, (31, 30), True),
    (3, 1, 6, 5, 16, 8, 13, 11, 31, True),            # one class: label 0, probability 1
    (2, 21, 3, 5, 4, 2, 7, 11, 0, True),              # upscore2's geometry, whole rows
    (1, 2, 1, 1, 16, 8, 16, 16, 0, True),             # 1x1 coarse map: the whole output
    (2, 21, 4, 5, 3, (2, 3), 9, 13, (0, 2), False),   # random per-channel weights, odd stride pair
    (2, 2, 4, 6, 2, 3, 10, 16, 0, False),             # stride > kernel: pixels with no tap (all 0, a tie)
]


@pytest.mark.parametrize("probs", [False, True], ids=["labels", "probs"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_unfused_and_torch(be, rng, case, probs):
    n, c, h, w_, k, stride, out_h, out_w, offset, bilinear = case
    x = (3 * rng.standard_normal((n, c, h, w_))).astype(np.float32)
    check(be, x, per_channel(rng, c, k, k, bilinear), stride, out_h, out_w, offset, probs)


def test_ties_and_equal_channels(be, rng):
    """Exact ties: labels go to the lowest channel, as ops.argmax and torch."""
    w = fcn_cuda.bilinear_weights(5, 4)  # taps 1/4, 3/4: sums of small integers stay exact
    # Scores of 0 or 1: many upsampled pixels have a tied maximum,
    # and fp32 and float64 agree bit for bit, so torch's first-max rule applies.
    x = rng.integers(0, 2, (2, 5, 4, 5)).astype(np.float32)
    lab = check(be, x, w, 2, 9, 11, 1, True)
    _, ref_l, up = torch_reference(x, w, 2, 9, 11, 1)
    np.testing.assert_array_equal(lab, ref_l)
    top2 = np.sort(up, axis=1)[:, -2:]
    assert (top2[:, 0] == top2[:, 1]).mean() > 0.3, "the case should be full of ties"
    # Channels 1 and 3 identical and above the others everywhere: label 1.
    x = rng.standard_normal((2, 5, 4, 5)).astype(np.float32)
    x[:, 1] = x[:, 3] = x.max() + 5
    xd = be.xp.asarray(x)
    assert (to_numpy(ops.upsample_argmax(xd, be.xp.asarray(w), 2, 9, 11, 1)) == 1).all()
    # All channels equal: label 0, probability 1/C.
    x = np.full((2, 5, 3, 3), 7.25, np.float32)
    lab, p = ops.upsample_argmax(be.xp.asarray(x), be.xp.asarray(w), 2, 7, 6, (1, 2), probs=True)
    assert (to_numpy(lab) == 0).all()
    np.testing.assert_allclose(to_numpy(p), 0.2, rtol=1e-6)


def test_non_finite_scores_as_unfused_and_torch(be, rng):
    """NaN / inf coarse scores spread to the pixels they reach; labels and
    probabilities (their NaN pattern, and their values where finite) are those
    of the unfused ops and of torch in float64: the per-channel upsampling as a
    grouped F.conv_transpose2d (the off-diagonal zeros of the full one would
    make inf * 0 = NaN in every channel, which per-channel weights never
    meet), then softmax and argmax over channels."""
    x = rng.standard_normal((2, 4, 5, 6)).astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    x[0, 2, 0, 0] = np.inf
    x[1, 0, 4, 5] = -np.inf
    x[1, :, 0, 0] = -np.inf
    x[1, 3, 2, 2] = np.inf
    x[1, 1, 2, 2] = np.nan
    w = fcn_cuda.bilinear_weights(4, 16)
    xd, wd = be.xp.asarray(x), be.xp.asarray(w)
    lab, p = ops.upsample_argmax(xd, wd, 8, 30, 37, (3, 5), probs=True)
    lab, p = to_numpy(lab), to_numpy(p)
    up = ops.conv_transpose2d_window(xd, wd, 8, 30, 37, (3, 5))
    unfused_p, unfused_l = (to_numpy(a) for a in ops.softmax_argmax(up))
    np.testing.assert_array_equal(lab, unfused_l)
    np.testing.assert_array_equal(np.isnan(p), np.isnan(unfused_p))

    diagonal = torch.from_numpy(w[np.arange(4), np.arange(4)][:, None]).double()
    up64 = F.conv_transpose2d(torch.from_numpy(x).double(), diagonal, stride=8, groups=4)[:, :, 3:33, 5:42]
    ref_p, ref_l = torch.softmax(up64, 1).numpy(), up64.argmax(1).numpy()
    np.testing.assert_array_equal(np.isnan(p), np.isnan(ref_p))
    finite = ~np.isnan(ref_p)
    assert finite.any() and (~finite).any()
    assert_close(p[finite], ref_p[finite], what="probabilities where torch's are finite")
    up64 = up64.numpy()
    special = ~np.isfinite(up64).all(1)  # a NaN or an infinity decides the label exactly
    sure = special | decisive(np.where(np.isfinite(up64), up64, 0))
    assert special.any() and sure.mean() > 0.9
    np.testing.assert_array_equal(lab[sure], ref_l[sure])


def test_trusted_reads_only_the_diagonal(be, rng):
    """trusted=True skips the per-channel check; only w[c, c] is ever read."""
    x = rng.standard_normal((1, 3, 3, 4)).astype(np.float32)
    w = per_channel(rng, 3, 4, 4, False)
    dense = w + rng.standard_normal(w.shape).astype(np.float32) * (1 - np.eye(3, dtype=np.float32))[:, :, None, None]
    with pytest.raises(ValueError, match="^w must be per-channel"):
        ops.upsample_argmax(be.xp.asarray(x), be.xp.asarray(dense), 2, 6, 7, 1)
    got = ops.upsample_argmax(be.xp.asarray(x), be.xp.asarray(dense), 2, 6, 7, 1, probs=True, trusted=True)
    want = ops.upsample_argmax(be.xp.asarray(x), be.xp.asarray(w), 2, 6, 7, 1, probs=True)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


# ---- the model and infer


def small_model(variant, num_classes, bilinear=True, seed=3):
    return fcn_cuda.load_model(state_dict_f32(random_fcn(variant, seed=seed, bilinear=bilinear,
                                                         num_classes=num_classes)))


@pytest.mark.model_scale
@pytest.mark.parametrize("variant,bilinear", [("32s", True), ("16s", True), ("8s", True), ("8s", False)])
def test_model_labels_equal_argmax_of_forward(be, rng, variant, bilinear, monkeypatch):
    model = small_model(variant, 4, bilinear)
    calls = []
    fused = ops.upsample_argmax
    monkeypatch.setattr(ops, "upsample_argmax", lambda *a, **k: calls.append(1) or fused(*a, **k))
    x = be.xp.asarray((40 * rng.standard_normal((2, 3, 45, 52))).astype(np.float32))
    scores = model(x)
    lab, p = model.labels(x, probs=True)
    assert len(calls) == int(bilinear), "the fused op runs exactly when the last upsample is per-channel"
    ref_p, ref_l = ops.softmax_argmax(scores)
    lab = to_numpy(lab)
    np.testing.assert_array_equal(lab, to_numpy(ref_l))
    assert len(np.unique(lab)) > 1, "a label map of one class says little"
    assert_close(p, ref_p)
    np.testing.assert_array_equal(to_numpy(model.labels(x)), lab)


@pytest.mark.model_scale
def test_infer_labels_same_with_and_without_scores(be, monkeypatch):
    model = small_model("8s", 21, seed=11)
    calls = []
    fused = ops.upsample_argmax
    monkeypatch.setattr(ops, "upsample_argmax", lambda *a, **k: calls.append(1) or fused(*a, **k))
    rgb = np.random.default_rng(4).integers(0, 256, (21, 30, 3), dtype=np.uint8)
    labels = fcn_cuda.infer(rgb, model)
    assert calls == [1]
    with_scores, scores = fcn_cuda.infer(rgb, model, return_scores=True)
    assert calls == [1], "with scores, infer keeps the unfused path"
    assert isinstance(labels, np.ndarray) and labels.shape == (21, 30)
    np.testing.assert_array_equal(labels, with_scores)
    np.testing.assert_array_equal(labels, scores.argmax(0))
    assert len(np.unique(labels)) > 1


# ---- bad input


class _FakeGpuArray:
    __cuda_array_interface__ = {"shape": (1, 1, 1, 1), "typestr": "<f4", "data": (0, False), "version": 3}


def _bad(be, **changes):
    args = dict(x=be.xp.zeros((2, 3, 4, 5), np.float32), w=be.xp.asarray(fcn_cuda.bilinear_weights(3, 16)),
                stride=8, out_h=9, out_w=11, offset=(31, 30), probs=False)
    args.update({k: (v(be) if callable(v) else v) for k, v in changes.items()})
    return args


BAD = [
    ("x_float64", TypeError, "x", dict(x=lambda be: be.xp.zeros((2, 3, 4, 5), np.float64))),
    ("x_rank3", ValueError, "x", dict(x=lambda be: be.xp.zeros((3, 4, 5), np.float32))),
    ("x_noncontiguous", ValueError, "x",
     dict(x=lambda be: be.xp.zeros((2, 3, 5, 4), np.float32).transpose(0, 1, 3, 2))),
    ("x_empty", ValueError, "x", dict(x=lambda be: be.xp.zeros((0, 3, 4, 5), np.float32))),
    ("x_other_backend", TypeError, "x",
     dict(x=lambda be: _FakeGpuArray() if be.name == "host" else np.zeros((2, 3, 4, 5), np.float32))),
    ("w_int32", TypeError, "w", dict(w=lambda be: be.xp.zeros((3, 3, 16, 16), np.int32))),
    ("w_rank2", ValueError, "w", dict(w=lambda be: be.xp.zeros((3, 3), np.float32))),
    ("w_channels", ValueError, "w", dict(w=lambda be: be.xp.asarray(fcn_cuda.bilinear_weights(4, 16)))),
    ("w_not_square", ValueError, "w", dict(w=lambda be: be.xp.zeros((3, 4, 16, 16), np.float32))),
    ("w_dense", ValueError, "w", dict(w=lambda be: be.xp.ones((3, 3, 16, 16), np.float32))),
    ("stride_zero", ValueError, "stride", dict(stride=0)),
    ("stride_float", TypeError, "stride", dict(stride=8.0)),
    ("stride_triple", ValueError, "stride", dict(stride=(8, 8, 8))),
    ("stride_huge", ValueError, "stride", dict(stride=2**30)),
    ("out_h_zero", ValueError, "out_h", dict(out_h=0)),
    ("out_w_str", TypeError, "out_w", dict(out_w="11")),
    ("offset_negative", ValueError, "offset", dict(offset=(-1, 0))),
    ("offset_outside", ValueError, "offset", dict(offset=(31, 38))),  # 38 + 11 > (5 - 1) * 8 + 16
    ("window_too_tall", ValueError, "offset", dict(out_h=10)),         # 31 + 10 > (4 - 1) * 8 + 16
    ("probs_not_bool", TypeError, "probs", dict(probs="yes")),
    ("trusted_not_bool", TypeError, "trusted", dict(trusted=1)),
    # Windows the full output holds, but whose results overflow 32-bit indexing.
    ("labels_int32", ValueError, "the labels",
     dict(x=lambda be: be.xp.zeros((1, 1, 2, 2), np.float32), w=lambda be: be.xp.ones((1, 1, 1, 1), np.float32),
          stride=50000, out_h=50001, out_w=50001, offset=0)),
    ("probs_int32", ValueError, "probs",
     dict(x=lambda be: be.xp.zeros((1, 2, 2, 2), np.float32),
          w=lambda be: be.xp.asarray(np.eye(2, dtype=np.float32)[:, :, None, None]),
          stride=40000, out_h=40000, out_w=40000, offset=0, probs=True)),
]


@pytest.mark.parametrize("case,error,name,changes", BAD, ids=[b[0] for b in BAD])
def test_bad_input(be, case, error, name, changes):
    with pytest.raises(error, match=rf"^{re.escape(name)}\b"):
        ops.upsample_argmax(**_bad(be, **changes))


def test_model_labels_bad_input(be):
    model = fcn_cuda.FCN("32s", 3, widths=SMALL_WIDTHS, fc=SMALL_FC)
    with pytest.raises(ValueError, match="^x must have 3 channels"):
        model.labels(be.xp.zeros((1, 4, 8, 8), np.float32))
    with pytest.raises(TypeError, match="^x must be float32"):
        model.labels(be.xp.zeros((1, 3, 8, 8), np.float64))


# ---- fuzz


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 2), c=st.sampled_from([1, 2, 3, 21]), h=st.integers(1, 4), w=st.integers(1, 4),
       r=st.integers(1, 8), s=st.integers(1, 8), sy=st.integers(1, 5), sx=st.integers(1, 5),
       diagonal=st.sampled_from([True, True, True, False]), probs=st.booleans(), seed=st.integers(0, 2**32 - 1),
       data=st.data())
def test_fuzz(be, n, c, h, w, r, s, sy, sx, diagonal, probs, seed, data):
    full_h, full_w = (h - 1) * sy + r, (w - 1) * sx + s
    # Windows mostly inside the full output, at times one past its edge.
    oy = data.draw(st.integers(0, full_h - 1), "oy")
    ox = data.draw(st.integers(0, full_w - 1), "ox")
    out_h = data.draw(st.integers(1, full_h - oy + 1), "out_h")
    out_w = data.draw(st.integers(1, full_w - ox + 1), "out_w")
    rng = np.random.default_rng(seed)
    x = (3 * rng.standard_normal((n, c, h, w))).astype(np.float32)
    wt = rng.standard_normal((c, c, r, s)).astype(np.float32)
    if diagonal:
        wt *= np.eye(c, dtype=np.float32)[:, :, None, None]
    fits = oy + out_h <= full_h and ox + out_w <= full_w
    if not fits or not (diagonal or c == 1):
        with pytest.raises(ValueError, match="^offset" if not fits else "^w must be per-channel"):
            ops.upsample_argmax(be.xp.asarray(x), be.xp.asarray(wt), (sy, sx), out_h, out_w, (oy, ox), probs=probs)
        return
    check(be, x, wt, (sy, sx), out_h, out_w, (oy, ox), probs)
