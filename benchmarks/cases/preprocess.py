"""preprocess: uint8 RGB images to FCN's BGR - mean float input."""

import numpy as np

from fcn_cuda import ops

from . import Case, plain_ref, row_name


def preprocess_cases(ctx, tag, n, h, w):
    from ..torch_fcn8s import preprocess as torch_preprocess

    ref = plain_ref(ctx)
    name = row_name(tag, "preprocess", "preprocess", ref)
    if not ctx.wants(name):
        return []
    imgs = [ctx.pair(ctx.rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)) for _ in range(ctx.cfg.sets)]
    return [Case(name, "kernel", "preprocess", tag, "preprocess", "preprocess", ref,
                 f"uint8 {n}x{h}x{w}x3 RGB -> float32 {n}x3x{h}x{w} BGR - mean",
                 [lambda io=io: ops.preprocess(io) for io, _ in imgs],
                 [lambda it=it: torch_preprocess(it) for _, it in imgs], "fp32", None,
                 float(n * h * w * 3 + 4 * n * 3 * h * w),
                 ref64=lambda: (ctx.f64(imgs[0][1]).flip(3) - ctx.torch.tensor(ops.MEAN_BGR, dtype=ctx.torch.float64))
                 .permute(0, 3, 1, 2))]
