"""conv2d's rows: every variant (and bf16 weights where a model can use them)
against cuDNN / torch at each variant's precision."""

import numpy as np

from fcn_cuda import ops
from fcn_cuda.model import BF16_WEIGHT_LAYERS
from fcn_cuda.ops.conv2d import wgmma_refusal

from . import Case, fmt, row_name


def conv_refs(ctx, precision="fp32"):
    """(reference name, its math) for a variant of the given precision: an
    fp32 variant against cuDNN with TF32 off and on, a tensor-core one
    against cuDNN doing the same math."""
    if not ctx.gpu:
        return (("torch-cpu", "fp32"),)
    return {"fp32": (("cudnn-fp32", "fp32"), ("cudnn-tf32", "tf32")), "tf32": (("cudnn-tf32", "tf32"),),
            "bf16": (("cudnn-bf16", "bf16"),)}[precision]


# The row of igemm_bf16 on filters pre-converted to bf16 (ops.to_bf16_weights),
# for the layers a model can run that way (FCN.use_bf16_weights).
BF16_WEIGHTS_ROW = "igemm_bf16+bf16w"


def conv_cases(ctx, tag, L):
    F = ctx.torch.nn.functional
    # FCN's convolutions are stride 1; the wgmma variants run on an sm_90 GPU
    # (the emulator's wgmma is there for correctness, not for timing).
    wgmma = ctx.gpu and wgmma_refusal(L["x"], 1) is None
    variants = {v: conv_refs(ctx, ops.CONV2D_PRECISION[v]) for v in ops.conv2d_variants(L["w"], stride=1)
                if v not in ops.WGMMA_VARIANTS or wgmma}
    if L["name"] in BF16_WEIGHT_LAYERS:
        variants[BF16_WEIGHTS_ROW] = conv_refs(ctx, "bf16")
    names = [row_name(tag, L["name"], v, r) for v, refs in variants.items() for r, _ in refs]
    if not any(map(ctx.wants, names)):
        return []
    n, c, h, w = L["x"]
    k, _, r, s = L["w"]
    pad, relu = L["pad"], L["relu"]
    p, q = h + 2 * pad - r + 1, w + 2 * pad - s + 1
    xs = ctx.input_sets(L["x"])
    wo, wt = ctx.pair(ctx.randn(L["w"], np.sqrt(2.0 / (c * r * s))))
    bo, bt = ctx.pair(ctx.randn((k,), 0.1))

    def ref(xt, wt, bt):
        y = F.conv2d(xt, wt, bt, padding=pad)
        return F.relu(y, inplace=True) if relu else y

    # cuDNN's bf16 path takes bf16 tensors: converted once, outside the timing.
    ref_fns = {prec: [lambda xt=xt, wt=wt, bt=bt: ref(xt, wt, bt) for _, xt in xs] for prec in ("fp32", "tf32")}
    if ctx.gpu:
        wb, bb = wt.bfloat16(), bt.bfloat16()
        ref_fns["bf16"] = [lambda xt=xt.bfloat16(): ref(xt, wb, bb) for _, xt in xs]
    ref64 = lambda: ref(ctx.f64(xs[0][1]), ctx.f64(wt), ctx.f64(bt))  # noqa: E731
    flops = 2.0 * n * k * p * q * c * r * s
    nbytes = 4.0 * (n * c * h * w + k * c * r * s + k + n * k * p * q)
    desc = f"x {fmt(L['x'])} w {fmt(L['w'])} pad {pad}{' relu' if relu else ''}"
    cases = []
    for v, refs in variants.items():
        if v == BF16_WEIGHTS_ROW:  # converted once, outside the timing, as a model does when it opts in
            w16 = ops.to_bf16_weights(wo)
            ours_fns = [lambda xo=xo: ops.conv2d(xo, w16, bo, 1, pad, relu) for xo, _ in xs]
            v_bytes = nbytes - 2.0 * k * c * r * s  # 2 bytes per weight instead of 4
        else:
            ours_fns = [lambda xo=xo, v=v: ops.conv2d(xo, wo, bo, 1, pad, relu, variant=v) for xo, _ in xs]
            v_bytes = nbytes
        for ref_name, prec in refs:
            cases.append(Case(row_name(tag, L["name"], v, ref_name), "layer", "conv", tag, L["name"], v, ref_name,
                              desc, ours_fns, ref_fns[prec], prec, flops, v_bytes, ref64=ref64))
    return cases
