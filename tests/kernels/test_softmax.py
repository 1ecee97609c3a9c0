"""ops.softmax / ops.argmax / ops.softmax_argmax against torch (float64
softmax, exact argmax), every variant on every backend present."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fcn_cuda import ops
from _util import assert_close, errors, to_numpy

pytestmark = pytest.mark.kernels

VARIANTS = ("auto",) + ops.SOFTMAX_VARIANTS
# H*W not a multiple of 4: only the scalar path can run them.
ODD = [(2, 1, 5, 7), (2, 2, 3, 3), (2, 3, 7, 9), (2, 21, 5, 11), (2, 64, 3, 5), (2, 3, 1, 1), (1, 21, 1, 1),
       (2, 21, 25, 19)]
# H*W a multiple of 4 (W odd in some): both paths.
VEC4 = [(2, 1, 4, 4), (2, 2, 2, 6), (2, 3, 4, 5), (2, 21, 8, 6), (2, 64, 4, 3), (2, 21, 2, 2), (1, 21, 20, 31)]
CASES = [(v, s) for s in ODD + VEC4 for v in VARIANTS if not (v == "float4" and s in ODD)]


def reference(x):
    t = torch.from_numpy(to_numpy(x))
    return torch.softmax(t.double(), 1).numpy(), torch.argmax(t, 1).numpy()


def check(be, x, variant, *, tol=1e-5):
    """All three ops on x match torch; returns the probabilities."""
    x = be.xp.asarray(x)
    kept = to_numpy(x).copy()
    ref_p, ref_l = reference(x)
    p, lab = ops.softmax_argmax(x, variant)
    assert lab.dtype == np.int32 and lab.shape == ref_l.shape
    assert_close(p, ref_p, tol, "softmax_argmax probabilities")
    np.testing.assert_array_equal(to_numpy(lab), ref_l)
    assert_close(ops.softmax(x, variant), ref_p, tol, "softmax")
    np.testing.assert_array_equal(to_numpy(ops.argmax(x, variant)), ref_l)
    np.testing.assert_array_equal(to_numpy(x), kept)  # the input is only read
    return to_numpy(p)


@pytest.mark.parametrize("variant,shape", CASES, ids=[f"{v}-{'x'.join(map(str, s))}" for v, s in CASES])
def test_matches_torch(be, rng, variant, shape):
    x = (3 * rng.standard_normal(shape)).astype(np.float32)
    p = check(be, x, variant)
    assert p.shape == shape and p.dtype == np.float32


TIE_CASES = [(v, s) for s in [(2, 21, 4, 5), (2, 3, 3, 3), (2, 64, 1, 4), (2, 2, 1, 1)] for v in VARIANTS
             if not (v == "float4" and s[2] * s[3] % 4)]


@pytest.mark.parametrize("variant,shape", TIE_CASES, ids=[f"{v}-{'x'.join(map(str, s))}" for v, s in TIE_CASES])
def test_ties_go_to_lowest_channel(be, rng, variant, shape):
    # Few distinct values: most pixels have their maximum in several channels.
    x = rng.integers(-2, 3, shape).astype(np.float32)
    check(be, x, variant)
    # All channels equal: label 0 and probability 1/C everywhere.
    x = np.full(shape, 7.25, np.float32)
    p, lab = ops.softmax_argmax(be.xp.asarray(x), variant)
    assert (to_numpy(lab) == 0).all()
    np.testing.assert_allclose(to_numpy(p), 1 / shape[1], rtol=1e-6)
    # The maximum repeated in two given channels: the lower one is the label.
    x = rng.standard_normal(shape).astype(np.float32)
    hi, lo = shape[1] - 1, shape[1] // 2
    x[:, hi] = x[:, lo] = 50.0
    assert (to_numpy(ops.argmax(be.xp.asarray(x), variant)) == lo).all()


def skewed(rng, shape, kind):
    x = rng.standard_normal(shape).astype(np.float32)
    if kind == "spikes":  # a few huge logits of either sign among ordinary ones
        idx = rng.choice(x.size, size=max(1, x.size // 20), replace=False)
        x.flat[idx] = rng.choice([-1e4, 1e4], size=idx.size)
    elif kind == "uniform":
        x = rng.uniform(-1e4, 1e4, shape).astype(np.float32)
    elif kind == "equal_huge":
        x[:] = 1e4
    elif kind == "near_huge":  # huge and nearly equal: the differences matter
        x = (1e4 + rng.uniform(-4, 4, shape)).astype(np.float32)
    elif kind == "all_negative_huge":
        x = (-1e4 + rng.standard_normal(shape)).astype(np.float32)
    return x


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", ["spikes", "uniform", "equal_huge", "near_huge", "all_negative_huge"])
def test_stable_for_huge_logits(be, rng, variant, kind):
    shape = (2, 21, 4, 7)
    x = skewed(rng, shape, kind)
    p = check(be, x, variant)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.astype(np.float64).sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_non_finite_logits_as_torch(be, rng, variant):
    """NaN, +inf and -inf give torch's results exactly: NaN where torch has
    NaN, the same finite probabilities elsewhere, the same labels."""
    n, c, h, w = 2, 5, 8, 8
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    special = np.array([np.nan, np.inf, -np.inf], np.float32)
    mask = rng.random(x.shape) < 0.15
    x[mask] = rng.choice(special, size=mask.sum())
    # Hand-made pixels (row 0): every special value alone, first, last, twice.
    x[:, :, 0, :] = 0.0
    x[0, :, 0, 0] = -np.inf                           # only -inf: NaN, label 0
    x[0, :2, 0, 1] = -np.inf                          # -inf before a finite max
    x[0, 0, 0, 2] = np.inf                            # +inf first
    x[0, c - 1, 0, 3] = np.nan                        # NaN last
    x[0, 1, 0, 4] = x[0, 3, 0, 4] = np.nan            # two NaNs: the first is the label
    x[0, 2, 0, 5] = np.inf; x[0, 4, 0, 5] = np.nan    # +inf, then NaN
    x[0, :, 0, 6] = np.inf                            # only +inf
    x[0, 1, 0, 7] = -np.inf; x[0, 3, 0, 7] = np.inf   # -inf and +inf
    ref_p, ref_l = reference(x)
    p, lab = ops.softmax_argmax(be.xp.asarray(x), variant)
    p = to_numpy(p)
    np.testing.assert_array_equal(to_numpy(lab), ref_l)
    np.testing.assert_array_equal(np.isnan(p), np.isnan(ref_p))
    finite = ~np.isnan(ref_p)
    assert finite.any() and (~finite).any()
    np.testing.assert_allclose(p[finite], ref_p[finite], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(to_numpy(ops.argmax(be.xp.asarray(x), variant)), ref_l)
    np.testing.assert_array_equal(np.isnan(to_numpy(ops.softmax(be.xp.asarray(x), variant))), np.isnan(ref_p))


def misaligned(be, shape):
    """A C-contiguous float32 array that starts 4 bytes past a 16-byte boundary."""
    buf = be.xp.zeros(int(np.prod(shape)) + 4, np.float32)
    start = (-(be.ptr(buf) // 4) + 1) % 4
    a = buf[start:start + int(np.prod(shape))].reshape(shape)
    assert be.ptr(a) % 16 == 4 and a.flags.c_contiguous
    return a


@pytest.mark.parametrize("variant", ["auto", "scalar"])
def test_misaligned_input_runs_scalar(be, rng, variant):
    x = misaligned(be, (2, 21, 4, 4))
    x[...] = be.xp.asarray(rng.standard_normal(x.shape).astype(np.float32))
    check(be, x, variant)


def test_accepts_torch_tensor(be, rng):
    """A torch tensor on the backend's device is read in place, like its array."""
    x = rng.standard_normal((2, 21, 3, 5)).astype(np.float32)
    t = torch.from_numpy(x).to("cuda" if be.name == "cuda" else "cpu")
    ref_p, ref_l = reference(x)
    p, lab = ops.softmax_argmax(t)
    assert_close(p, ref_p)
    np.testing.assert_array_equal(to_numpy(lab), ref_l)


