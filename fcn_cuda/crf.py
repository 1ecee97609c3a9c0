"""fcn_cuda.dense_crf: DeepLab's fully connected CRF (Krähenbühl & Koltun,
NIPS 2011) as kernels, equal to pydensecrf.

    Q = fcn_cuda.dense_crf(img, probs)          # img: H x W x 3 uint8 RGB, probs: C x H x W -> C x H x W

gives what pydensecrf gives for

    d = dcrf.DenseCRF2D(W, H, C)
    d.setUnaryEnergy(unary_from_softmax(probs))
    d.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    d.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=img, compat=bilateral_compat)
    Q = np.array(d.inference(iterations)).reshape(C, H, W)

(DIAG_KERNEL, NORMALIZE_SYMMETRIC, Potts compatibility). The kernels are
in csrc/kernels/crf.cuh, their wrappers in fcn_cuda.ops.crf (each term's
lattice, the mean-field iterations); this module checks the arguments and
puts the terms together.
"""

import numpy as np

from . import _backend
from . import _validate as V
from .ops import crf as crf_ops

CRF_VARIANTS = ("lattice", "naive")

# Parameter sets, as dense_crf's keyword arguments (each a weight and the widths of its Gaussian).
# pydensecrf's README: dense_crf's own defaults.
PYDENSECRF_README = dict(iterations=5, gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=80.0, bilateral_srgb=13.0,
                         bilateral_compat=10.0)
# DeepLab v2's PASCAL VOC script (its own copy of the CRF normalises after filtering, NORMALIZE_AFTER, and
# uses an approximate exp, so these values do not give DeepLab's results exactly).
DEEPLAB_VOC = dict(iterations=10, gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=49.0, bilateral_srgb=5.0,
                   bilateral_compat=4.0)
# What fcn_cuda.infer(img, crf=True) uses: the best of `python -m fcn_cuda.bundled tune-crf` for the bundled
# shapes model on its 50 validation images (mean IU 0.942, 0.851 without the CRF; README, "The dense CRF").
SHAPES = dict(iterations=10, gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=10.0, bilateral_srgb=10.0,
              bilateral_compat=20.0)
PARAMETERS = tuple(PYDENSECRF_README)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def dense_crf(img, probs, iterations=5, *, gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=80.0,
              bilateral_srgb=13.0, bilateral_compat=10.0, variant="lattice"):
    """Mean-field inference in the fully connected CRF over one image:
    C x H x W float32 class probabilities Q (an array of the active
    backend).

    img: H x W x 3 uint8 RGB; probs: C x H x W float32 per-pixel class
    probabilities (finite, >= 0; the unary is -log clip(probs, 1e-5, 1)).
    iterations: mean-field steps (0 returns softmax of the unary). The
    Gaussian term smooths by position (x, y) / gaussian_sxy, the bilateral
    term by position and colour, (x, y) / bilateral_sxy and
    (R, G, B) / bilateral_srgb; each compat is its Potts weight (0 leaves
    the term out).

    variant: 'lattice' (the default) is pydensecrf's algorithm, the
    permutohedral lattice, and equals pydensecrf to about 1e-6; 'naive'
    filters exactly (every pixel pair, O((H*W)^2) per iteration: small
    images only), which the lattice approximates (they differ by up to a
    few 1e-2 in Q). Deterministic: the same bits on every run.
    """
    be = _backend.active()
    img = V.array(img, "img", ndim=3, dtype=np.uint8, shape_hint="H x W x 3 RGB", be=be)
    if img.shape[2] != 3:
        raise ValueError(f"img must be H x W x 3 RGB, got shape {tuple(img.shape)}")
    probs = V.array(probs, "probs", ndim=3, shape_hint="C x H x W", be=be)
    c, h, w = probs.shape
    if (h, w) != tuple(img.shape[:2]):
        raise ValueError(f"probs is {c} x {h} x {w} but img is {img.shape[0]} x {img.shape[1]}: they must cover "
                         "the same H x W pixels")
    if not bool(((probs >= 0) & (probs < np.inf)).all()):  # one pass; NaN fails both comparisons
        if not bool(be.xp.isfinite(probs).all()):
            raise ValueError("probs must be finite (it holds NaN or inf)")
        raise ValueError("probs must be >= 0 (class probabilities)")
    iterations = V.integer(iterations, "iterations", minimum=0)
    variant = V.choice(variant, "variant", CRF_VARIANTS)
    terms = []
    for name, d, sxy, srgb, compat in (("gaussian", 2, gaussian_sxy, 1.0, gaussian_compat),
                                        ("bilateral", 5, bilateral_sxy, bilateral_srgb, bilateral_compat)):
        sxy = _width(sxy, f"{name}_sxy")
        srgb = _width(srgb, f"{name}_srgb")
        compat = _float32(compat, f"{name}_compat")
        if compat != 0:
            terms.append((name, d, sxy, srgb, compat))

    v = c if c <= 2 else -(-c // 4) * 4  # pixel-major rows: float4s from 3 classes on, as pydensecrf's SSE
    crf_ops.check_indexing(h, w, c, v, [(name, d) for name, d, *_ in terms] if variant == "lattice" else [])
    filters = []
    for name, d, sxy, srgb, compat in terms:
        if variant == "naive":
            filters.append((crf_ops.ExactFilter(be, img, d, sxy, srgb), compat))
            continue
        filters.append((crf_ops.Lattice(be, img, d, sxy, srgb, crf_ops.key_bits(be, name, d, h, w, sxy, srgb)), compat))
    return crf_ops.mean_field(be, probs, filters, iterations, v)


def settings(crf):
    """infer's `crf` argument as dense_crf keyword arguments: None for False, SHAPES for True, SHAPES with a
    dict's values over them."""
    if crf is False or crf is None:
        return None
    if crf is True:
        return dict(SHAPES)
    if isinstance(crf, dict):
        unknown = sorted(set(crf) - set(PARAMETERS) - {"variant"})
        if unknown:
            raise TypeError(f"crf: unknown parameter(s) {unknown}; dense_crf takes {list(PARAMETERS)} and variant")
        return {**SHAPES, **crf}
    raise TypeError(f"crf must be True, False or a dict of dense_crf parameters, got {type(crf).__name__}")


def _float32(v, name):
    """A real number as the float32 the kernels take."""
    v = V.real(v, name)
    if abs(v) > _FLOAT32_MAX:
        raise ValueError(f"{name} = {v:g} is beyond float32's range")
    return float(np.float32(v))


def _width(v, name):
    """A Gaussian's width: > 0, and not 0 as a float32 (the kernels divide by it in float)."""
    if not V.real(v, name) > 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    f = _float32(v, name)
    if f == 0:
        raise ValueError(f"{name} = {v:g} is beyond float32's range")
    return f
