"""fcn_cuda.dense_crf against pydensecrf (the lattice rung) and against a
float64 brute force (the naive rung); determinism, pydensecrf's quirks and
every bad input (the lattice's sort and scan: tests/kernels/test_sort.py, test_scan.py).

Inputs are smooth random fields (an image and class logits), with hard
edges from the synthetic shapes: what a segmentation model feeds the CRF.
The mean field amplifies roundings where pixels hover between classes: on
i.i.d. noise with near-uniform probabilities pydensecrf's own Q moves by
4.6e-6 after 5 iterations and 1.7e-5 after 10 when every prob moves by one
ulp (80 x 60, 4 classes), and on these inputs by up to 1.3e-5 under
DeepLab's parameters (27 x 27, 21 classes). An implementation that is not
bit-identical meets 1e-5 only where it rounds differently in few places:
ours differs from pydensecrf here by at most 3.5e-6 (`python -m
benchmarks.crf_accuracy`: the unary's log and the softmax's exp and order of
summation; the lattice filter itself gives pydensecrf's bits). Our exp and
log are correctly rounded, the same bits on a GPU as in the emulator
(tests/kernels/test_crf_math.py).
"""

import numpy as np
import pytest
import torch

import fcn_cuda
from fcn_cuda import crf
from fcn_cuda.ops import crf as crf_ops
from fcn_cuda.data import SyntheticShapes

from _util import FP32, assert_same_bits_for_any_worker_count, errors, needs_extra, to_numpy

# dense_crf allocates every buffer it uses (outputs, tables, workspaces) through Backend.empty: each is
# poisoned (conftest.py), so an element a kernel fails to write shows up in Q.
pytestmark = pytest.mark.kernels