OPS = {"softmax": ops.softmax, "argmax": ops.argmax, "softmax_argmax": ops.softmax_argmax}


class _FakeGpuArray:
    """Claims to live in GPU memory, as a CuPy array or a CUDA torch tensor does."""
    __cuda_array_interface__ = {"shape": (1, 1, 1, 1), "typestr": "<f4", "data": (0, False), "version": 3}


def _huge_view(be, shape):
    """A C-contiguous view claiming `shape` over a one-element buffer: enough
    to test that oversized inputs are refused before anything reads them."""
    buf = be.xp.zeros(1, np.float32)
    strides = tuple(int(np.prod(shape[i + 1:])) * 4 for i in range(len(shape)))
    return be.xp.lib.stride_tricks.as_strided(buf, shape=shape, strides=strides)


BAD = [
    ("float64", TypeError, "x", lambda be: be.xp.zeros((2, 3, 4, 4), np.float64), "auto"),
    ("int32", TypeError, "x", lambda be: be.xp.zeros((2, 3, 4, 4), np.int32), "auto"),
    ("rank3", ValueError, "x", lambda be: be.xp.zeros((3, 4, 4), np.float32), "auto"),
    ("rank5", ValueError, "x", lambda be: be.xp.zeros((1, 2, 3, 4, 4), np.float32), "auto"),
    ("noncontiguous", ValueError, "x", lambda be: be.xp.zeros((2, 3, 4, 5), np.float32).transpose(0, 1, 3, 2), "auto"),
    ("zero_channels", ValueError, "x", lambda be: be.xp.zeros((2, 0, 4, 4), np.float32), "auto"),
    ("zero_batch", ValueError, "x", lambda be: be.xp.zeros((0, 3, 4, 4), np.float32), "auto"),
    ("zero_width", ValueError, "x", lambda be: be.xp.zeros((2, 3, 4, 0), np.float32), "auto"),
    ("int32_overflow", ValueError, "x", lambda be: _huge_view(be, (1, 2, 2**15, 2**15)), "auto"),
    ("other_backend", TypeError, "x",
     lambda be: _FakeGpuArray() if be.name == "host" else np.zeros((1, 2, 4, 4), np.float32), "auto"),
    ("unknown_variant", ValueError, "variant", lambda be: be.xp.zeros((2, 3, 4, 4), np.float32), "float8"),
    ("variant_not_str", ValueError, "variant", lambda be: be.xp.zeros((2, 3, 4, 4), np.float32), 4),
    ("float4_hw_not_multiple_of_4", ValueError, "variant", lambda be: be.xp.zeros((2, 3, 3, 5), np.float32), "float4"),
    ("float4_misaligned", ValueError, "variant", lambda be: misaligned(be, (2, 3, 4, 4)), "float4"),
]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case,error,name,make,variant", BAD, ids=[b[0] for b in BAD])
def test_bad_input(be, op, case, error, name, make, variant):
    with pytest.raises(error, match=name):
        OPS[op](make(be), variant)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(0, 3), c=st.integers(1, 70), h=st.integers(1, 9), w=st.integers(1, 9),
       variant=st.sampled_from(VARIANTS + ("float2",)), scale=st.sampled_from([1.0, 30.0, 1e4]),
       op=st.sampled_from(sorted(OPS)), seed=st.integers(0, 2**32 - 1))
def test_fuzz(be, n, c, h, w, variant, scale, op, seed):
    x = be.xp.asarray((scale * np.random.default_rng(seed).standard_normal((n, c, h, w))).astype(np.float32))
    if n == 0 or variant == "float2" or (variant == "float4" and (h * w) % 4):
        with pytest.raises(ValueError):
            OPS[op](x, variant)
        return
    ref_p, ref_l = reference(x)
    out = OPS[op](x, variant)
    if op == "softmax_argmax":
        p, lab = out
    else:
        p, lab = (out, None) if op == "softmax" else (None, out)
    if p is not None:
        rel, _ = errors(p, ref_p)
        assert rel <= 1e-5, f"relative error {rel:.3e}"
    if lab is not None:
        np.testing.assert_array_equal(to_numpy(lab), ref_l)
