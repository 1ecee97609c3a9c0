"""The skip layers' rows: score_crop_add (the fused 1x1 score + crop + sum)
and the unfused conv2d + crop_add, and crop_add alone."""

import numpy as np

from fcn_cuda import ops

from . import Case, fmt, plain_ref, row_name


def skip_cases(ctx, tag, L):
    """The skip fusion: the fused score_crop_add and the unfused conv2d +
    crop_add against `up + F.conv2d(feat, w, b)[crop]`; and crop_add alone."""
    F = ctx.torch.nn.functional
    ref = plain_ref(ctx)
    crop_layer = f"crop_add({L['name']})"
    names = [row_name(tag, L["name"], v, ref) for v in ("score_crop_add", "conv2d+crop_add")]
    crop_name = row_name(tag, crop_layer, "crop_add", ref)
    want_crop = ctx.wants(crop_name)
    if not any(map(ctx.wants, names)) and not want_crop:
        return []
    n, k, h, w = L["up"]
    _, c, hf, wf = L["feat"]
    o = L["offset"]
    ups = ctx.input_sets(L["up"])
    feats = ctx.input_sets(L["feat"])
    wo, wt = ctx.pair(ctx.randn((k, c, 1, 1), np.sqrt(1.0 / c)))
    bo, bt = ctx.pair(ctx.randn((k,), 0.1))
    sets = list(zip(ups, feats))
    cases = []
    flops = 2.0 * n * k * c * h * w
    nbytes = 4.0 * (2 * n * k * h * w + n * c * h * w + k * c + k)
    desc = f"up {fmt(L['up'])} + 1x1 conv of feat {fmt(L['feat'])} cropped at {o}"
    if any(map(ctx.wants, names)):
        def score(ut, ft, wt, bt):
            return ut + F.conv2d(ft, wt, bt)[:, :, o:o + h, o:o + w]

        ref_fns = [lambda ut=ut, ft=ft: score(ut, ft, wt, bt) for (_, ut), (_, ft) in sets]
        (_, ut0), (_, ft0) = sets[0]
        fused = [lambda uo=uo, fo=fo: ops.score_crop_add(uo, fo, wo, bo, o) for (uo, _), (fo, _) in sets]
        unfused = [lambda uo=uo, fo=fo: ops.crop_add(uo, ops.conv2d(fo, wo, bo), o) for (uo, _), (fo, _) in sets]
        note = "flops/bytes count the cropped window only (the fused kernel computes nothing else)"
        for v, fns in (("score_crop_add", fused), ("conv2d+crop_add", unfused)):
            cases.append(Case(row_name(tag, L["name"], v, ref), "layer", "skip", tag, L["name"], v, ref, desc,
                              fns, ref_fns, "fp32", flops, nbytes, note,
                              ref64=lambda: score(*map(ctx.f64, (ut0, ft0, wt, bt)))))
    if want_crop:
        scores = ctx.input_sets((n, k, hf, wf))
        pairs = list(zip(ups, scores))
        cases.append(Case(crop_name, "kernel", "skip", tag, crop_layer, "crop_add", ref,
                          f"up {fmt(L['up'])} + score {fmt((n, k, hf, wf))}[crop at {o}]",
                          [lambda uo=uo, so=so: ops.crop_add(uo, so, o) for (uo, _), (so, _) in pairs],
                          [lambda ut=ut, st=st: ut + st[:, :, o:o + h, o:o + w] for (_, ut), (_, st) in pairs],
                          "fp32", None, 4.0 * 3 * n * k * h * w,
                          ref64=lambda: ctx.f64(ups[0][1]) + ctx.f64(scores[0][1])[:, :, o:o + h, o:o + w]))
    return cases
