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
in csrc/kernels/crf.cuh; this module builds each term's lattice and runs
the mean-field iterations through them.
"""

import numpy as np

from . import _backend
from . import _validate as V

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
    _check_indexing(h, w, c, v, [(name, d) for name, d, *_ in terms] if variant == "lattice" else [])
    filters = []
    for name, d, sxy, srgb, compat in terms:
        if variant == "naive":
            filters.append((_Exact(be, img, d, sxy, srgb), compat))
            continue
        bits, fits_int16 = be.ext.crf_key_bits(d, h, w, sxy, srgb)
        if not fits_int16 or bits > 64:
            raise ValueError(f"{name}_sxy = {sxy:g}" + (f" and {name}_srgb = {srgb:g}" if d == 5 else "") +
                             f" are too small for a {h} x {w} image: the lattice coordinates exceed the 16 bits "
                             "pydensecrf keeps them in")
        filters.append((_Lattice(be, img, d, sxy, srgb, bits), compat))
    return _mean_field(be, probs, filters, iterations, v)


def _check_indexing(h, w, c, v, lattices):
    """Refuses sizes whose thread counts or array indices, all ints in the kernels, would pass 2^31: the N x V
    rows, and for each (name, d) lattice its (d+1)(N+1) entries, their V-wide blur rows and the (d+1) x
    vertices neighbour threads (a lattice has at most as many vertices as entries)."""
    limit = V.INT32_LIMIT - 255  # thread counts are rounded up to whole blocks of 256
    n = h * w
    if n * v > limit:
        raise ValueError(f"{h} x {w} pixels x {v} channels is beyond 32-bit indexing")
    for name, d in lattices:
        entries = (d + 1) * (n + 1)
        if max((entries + 1) * v, (d + 1) * entries) > limit:
            raise ValueError(f"the {name} lattice of {h} x {w} pixels with {c} classes is beyond 32-bit indexing")


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


def _mean_field(be, probs, filters, iterations, v):
    ext, s = be.ext, be.stream()
    c, h, w = probs.shape
    n = h * w
    t0, q, t = (be.empty((n, v)) for _ in range(3))
    out = be.empty((c, h, w))
    ext.crf_unary(be.ptr(probs), n, c, v, be.ptr(t0), be.ptr(q), s)
    m = max((f.vertices for f, _ in filters), default=0)  # the lattices' blur buffers, shared
    values = [be.empty(((m + 1) * v,)) for _ in range(2)] if m else None
    if iterations == 0:
        ext.crf_softmax(be.ptr(t0), n, c, v, 0, be.ptr(out), s)
    for i in range(iterations):
        src = t0
        for f, compat in filters:
            f.message(q, c, v, float(compat), src, t, values)
            src = t
        last = i == iterations - 1
        ext.crf_softmax(be.ptr(src), n, c, v, be.ptr(q), be.ptr(out) if last else 0, s)
    return out


class _Lattice:
    """One term's permutohedral lattice over an image, built on the device:
    points and keys, a stable sort, vertices numbered in key order, the
    splat and slice tables, the neighbours along each axis and the
    normaliser (csrc/kernels/crf.cuh). Reading the vertex count back is the
    one wait on the device."""

    def __init__(self, be, img, d, sxy, srgb, bits, padding=None):
        ext, s = be.ext, be.stream()
        h, w = img.shape[:2]
        self.be, self.d, self.n = be, d, h * w
        # pydensecrf's padding point (crf.cuh, crf_lattice_points), present when N % 4 != 0; padding=True or
        # False forces it in or out, which tests do to show that the rule matters.
        self.p = self.n + (self.n % 4 != 0 if padding is None else bool(padding))
        term = ext.CrfTermShape(d, h, w, self.p, sxy, srgb)
        e = (d + 1) * self.p
        bary = be.empty((e,))
        keys, entries = be.empty((e,), np.uint64), be.empty((e,), np.int32)
        ext.crf_lattice_points(term, be.ptr(img), be.ptr(bary), be.ptr(keys), be.ptr(entries), s)
        keys_alt, entries_alt = be.empty((e,), np.uint64), be.empty((e,), np.int32)
        ws = be.empty((max(ext.sort_pairs_workspace(e), ext.scan_workspace(e)),), np.int32)  # sort, then count
        if ext.sort_pairs(be.ptr(keys), be.ptr(entries), be.ptr(keys_alt), be.ptr(entries_alt), be.ptr(ws), e, bits, s):
            keys, entries = keys_alt, entries_alt
        first, count = be.empty((e,), np.int32), be.empty((1,), np.int32)
        ext.crf_vertex_count(be.ptr(keys), e, be.ptr(first), be.ptr(ws), be.ptr(count), s)
        self.vertices = m = int(be.to_numpy(count)[0])
        self.bary = bary
        self.vertex_start, vertex_keys = be.empty((m + 1,), np.int32), be.empty((m,), np.uint64)
        self.vertex_of, self.splat_pixel = be.empty((e,), np.int32), be.empty((e,), np.int32)
        self.splat_weight = be.empty((e,))
        self.neighbours = be.empty((d + 1, m, 2), np.int32)
        ext.crf_lattice_tables(term, be.ptr(keys), be.ptr(entries), be.ptr(first), m, be.ptr(bary),
                               be.ptr(self.vertex_start), be.ptr(vertex_keys), be.ptr(self.vertex_of),
                               be.ptr(self.splat_pixel), be.ptr(self.splat_weight), be.ptr(self.neighbours), s)
        # The tables' addresses: the arrays above live as long as self, and so as long as the view.
        self.view = ext.CrfLatticeView(term, m, be.ptr(bary), be.ptr(self.vertex_of), be.ptr(self.vertex_start),
                                       be.ptr(self.splat_pixel), be.ptr(self.splat_weight), be.ptr(self.neighbours))
        self.norm = be.empty((self.n,))
        a, b = be.empty((m + 1,)), be.empty((m + 1,))
        ext.crf_lattice_norm(self.view, be.ptr(a), be.ptr(b), be.ptr(self.norm), s)

    def message(self, q, c, v, compat, t_in, t_out, values):
        be = self.be
        be.ext.crf_lattice_message(self.view, be.ptr(self.norm), be.ptr(q), v, compat, be.ptr(values[0]),
                                   be.ptr(values[1]), be.ptr(t_in), be.ptr(t_out), be.stream())


class _Exact:
    """One term filtered exactly (the naive rung): the features and the normaliser, then O(N^2) per message."""

    def __init__(self, be, img, d, sxy, srgb):
        h, w = img.shape[:2]
        self.be, self.d, self.n, self.vertices = be, d, h * w, 0
        self.f, self.norm = be.empty((self.n, d)), be.empty((self.n,))
        be.ext.crf_naive_setup(be.ptr(img), h, w, d, sxy, srgb, be.ptr(self.f), be.ptr(self.norm), be.stream())

    def message(self, q, c, v, compat, t_in, t_out, values):
        be = self.be
        be.ext.crf_naive_message(be.ptr(self.f), be.ptr(self.norm), self.d, self.n, be.ptr(q), c, v, compat,
                                 be.ptr(t_in), be.ptr(t_out), be.stream())
