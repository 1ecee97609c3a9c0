"""dense_crf against pydensecrf on a synthetic image and model-like probabilities."""

import numpy as np

import fcn_cuda
from fcn_cuda.crf import PYDENSECRF_README

from . import Case, row_name


def crf_input(rng, h, w, classes):
    """(img, probs): a synthetic shapes image and class probabilities like a model's: softmax of 3 on the
    true class plus smooth noise of scale 1."""
    import torch

    from fcn_cuda.data import SyntheticShapes

    img, labels = SyntheticShapes(1, (h, w), seed=int(rng.integers(1 << 30)))[0]
    coarse = torch.from_numpy(rng.standard_normal((1, classes, h // 8 + 2, w // 8 + 2)))
    logits = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)[0].numpy()
    logits[labels % classes, np.arange(h)[:, None], np.arange(w)] += 3.0
    p = np.exp(logits - logits.max(0))
    return np.ascontiguousarray(img), np.ascontiguousarray((p / p.sum(0)).astype(np.float32))


def crf_cases(ctx):
    """fcn_cuda.dense_crf against pydensecrf (pydensecrf2, one CPU core, its README parameters) on the
    same input, pydensecrf timed on the host clock whatever the backend."""
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError:
        for h, w, c, it, variants in ctx.cfg.crf:
            for v in variants:
                ctx.skip(row_name(f"{h}x{w}x{c}cls", f"dense_crf-{it}it", v, "pydensecrf"),
                         "pydensecrf2 is not installed (pip install -e '.[test]')")
        return []

    r = PYDENSECRF_README  # the parameters on both sides

    def reference(img, probs, it):
        c, h, w = probs.shape
        d = dcrf.DenseCRF2D(w, h, c)
        d.setUnaryEnergy(unary_from_softmax(probs))
        d.addPairwiseGaussian(sxy=r["gaussian_sxy"], compat=r["gaussian_compat"])
        d.addPairwiseBilateral(sxy=r["bilateral_sxy"], srgb=r["bilateral_srgb"], rgbim=img,
                               compat=r["bilateral_compat"])
        return np.array(d.inference(it)).reshape(c, h, w)

    cases = []
    for h, w, c, it, variants in ctx.cfg.crf:
        tag, layer = f"{h}x{w}x{c}cls", f"dense_crf-{it}it"
        names = [row_name(tag, layer, v, "pydensecrf") for v in variants]
        if not any(map(ctx.wants, names)):
            continue
        inputs = [crf_input(ctx.rng, h, w, c) for _ in range(ctx.cfg.sets)]
        ref_fns = [lambda img=img, p=p, it=it: reference(img, p, it) for img, p in inputs]
        dev = [(ctx.be.xp.asarray(img), ctx.be.xp.asarray(p)) for img, p in inputs]
        for v, name in zip(variants, names):
            cases.append(Case(name, "kernel", "crf", tag, layer, v, "pydensecrf", f"{h}x{w} RGB, {c} classes, "
                              f"{it} iterations, pydensecrf's README parameters",
                              [lambda img=img, p=p, it=it, v=v: fcn_cuda.dense_crf(img, p, it, variant=v)
                               for img, p in dev],
                              ref_fns, "fp32", None, float(h * w * (3 + 8 * c)),
                              "pydensecrf2 on one CPU core; bytes: img, probs and Q once (a floor, not the "
                              "lattice's traffic); rel_l2 of Q", ref_on_host=True))
    return cases
