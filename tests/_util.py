"""Comparison helpers for the numerical contract (docs/design.md, 'Numerical contract'),
and the import of the reference libraries the test extras install."""

import importlib
import os
from pathlib import Path

import numpy as np
import pytest

import fcn_cuda

FP32 = 1e-5
TF32 = 2e-3
HALF = 1e-2

TESTS = Path(__file__).resolve().parent  # the shared helpers and data/; the tests are in its folders by layer
ROOT = TESTS.parent  # the repository

# Set to 1 where every test extra is installed (.ci/run): a missing one then fails the tests that need it.
REQUIRE_EXTRAS = "FCN_CUDA_REQUIRE_TEST_EXTRAS"


def needs_extra(module, what):
    """`module` imported, for a test comparing against `what` (a test extra:
    pip install -e '.[test]'). Where it is missing the calling test skips,
    or fails when FCN_CUDA_REQUIRE_TEST_EXTRAS=1."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        message = f"{what} needs {module}, a test extra (pip install -e '.[test]'): {e}"
        if os.environ.get(REQUIRE_EXTRAS) == "1":
            pytest.fail(f"{message}; {REQUIRE_EXTRAS}=1 requires every test extra")
        pytest.skip(message)


def to_numpy(a):
    if hasattr(a, "get"):  # CuPy
        return a.get()
    if hasattr(a, "detach"):  # torch
        return a.detach().cpu().numpy()
    return np.asarray(a)


def errors(out, ref):
    """(normwise relative error, max abs error) in float64; NaN anywhere is +inf."""
    out = to_numpy(out).astype(np.float64)
    ref = to_numpy(ref).astype(np.float64)
    assert out.shape == ref.shape, f"shape {out.shape} != reference {ref.shape}"
    if not np.isfinite(out).all():
        return np.inf, np.inf
    diff = out - ref
    denom = np.linalg.norm(ref)
    rel = np.linalg.norm(diff) / denom if denom > 0 else np.linalg.norm(diff)
    return float(rel), float(np.abs(diff).max()) if diff.size else 0.0


def assert_close(out, ref, tol=FP32, what="output"):
    """The numerical contract: the normwise relative error ||out - ref|| / ||ref||
    is at most `tol` (the precision's figure: FP32, TF32 or HALF), and so is each
    element's, |out - ref| <= atol + tol |ref| with atol = tol max|ref|: a few
    wrong elements in a large output pass the normwise bound, not this one, and
    atol lets an element near zero carry the rounding of the terms that cancelled
    there. NaN or infinity in `out` fails. The message gives the max abs and the
    max relative error, and the worst element."""
    o = to_numpy(out).astype(np.float64)
    r = to_numpy(ref).astype(np.float64)
    assert o.shape == r.shape, f"{what}: shape {o.shape} != reference {r.shape}"
    bad = ~np.isfinite(o)
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {o.size} elements not finite, "
                           f"the first at {np.unravel_index(int(np.argmax(bad)), o.shape)}")
    if o.size == 0:
        return
    diff = np.abs(o - r)
    mag = np.abs(r)
    rel, mx = errors(o, r)
    bound = tol * (mag.max() + mag)
    over = diff > bound
    worst = np.unravel_index(int(np.argmax(diff - bound)), o.shape)
    nonzero = mag > 0
    max_rel = float((diff[nonzero] / mag[nonzero]).max()) if nonzero.any() else 0.0
    summary = (f"normwise relative error {rel:.3e}, max abs error {mx:.3e}, max relative error {max_rel:.3e}; "
               f"worst element {worst}: {o[worst]!r} vs {r[worst]!r}, bound {bound[worst]:.3e}")
    assert rel <= tol, f"{what}: normwise relative error {rel:.3e} > {tol:.0e} ({summary})"
    assert not over.any(), (f"{what}: {int(over.sum())} of {o.size} elements off by more than "
                            f"{tol:.0e} (max|ref| + |ref|) ({summary})")


def t64(a, grad=False):
    """a as a float64 torch tensor on the CPU (a leaf that records its gradient when grad)."""
    import torch

    return torch.from_numpy(np.asarray(to_numpy(a))).double().requires_grad_(grad)


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def dev(be, *arrays):
    """The arrays on backend be."""
    return [be.xp.asarray(a) for a in arrays]


def same_bits(a, b):
    return to_numpy(a).tobytes() == to_numpy(b).tobytes()


def foreign_array(be, rng, shape):
    """A float32 array of the other backend, which be's ops must refuse: a torch
    CPU tensor on 'cuda', an object in GPU memory (__cuda_array_interface__) on 'host'."""
    if be.name == "cuda":
        import torch

        return torch.from_numpy(randn(rng, *shape))

    class OnGpu:
        __cuda_array_interface__ = {"shape": shape, "typestr": "<f4", "data": (0, False), "version": 3}

    return OnGpu()


def assert_each_raises(bases, cases):
    """bases: calls that work; cases: (call, exception, match), each changing one
    argument of a base call, which must raise that exception with that message."""
    for base in bases:
        base()
    for i, (call, error, match) in enumerate(cases):
        with pytest.raises(error, match=match):
            call()
            pytest.fail(f"bad case {i} ({match!r}) did not raise")


WORKER_COUNTS = (1, 2, 3, 7)  # the emulator's worker counts a determinism test runs under


def assert_same_bits_for_any_worker_count(be, run):
    """run() (an array, a number or a tuple of them) gives the same bits twice in a row and, on the host,
    under 1, 2, 3 and 7 emulator workers: blocks dealt out in other orders and groupings must not change
    a result. conftest puts the worker count back after the test."""
    def bits(result):
        return [to_numpy(a).tobytes() if hasattr(a, "shape") else np.float64(a).tobytes()
                for a in (result if isinstance(result, tuple) else (result,))]

    first = bits(run())
    assert bits(run()) == first, "other bits run to run"
    if be.name == "host":
        for workers in WORKER_COUNTS:
            fcn_cuda.set_emulator_workers(workers)
            assert bits(run()) == first, f"other bits with {workers} emulator workers"


def conv_call(dtype, h, w, r, s, stride, padding):
    """What a fuzzed convolution call should do: (valid, (sh, sw), (ph, pw)),
    valid when the dtype is float32, stride >= 1, padding >= 0 and the R x S
    kernel fits the padded H x W image; stride / padding are ints or pairs."""
    sh, sw = stride if isinstance(stride, tuple) else (stride, stride)
    ph, pw = padding if isinstance(padding, tuple) else (padding, padding)
    valid = dtype == np.float32 and min(sh, sw) >= 1 and min(ph, pw) >= 0 and h + 2 * ph >= r and w + 2 * pw >= s
    return valid, (sh, sw), (ph, pw)
