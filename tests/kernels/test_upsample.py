"""ops.conv_transpose2d / conv_transpose2d_window and fcn_cuda.bilinear_weights
against torch (float64 on the CPU): F.conv_transpose2d and the input gradient
of F.conv2d, which is the same operation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st

import fcn_cuda
from fcn_cuda import ops

from _util import assert_close, to_numpy

pytestmark = pytest.mark.kernels

VARIANTS = ops.CONV_TRANSPOSE2D_VARIANTS


def t64(a):
    return torch.from_numpy(np.asarray(a)).double()


def reference(x, w, b=None, stride=1, padding=0):
    return F.conv_transpose2d(t64(x), t64(w), None if b is None else t64(b), stride=stride, padding=padding)


def reference_conv2d_input(x, w, stride, padding, out_hw):
    """The same op as the input gradient of conv2d whose output is x."""
    size = (x.shape[0], w.shape[1], *out_hw)
    return torch.nn.grad.conv2d_input(size, t64(w), t64(x), stride=stride, padding=padding)


def weights(rng, cin, cout, r, s, variant):
    """Random weights; per-channel (diagonal) ones for the 'bilinear' variant."""
    w = rng.standard_normal((cin, cout, r, s)).astype(np.float32)
    if variant == "bilinear":
        w *= np.eye(cin, cout, dtype=np.float32)[:, :, None, None]
    return w


# (N, C_in, C_out, H, W, R, S, stride, padding); C_in == C_out so both variants apply.
CASES = [
    (2, 1, 1, 3, 5, 4, 4, 2, 0),
    (2, 3, 3, 4, 3, 3, 3, 1, 1),
    (1, 3, 3, 1, 1, 4, 4, 2, 0),          # 1x1 image
    (2, 21, 21, 3, 5, 4, 4, 2, 0),        # FCN upscore2 / upscore_pool4
    (2, 21, 21, 3, 5, 16, 16, 8, 0),      # FCN-8s upscore8
    (1, 21, 21, 3, 5, 32, 32, 16, 0),     # FCN-16s upscore16
    (1, 21, 21, 3, 5, 64, 64, 32, 0),     # FCN-32s upscore
    (2, 3, 3, 5, 7, 5, 3, (3, 2), (1, 0)),  # odd, non-square, stride > kernel in places
    (2, 3, 3, 4, 6, 2, 2, 3, 0),          # stride > kernel: outputs with no taps
    (1, 64, 64, 2, 3, 3, 3, 2, (2, 1)),
]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_torch(be, rng, case, variant):
    n, cin, cout, h, w_, r, s, stride, padding = case
    x = rng.standard_normal((n, cin, h, w_)).astype(np.float32)
    w = weights(rng, cin, cout, r, s, variant)
    b = rng.standard_normal(cout).astype(np.float32)
    ref = reference(x, w, b, stride, padding)
    y = ops.conv_transpose2d(be.xp.asarray(x), be.xp.asarray(w), be.xp.asarray(b), stride, padding, variant=variant)
    assert_close(y, ref)
    grad_ref = reference_conv2d_input(x, w, stride, padding, ref.shape[2:]) + t64(b)[None, :, None, None]
    assert_close(y, grad_ref, what="vs conv2d input gradient")


@pytest.mark.parametrize("shape", [(2, 1, 3, 5), (2, 3, 4, 4), (1, 21, 3, 3)], ids=str)
def test_gather_general_weights(be, rng, shape):
    """C_in != C_out, no bias, against both references."""
    n, cin, h, w_ = shape
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((cin, 5, 4, 3)).astype(np.float32)
    y = ops.conv_transpose2d(be.xp.asarray(x), be.xp.asarray(w), stride=(2, 3))
    ref = reference(x, w, stride=(2, 3))
    assert_close(y, ref)
    assert_close(y, reference_conv2d_input(x, w, (2, 3), 0, ref.shape[2:]), what="vs conv2d input gradient")


@pytest.mark.model_scale
@pytest.mark.parametrize("channels,k,s", [(1, 4, 2), (3, 16, 8), (21, 4, 2), (21, 16, 8), (21, 32, 16), (21, 64, 32)])
def test_fcn_bilinear_upsampling(be, rng, channels, k, s):
    """The reference's frozen upscore layers: both variants give F.conv_transpose2d's result."""
    x = rng.standard_normal((2, channels, 3, 5)).astype(np.float32)
    w = fcn_cuda.bilinear_weights(channels, k)
    ref = reference(x, w, stride=s)
    for variant in (None, *VARIANTS):
        assert_close(ops.conv_transpose2d(be.xp.asarray(x), be.xp.asarray(w), stride=s, variant=variant), ref,
                     what=f"variant {variant}")


def test_auto_variant_picks_bilinear_for_diagonal(be, rng):
    """Observable difference: 'bilinear' never reads the zero off-diagonal weights,
    so an inf in channel 0 does not become 0 * inf = NaN in channel 1."""
    x = rng.standard_normal((1, 2, 3, 3)).astype(np.float32)
    x[0, 0, 1, 1] = np.inf
    w = be.xp.asarray(fcn_cuda.bilinear_weights(2, 4))
    auto = to_numpy(ops.conv_transpose2d(be.xp.asarray(x), w, stride=2))
    assert np.isfinite(auto[:, 1]).all()
    gather = to_numpy(ops.conv_transpose2d(be.xp.asarray(x), w, stride=2, variant="gather"))
    assert np.isnan(gather[:, 1]).any()
    w_dense = w.copy()
    w_dense[0, 1, 0, 0] = 1e-30  # one off-diagonal weight: no longer per-channel -> gather
    dense = to_numpy(ops.conv_transpose2d(be.xp.asarray(x), w_dense, stride=2))
    assert np.isnan(dense[:, 1]).any()


WINDOWS = [
    # (N, C, H, W, k, s, out_h, out_w, offset): FCN's final crops on small inputs, odd windows, edges
    (2, 21, 3, 5, 16, 8, 9, 21, 4),            # upscore8 then crop at 31 scaled down
    (1, 21, 3, 3, 64, 32, 13, 7, 19),          # upscore (32s), crop 19
    (1, 3, 3, 5, 32, 16, 5, 11, (27, 3)),      # upscore16, crop 27
    (2, 1, 4, 3, 4, 2, 10, 8, 0),              # the whole output
    (2, 3, 4, 3, 4, 2, 1, 1, (9, 7)),          # the last pixel
    (1, 3, 1, 1, 4, 2, 3, 2, (1, 2)),
]


@pytest.mark.parametrize("case", WINDOWS, ids=str)
@pytest.mark.parametrize("variant", VARIANTS)
def test_window_matches_cropped_torch(be, rng, case, variant):
    n, c, h, w_, k, s, out_h, out_w, offset = case
    oy, ox = (offset, offset) if isinstance(offset, int) else offset
    x = rng.standard_normal((n, c, h, w_)).astype(np.float32)
    w = weights(rng, c, c, k, k, variant)
    ref = reference(x, w, stride=s)[:, :, oy:oy + out_h, ox:ox + out_w]
    y = ops.conv_transpose2d_window(be.xp.asarray(x), be.xp.asarray(w), s, out_h, out_w, offset, variant=variant)
    assert y.shape == (n, c, out_h, out_w)
    assert_close(y, ref)


def test_window_with_bias_and_auto_variant(be, rng):
    x = rng.standard_normal((2, 3, 3, 4)).astype(np.float32)
    w = fcn_cuda.bilinear_weights(3, 16)
    b = rng.standard_normal(3).astype(np.float32)
    y = ops.conv_transpose2d_window(be.xp.asarray(x), be.xp.asarray(w), 8, 7, 9, (5, 6), b=be.xp.asarray(b))
    assert_close(y, reference(x, w, b, 8)[:, :, 5:12, 6:15])


def test_window_of_a_huge_output(be):
    """The window of an output whose full size would not fit 32-bit element
    counts: computed without ever forming the full output."""
    x = be.xp.asarray(np.array([[[[1.0, 2.0], [3.0, 4.0]]]], np.float32))
    w = be.xp.asarray(np.full((1, 1, 1, 1), 0.5, np.float32))
    for variant in VARIANTS:
        y = ops.conv_transpose2d_window(x, w, 50000, 1, 3, (50000, 49998), variant=variant)
        np.testing.assert_array_equal(to_numpy(y), [[[[0.0, 0.0, 2.0]]]])
        y = ops.conv_transpose2d_window(x, w, 50000, 2, 2, (49999, 0), variant=variant)
        np.testing.assert_array_equal(to_numpy(y), [[[[0.0, 0.0], [1.5, 0.0]]]])


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 16, 64])
def test_bilinear_weights_formula(k):
    # the reference's surgery.upsample_filt, verbatim
    factor = (k + 1) // 2
    center = factor - 1 if k % 2 == 1 else factor - 0.5
    og = np.ogrid[:k, :k]
    filt = (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)
    w = fcn_cuda.bilinear_weights(3, k)
    assert w.dtype == np.float32 and w.shape == (3, 3, k, k)
    for i in range(3):
        for j in range(3):
            np.testing.assert_array_equal(w[i, j], filt.astype(np.float32) if i == j else 0)


def test_bilinear_weights_k4_taps_and_interpolation(be):
    w = fcn_cuda.bilinear_weights(1, 4)
    np.testing.assert_array_equal(w[0, 0], np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25]))
    # upsampling a linear ramp by 2 gives the ramp at half steps, away from the border
    x = np.arange(6, dtype=np.float32)[None, None, None, :].repeat(3, axis=2)
    y = to_numpy(ops.conv_transpose2d(be.xp.asarray(x), be.xp.asarray(w), stride=2, padding=1))
    np.testing.assert_allclose(y[0, 0, 2, 1:-1], (np.arange(1, 11) - 0.5) / 2, rtol=0, atol=1e-6)


def test_bilinear_weights_bad_inputs():
    with pytest.raises(ValueError, match="channels"):
        fcn_cuda.bilinear_weights(0, 4)
    with pytest.raises(ValueError, match="kernel_size"):
        fcn_cuda.bilinear_weights(3, 0)
    with pytest.raises(TypeError, match="kernel_size"):
        fcn_cuda.bilinear_weights(3, 4.0)
    with pytest.raises(ValueError, match="weights"):
        fcn_cuda.bilinear_weights(50000, 4)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 2), cin=st.integers(1, 4), cout=st.integers(1, 4), h=st.integers(1, 5),
       w=st.integers(1, 5), r=st.integers(1, 6), s=st.integers(1, 6), sy=st.integers(1, 4), sx=st.integers(1, 4),
       py=st.integers(0, 3), px=st.integers(0, 3), diagonal=st.booleans(),
       variant=st.sampled_from([None, *VARIANTS]), seed=st.integers(0, 2**16))
def test_fuzz(be, n, cin, cout, h, w, r, s, sy, sx, py, px, diagonal, variant, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    wt = weights(rng, cin, cout, r, s, "bilinear" if diagonal else "gather")
    d_x, d_wt = be.xp.asarray(x), be.xp.asarray(wt)
    try:
        ref = reference(x, wt, None, (sy, sx), (py, px))
    except RuntimeError:  # torch: padding leaves no output
        with pytest.raises(ValueError, match="padding"):
            ops.conv_transpose2d(d_x, d_wt, None, (sy, sx), (py, px), variant=variant)
        return
    per_channel = cin == cout and not (wt * (1 - np.eye(cin))[:, :, None, None]).any()  # 1 x 1 always is
    if variant == "bilinear" and not per_channel:
        with pytest.raises(ValueError, match="bilinear"):
            ops.conv_transpose2d(d_x, d_wt, None, (sy, sx), (py, px), variant=variant)
        return
    assert_close(ops.conv_transpose2d(d_x, d_wt, None, (sy, sx), (py, px), variant=variant), ref)
    # and a random window of the unpadded output
    full = reference(x, wt, None, (sy, sx))
    oy, ox = rng.integers(0, full.shape[2]), rng.integers(0, full.shape[3])
    out_h, out_w = rng.integers(1, full.shape[2] - oy + 1), rng.integers(1, full.shape[3] - ox + 1)
    y = ops.conv_transpose2d_window(d_x, d_wt, (sy, sx), int(out_h), int(out_w), (int(oy), int(ox)),
                                    variant=variant)
    assert_close(y, full[:, :, oy:oy + out_h, ox:ox + out_w])


def test_bad_inputs(be):
    xp = be.xp
    x = xp.zeros((1, 2, 3, 3), np.float32)
    w = xp.asarray(fcn_cuda.bilinear_weights(2, 4))
    b = xp.zeros(2, np.float32)
    ct = ops.conv_transpose2d
    with pytest.raises(TypeError, match="x must be float32"):
        ct(x.astype(np.float64), w)
    with pytest.raises(TypeError, match="w must be float32"):
        ct(x, w.astype(np.float16))
    with pytest.raises(TypeError, match="b must be float32"):
        ct(x, w, b.astype(np.int32))
    with pytest.raises(ValueError, match="x must be 4-D"):
        ct(x[0], w)
    with pytest.raises(ValueError, match="w must be 4-D"):
        ct(x, w[0])
    with pytest.raises(ValueError, match="b must be 1-D"):
        ct(x, w, b[None])
    with pytest.raises(ValueError, match="w must be C_in x C_out"):
        ct(xp.zeros((1, 3, 3, 3), np.float32), w)
    with pytest.raises(ValueError, match="b must have C_out"):
        ct(x, w, xp.zeros(3, np.float32))
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        ct(xp.zeros((1, 2, 3, 6), np.float32)[..., ::2], w)
    with pytest.raises(ValueError, match="w must be C-contiguous"):
        ct(x, xp.ascontiguousarray(w.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)[:, :, :, :])
    with pytest.raises(ValueError, match="x is empty"):
        ct(xp.zeros((0, 2, 3, 3), np.float32), w)
    with pytest.raises(ValueError, match="w is empty"):
        ct(x, xp.zeros((2, 2, 0, 4), np.float32))
    with pytest.raises(ValueError, match="stride"):
        ct(x, w, stride=0)
    with pytest.raises(ValueError, match="stride"):
        ct(x, w, stride=(2, -1))
    with pytest.raises(ValueError, match="padding"):
        ct(x, w, stride=2, padding=-1)
    with pytest.raises(ValueError, match="padding"):
        ct(x, w, stride=2, padding=(0, 4))  # full output 8: padding 4 on each side leaves nothing
    with pytest.raises(ValueError, match="variant"):
        ct(x, w, variant="scatter")
    with pytest.raises(ValueError, match="bilinear"):
        ct(x, xp.ones((2, 2, 4, 4), np.float32), variant="bilinear")
    with pytest.raises(ValueError, match="bilinear"):
        ct(x, xp.ones((2, 3, 4, 4), np.float32), variant="bilinear")  # C_in != C_out
    one = xp.ones((1, 1, 2, 2), np.float32)
    w1 = xp.ones((1, 1, 1, 1), np.float32)
    with pytest.raises(ValueError, match="the output would have"):
        ct(one, w1, stride=50000)  # 50001 x 50001 outputs overflow int32 indexing: refused before allocating
    with pytest.raises(ValueError, match="stride"):
        ct(one, w1, stride=2**31 - 1)  # the full output's height itself overflows int32
    with pytest.raises(TypeError, match="stride"):
        ct(x, w, stride=2.0)


def test_window_bad_inputs(be):
    xp = be.xp
    x = xp.zeros((1, 2, 3, 3), np.float32)
    w = xp.asarray(fcn_cuda.bilinear_weights(2, 4))  # full output 8 x 8 at stride 2
    win = ops.conv_transpose2d_window
    with pytest.raises(ValueError, match="offset"):
        win(x, w, 2, 4, 4, 5)  # 5 + 4 > 8
    with pytest.raises(ValueError, match="offset"):
        win(x, w, 2, 1, 1, (0, 8))
    with pytest.raises(ValueError, match="offset"):
        win(x, w, 2, 1, 1, (-1, 0))
    with pytest.raises(ValueError, match="offset"):
        win(x, w, 2, 1, 1, (1, 2, 3))
    with pytest.raises(ValueError, match="out_h"):
        win(x, w, 2, 0, 1, 0)
    with pytest.raises(ValueError, match="out_w"):
        win(x, w, 2, 1, -3, 0)
    with pytest.raises(TypeError, match="out_h"):
        win(x, w, 2, 1.5, 1, 0)
    with pytest.raises(ValueError, match="stride"):
        win(x, w, 0, 1, 1, 0)
    with pytest.raises(ValueError, match="variant"):
        win(x, w, 2, 1, 1, 0, variant="nope")
    with pytest.raises(ValueError, match="bilinear"):
        win(x, xp.ones((2, 2, 4, 4), np.float32), 2, 1, 1, 0, variant="bilinear")
    with pytest.raises(TypeError, match="x must be float32"):
        win(x.astype(np.float64), w, 2, 1, 1, 0)
    with pytest.raises(ValueError, match="w must be C_in x C_out"):
        win(xp.zeros((1, 3, 3, 3), np.float32), w, 2, 1, 1, 0)
    with pytest.raises(ValueError, match="the output would have"):
        win(xp.ones((1, 1, 2, 2), np.float32), xp.ones((1, 1, 1, 1), np.float32), 50000, 50001, 50001, 0)


def test_trusted_skips_the_per_channel_check_only_when_asked(monkeypatch):
    from fcn_cuda import ops as O
    from fcn_cuda.ops import upsample

    fcn_cuda.use_backend("host")
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 5)).astype(np.float32)
    w = fcn_cuda.bilinear_weights(3, 4)
    calls = []
    real = upsample.is_diagonal
    monkeypatch.setattr(upsample, "is_diagonal", lambda be, a: calls.append(1) or real(be, a))
    y = O.conv_transpose2d(x, w, stride=2, variant="bilinear", trusted=True)
    assert calls == []
    np.testing.assert_array_equal(y, O.conv_transpose2d(x, w, stride=2, variant="bilinear"))
    assert calls == [1]
    with pytest.raises(ValueError, match="explicit variant"):
        O.conv_transpose2d(x, w, stride=2, trusted=True)
    with pytest.raises(TypeError, match="trusted"):
        O.conv_transpose2d_window(x, w, 2, 3, 3, 1, variant="gather", trusted=1)
