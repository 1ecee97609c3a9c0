"""python -m benchmarks.crf_accuracy: max |dQ| of fcn_cuda.dense_crf (the
lattice rung, on the active backend) against pydensecrf over every input
that the CRF's tests (test_crf.py) compare with it (the lattice cases, the iteration
counts and the padding-point image), against its bound of 1e-5."""

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def crf_test_module():
    """test_crf.py, wherever under tests/ it lives, imported as the tests import it (tests/ on sys.path
    for _util)."""
    (path,) = [p for p in (ROOT / "tests").rglob("test_crf.py")]
    for folder in (ROOT / "tests", path.parent):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    import test_crf

    return test_crf


def cases(t):
    """(name, img, probs, kwargs) of every comparison with pydensecrf in the tests."""
    for params, (h, w, c) in t.CASES:
        img, probs = t.crf_inputs(h * 1000 + w * 10 + c, h, w, c)
        yield f"{params}-{h}x{w}x{c}", img, probs, t.PARAMS[params]
    for iterations in (0, 1, 10):
        img, probs = t.crf_inputs(7, 33, 19, 3)
        yield f"iterations-{iterations}", img, probs, dict(iterations=iterations)
    h, w, c = 39, 29, 3
    rng = np.random.default_rng(0)
    img = np.clip(40 + 40 * t.smooth_field(rng, 3, h, w, cells=8), 0, 255).transpose(1, 2, 0).astype(np.uint8)
    logits = t.smooth_field(rng, c, h, w, cells=8)
    probs = np.exp(logits - logits.max(0))
    yield "padding-point", np.ascontiguousarray(img), np.ascontiguousarray((probs / probs.sum(0)).astype(np.float32)), {}


def main():
    from fcn_cuda import _backend

    t = crf_test_module()
    be = _backend.active()
    worst = (0.0, None)
    for name, img, probs, kwargs in cases(t):
        ref = t.pydensecrf(img, probs, **kwargs)
        kw = dict(kwargs)
        iterations = kw.pop("iterations", 5)
        _, diff = t.errors(t.run(be, img, probs, iterations=iterations, **kw), ref)
        worst = max(worst, (diff, name))
        print(f"  {name:32s} max |dQ| {diff:.3e}")
    print(f"backend {be.name}: max |dQ| against pydensecrf {worst[0]:.3e} ({worst[1]}), bound 1e-5")
    return 0 if worst[0] <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