def smooth_field(rng, channels, h, w, cells=5):
    """channels x h x w float64 varying smoothly: coarse normal noise, bilinearly upsampled."""
    coarse = torch.from_numpy(rng.standard_normal((1, channels, -(-h // cells) + 1, -(-w // cells) + 1)))
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)[0].numpy()


def crf_inputs(seed, h, w, c, gain=3.0):
    """(img, probs): a smooth colour field under two synthetic shapes, and softmax(gain * smooth logits)."""
    rng = np.random.default_rng(seed)
    img = np.clip(128 + 60 * smooth_field(rng, 3, h, w), 0, 255).transpose(1, 2, 0)
    shapes, labels = SyntheticShapes(1, (max(h, 8), max(w, 8)), seed=seed)[0]
    edge = labels[:h, :w] > 0
    img[edge] = shapes[:h, :w][edge]
    logits = gain * smooth_field(rng, c, h, w)
    p = np.exp(logits - logits.max(0))
    return np.ascontiguousarray(img.astype(np.uint8)), np.ascontiguousarray((p / p.sum(0)).astype(np.float32))


def pydensecrf(img, probs, iterations=5, gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=80.0,
               bilateral_srgb=13.0, bilateral_compat=10.0):
    """The reference call, as pydensecrf's README writes it (pydensecrf2, a test extra:
    the tests that call this skip without it)."""
    dcrf = needs_extra("pydensecrf.densecrf", "the comparison with pydensecrf")
    c, h, w = probs.shape
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(needs_extra("pydensecrf.utils", "the comparison with pydensecrf").unary_from_softmax(probs))
    if gaussian_compat:
        d.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    if bilateral_compat:
        d.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=img, compat=bilateral_compat)
    return np.array(d.inference(iterations)).reshape(c, h, w)


def brute_force(img, probs, iterations=5, gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=80.0,
                bilateral_srgb=13.0, bilateral_compat=10.0):
    """The CRF's definition in float64: dense Gaussian kernels over every pixel pair (the pixel itself
    included), symmetric normalisation, Potts weights, parallel mean-field updates."""
    c, h, w = probs.shape
    y, x = np.mgrid[0:h, 0:w]
    xy = np.stack([x.ravel(), y.ravel()], 1).astype(np.float64)
    rgb = img.reshape(-1, 3).astype(np.float64)
    terms = [(xy / gaussian_sxy, gaussian_compat), (np.hstack([xy / bilateral_sxy, rgb / bilateral_srgb]),
                                                     bilateral_compat)]
    kernels = []
    for f, weight in terms:
        if weight:
            k = np.exp(-0.5 * ((f[:, None, :] - f[None, :, :]) ** 2).sum(-1))
            kernels.append((k, 1 / np.sqrt(k.sum(1)), weight))
    t0 = np.log(np.clip(probs.reshape(c, -1).astype(np.float64), 1e-5, 1)).T

    def softmax(t):
        e = np.exp(t - t.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    q = softmax(t0)
    for _ in range(iterations):
        t = t0.copy()
        for k, norm, weight in kernels:
            t += weight * norm[:, None] * (k @ (norm[:, None] * q))
        q = softmax(t)
    return q.T.reshape(c, h, w)


def run(be, img, probs, **kwargs):
    q = crf.dense_crf(be.xp.asarray(img), be.xp.asarray(probs), **kwargs)
    assert q.dtype == np.float32 and q.shape == probs.shape and isinstance(q, be.xp.ndarray)
    return to_numpy(q)


PARAMS = {
    "readme": crf.PYDENSECRF_README,
    "deeplab": crf.DEEPLAB_VOC,
    "shapes": crf.SHAPES,
    "gaussian-only": dict(iterations=3, gaussian_sxy=5.0, gaussian_compat=4.0, bilateral_compat=0.0),
    "bilateral-only": dict(iterations=4, gaussian_compat=0.0, bilateral_sxy=30.0, bilateral_srgb=20.0),
    "negative-compat": dict(iterations=2, gaussian_compat=-1.5, bilateral_compat=2.0),
}
# (H, W, C): odd sizes, H*W % 4 of 0 to 3, C in {2, 3, 21} and some between, and C = 1, which pydensecrf
# accepts (Q is 1 everywhere, whatever the filter gives): the V = 1 rows through every kernel, where any
# element read unwritten would be NaN.
SHAPES = [(23, 17, 2), (31, 45, 3), (41, 29, 21), (1, 37, 3), (16, 12, 5), (37, 53, 4), (9, 1, 2), (27, 27, 21),
          (19, 13, 1)]
CASES = [(p, s) for s in SHAPES for p in PARAMS if s[2] != 21 or p in ("readme", "deeplab")]


@pytest.mark.parametrize("params,shape", CASES, ids=[f"{p}-{'x'.join(map(str, s))}" for p, s in CASES])
def test_lattice_matches_pydensecrf(be, params, shape):
    h, w, c = shape
    img, probs = crf_inputs(h * 1000 + w * 10 + c, h, w, c)
    kwargs = PARAMS[params]
    ref = pydensecrf(img, probs, **kwargs)
    q = run(be, img, probs, **kwargs)
    assert np.isfinite(q).all()
    rel, diff = errors(q, ref)
    assert diff <= FP32, f"max |dQ| = {diff:.2e} (relative error {rel:.2e}) against pydensecrf"


@pytest.mark.parametrize("iterations", [0, 1, 10])
def test_iteration_counts(be, iterations):
    img, probs = crf_inputs(7, 33, 19, 3)
    q = run(be, img, probs, iterations=iterations)
    rel, diff = errors(q, pydensecrf(img, probs, iterations))
    assert diff <= FP32, f"max |dQ| = {diff:.2e} (relative error {rel:.2e}) against pydensecrf"
    if iterations == 0:  # softmax of the unary: the clipped probabilities, renormalised
        p = np.clip(probs.astype(np.float64), 1e-5, 1)
        np.testing.assert_allclose(q, p / p.sum(0), rtol=0, atol=1e-6)


LATTICE = crf_ops.Lattice


def padded(monkeypatch, padding):
    """dense_crf from here on with pydensecrf's padding point forced in (True) or out (False) of every
    lattice, whatever H*W % 4."""

    class Forced(LATTICE):
        def __init__(self, *args):
            super().__init__(*args, padding=padding)

    monkeypatch.setattr(crf_ops, "Lattice", Forced)


def flat_image(seed, h, w, c, level):
    """(img, probs): a colour field around `level` (+-40 before clipping), smooth logits."""
    rng = np.random.default_rng(seed)
    img = np.clip(level + 40 * smooth_field(rng, 3, h, w, cells=8), 0, 255).transpose(1, 2, 0).astype(np.uint8)
    logits = smooth_field(rng, c, h, w, cells=8)
    probs = np.exp(logits - logits.max(0))
    return np.ascontiguousarray(img), np.ascontiguousarray((probs / probs.sum(0)).astype(np.float32))


PADDING_SIZES = [(40, 30), (33, 29), (38, 29), (39, 29)]  # H*W % 4 = 0, 1, 2, 3


@pytest.mark.parametrize("h,w", PADDING_SIZES, ids=[f"n%4={h * w % 4}" for h, w in PADDING_SIZES])
def test_the_padding_point_follows_pydensecrf_on_a_dark_image(be, monkeypatch, h, w):
    """pydensecrf elevates 4 pixels at a time; for H*W % 4 != 0 the lanes past the image carry the
    feature 0 and their vertices enter the lattice (one point stands for them all: they share the
    vertices). On this dark image (feature 0 is a black pixel at the origin) those vertices join the
    blur, so the point moves Q by 4e-4 or more at every H*W % 4: the rule is pinned for each residue,
    in both directions, by the comparison with pydensecrf."""
    img, probs = flat_image(0, h, w, 3, level=40)
    ref = pydensecrf(img, probs)
    rel, diff = errors(run(be, img, probs), ref)
    assert diff <= FP32, f"max |dQ| = {diff:.2e} (relative error {rel:.2e}) against pydensecrf"
    padded(monkeypatch, h * w % 4 == 0)  # the other choice for this residue
    moved = np.abs(run(be, img, probs) - ref).max()
    assert moved > 20 * FP32, f"the padding point moves Q by {moved:.1e} only: this image does not pin the rule"


@pytest.mark.parametrize("h,w", PADDING_SIZES, ids=[f"n%4={h * w % 4}" for h, w in PADDING_SIZES])
def test_the_padding_point_cannot_matter_on_a_bright_image(be, monkeypatch, h, w):
    """On a bright image (no channel below 80) every pixel's bilateral feature lies more than one
    lattice step from feature 0 along the colour axes, so the padding point's vertices have no
    neighbours to blur with (and the Gaussian term's feature 0 is pixel (0, 0)'s own): Q has the same
    bits with the point in or out, and equals pydensecrf's either way."""
    img, probs = flat_image(0, h, w, 3, level=190)
    assert img.min() >= 80
    ref = pydensecrf(img, probs)
    rel, diff = errors(run(be, img, probs), ref)
    assert diff <= FP32, f"max |dQ| = {diff:.2e} (relative error {rel:.2e}) against pydensecrf"
    padded(monkeypatch, True)
    with_point = run(be, img, probs)
    padded(monkeypatch, False)
    np.testing.assert_array_equal(run(be, img, probs), with_point)


NAIVE = [((7, 9, 3), "readme"), ((13, 11, 2), "deeplab"), ((5, 17, 21), "readme"), ((12, 10, 4), "negative-compat"),
         ((9, 14, 3), "bilateral-only"), ((11, 8, 2), "gaussian-only")]


@pytest.mark.parametrize("shape,params", NAIVE, ids=[f"{p}-{'x'.join(map(str, s))}" for s, p in NAIVE])
def test_naive_matches_float64_brute_force(be, shape, params):
    h, w, c = shape
    img, probs = crf_inputs(h * 31 + w, h, w, c, gain=2.0)
    kwargs = PARAMS[params]
    q = run(be, img, probs, variant="naive", **kwargs)
    rel, mx = errors(q, brute_force(img, probs, **kwargs))
    assert rel <= FP32 and mx <= FP32, f"relative error {rel:.2e}, max abs error {mx:.2e}"


def test_naive_and_lattice_agree_on_labels(be):
    """The lattice approximates the dense filter: Q differs (a pixel near a decision can flip), the
    labels hardly."""
    img, probs = crf_inputs(3, 24, 20, 3)
    exact, lattice = run(be, img, probs, variant="naive"), run(be, img, probs)
    assert np.abs(exact - lattice).max() > 1e-3
    assert (exact.argmax(0) == lattice.argmax(0)).mean() > 0.9  # 0.95 here, 0.98 at 60 x 80


@pytest.mark.parametrize("variant", crf.CRF_VARIANTS)
def test_deterministic_run_to_run_and_across_workers(be, variant):
    h, w, c = (19, 13, 5) if variant == "naive" else (45, 51, 5)
    img, probs = crf_inputs(11, h, w, c)
    assert_same_bits_for_any_worker_count(be, lambda: run(be, img, probs, iterations=3, variant=variant))


def test_a_term_of_weight_zero_is_left_out(be):
    img, probs = crf_inputs(5, 21, 22, 3)
    both_zero = run(be, img, probs, gaussian_compat=0, bilateral_compat=0.0)
    p = np.clip(probs.astype(np.float64), 1e-5, 1)
    np.testing.assert_allclose(both_zero, p / p.sum(0), rtol=0, atol=1e-6)


def test_inputs_are_only_read(be):
    img, probs = crf_inputs(2, 15, 14, 3)
    img_d, probs_d = be.xp.asarray(img), be.xp.asarray(probs)
    crf.dense_crf(img_d, probs_d)
    np.testing.assert_array_equal(to_numpy(img_d), img)
    np.testing.assert_array_equal(to_numpy(probs_d), probs)


def _bad(img, probs):
    nan = probs.copy()
    nan[0, 1, 2] = np.nan
    inf = probs.copy()
    inf[1, 0, 0] = np.inf
    neg = probs.copy()
    neg[0, 0, 0] = -1e-3
    return [
        (dict(img=img.astype(np.float32)), TypeError, "img must be uint8"),
        (dict(img=img[:, :, 0]), ValueError, "img must be 3-D"),
        (dict(img=np.ascontiguousarray(np.dstack([img, img[:, :, :1]]))), ValueError, "img must be H x W x 3"),
        (dict(img=img[:, ::2]), ValueError, "img must be C-contiguous"),
        (dict(img=img[:0]), ValueError, "img is empty"),
        (dict(probs=probs.astype(np.float64)), TypeError, "probs must be float32"),
        (dict(probs=probs[0]), ValueError, "probs must be 3-D"),
        (dict(probs=np.ascontiguousarray(probs[:, 1:])), ValueError, "probs is 3 x 9 x 11 but img is 10 x 11"),
        (dict(probs=probs[:, :, ::-1]), ValueError, "probs must be C-contiguous"),
        (dict(probs=nan), ValueError, "probs must be finite"),
        (dict(probs=inf), ValueError, "probs must be finite"),
        (dict(probs=neg), ValueError, "probs must be >= 0"),
        (dict(iterations=-1), ValueError, "iterations must be >= 0"),
        (dict(iterations=2.0), TypeError, "iterations must be an int"),
        (dict(iterations=True), TypeError, "iterations must be an int"),
        (dict(gaussian_sxy=0.0), ValueError, "gaussian_sxy must be > 0"),
        (dict(gaussian_sxy=-3), ValueError, "gaussian_sxy must be > 0"),
        (dict(gaussian_sxy=float("nan")), ValueError, "gaussian_sxy must be finite"),
        (dict(gaussian_sxy="3"), TypeError, "gaussian_sxy must be a real number"),
        (dict(gaussian_sxy=1e-50), ValueError, "gaussian_sxy = 1e-50 is beyond float32's range"),
        (dict(bilateral_sxy=float("inf")), ValueError, "bilateral_sxy must be finite"),
        (dict(bilateral_srgb=0), ValueError, "bilateral_srgb must be > 0"),
        (dict(bilateral_srgb=None), TypeError, "bilateral_srgb must be a real number"),
        (dict(gaussian_compat=float("nan")), ValueError, "gaussian_compat must be finite"),
        (dict(bilateral_compat=1e39), ValueError, "bilateral_compat = 1e+39 is beyond float32's range"),
        (dict(bilateral_compat=[10]), TypeError, "bilateral_compat must be a real number"),
        (dict(variant="hash"), ValueError, "variant must be one of"),
        (dict(bilateral_sxy=1e-3, bilateral_srgb=1e-3), ValueError, "bilateral_sxy = 0.001 and bilateral_srgb = 0.001"),
    ]


def test_bad_inputs_raise_naming_the_argument(be):
    img, probs = crf_inputs(1, 10, 11, 3)
    for change, error, message in _bad(img, probs):
        args = {"img": img, "probs": probs, **change}
        args["img"], args["probs"] = be.xp.asarray(args["img"]), be.xp.asarray(args["probs"])
        with pytest.raises(error, match=message.replace("(", r"\(").replace("+", r"\+")):
            crf.dense_crf(**args)
    with pytest.raises(TypeError):
        crf.dense_crf(img, probs, 5, 3.0)  # the parameters are keyword-only


def test_the_defaults_are_pydensecrf_readme_values_everywhere():
    """dense_crf's defaults, and the torch op's, are crf.PYDENSECRF_README: the three copies cannot drift."""
    import inspect

    import fcn_cuda.torch as fct

    for fn in (crf.dense_crf, fct.dense_crf):
        defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items() if k in crf.PARAMETERS}
        assert defaults == crf.PYDENSECRF_README, fn.__module__


def test_sizes_beyond_32_bit_indexing_are_refused_before_any_work():
    """The limits dense_crf checks, at their edges (the arithmetic alone: no array of that size is made)."""
    bilateral, both = [("bilateral", 5)], [("gaussian", 2), ("bilateral", 5)]
    crf_ops.check_indexing(7000, 7000, 1, 1, both)  # 36 (N + 1) neighbour threads: 1.76e9, within int
    # 8000 x 8000, one class: the rows (6.4e7) and the entries (3.8e8) fit, the neighbour threads (2.3e9) do not.
    with pytest.raises(ValueError, match="the bilateral lattice of 8000 x 8000 pixels with 1 classes is beyond 32-bit"):
        crf_ops.check_indexing(8000, 8000, 1, 1, both)
    crf_ops.check_indexing(8000, 8000, 1, 1, [("gaussian", 2)])  # 9 (N + 1) threads fit
    # 21 classes pad to 24-wide rows: the blur rows 6 (N + 1) x 24 pass 2^31 from N = 14.9e6 on.
    crf_ops.check_indexing(3800, 3900, 21, 24, bilateral)
    with pytest.raises(ValueError, match="the bilateral lattice of 3900 x 3900 pixels with 21 classes"):
        crf_ops.check_indexing(3900, 3900, 21, 24, bilateral)
    with pytest.raises(ValueError, match="9500 x 9500 pixels x 24 channels is beyond 32-bit indexing"):
        crf_ops.check_indexing(9500, 9500, 21, 24, [])  # the naive rung: the N x V rows alone
    crf_ops.check_indexing(9400, 9400, 21, 24, [])


def test_arrays_of_the_other_backend_are_refused(be):
    img, probs = crf_inputs(1, 10, 11, 3)
    if be.name == "host":
        with pytest.raises(TypeError, match="img: got an array in GPU memory"):
            crf.dense_crf(_DeviceArrayLike(img), probs)
    else:
        with pytest.raises(TypeError, match="probs: got an array in host memory"):
            crf.dense_crf(be.xp.asarray(img), probs)


class _DeviceArrayLike:
    """What the host backend sees of a CuPy array: __cuda_array_interface__."""

    def __init__(self, a):
        self.__cuda_array_interface__ = {"shape": a.shape, "typestr": "|u1", "data": (0, False), "version": 3}
