"""upsample_argmax, FCN's fused last stage (upsample into the output window,
then the labels, with or without the softmax), against the unfused
conv_transpose2d_window + argmax / softmax_argmax, on bilinear weights."""

from fcn_cuda import ops
from fcn_cuda.bilinear import bilinear_weights

from . import Case, fmt, plain_ref, row_name

VARIANTS = ("fused", "unfused", "fused+probs", "unfused+probs")


def decisive_labels(up):
    """up.argmax(1), with -1 where the top two classes lie within fp32
    rounding of each other (either label is right there)."""
    top2 = up.topk(2, 1).values if up.shape[1] > 1 else None
    labels = up.argmax(1)
    if top2 is not None:
        close = top2[:, 0] - top2[:, 1] <= 1e-5 * max(1.0, float(up.abs().max()))
        labels[close] = -1
    return labels


def head_cases(ctx, tag, L):
    """L: name, x (N, C, H, W), k, stride and window (out_h, out_w, offset).
    trusted=True on every call, as the model makes them (it checks the
    weights are per-channel once, at load). Outputs: labels, or (labels, probs)."""
    F = ctx.torch.nn.functional
    refs = {False: plain_ref(ctx), True: plain_ref(ctx) + "+softmax"}
    names = [row_name(tag, L["name"], v, refs[v.endswith("+probs")]) for v in VARIANTS]
    if not any(map(ctx.wants, names)):
        return []
    n, c, h, w = L["x"]
    k, s = L["k"], L["stride"]
    oh, ow, o = L["window"]
    xs = ctx.input_sets(L["x"], 3.0)
    wo, wt = ctx.pair(bilinear_weights(c, k))

    def fused(xo, probs):
        return ops.upsample_argmax(xo, wo, s, oh, ow, o, probs=probs, trusted=True)

    def unfused(xo, probs):
        up = ops.conv_transpose2d_window(xo, wo, s, oh, ow, o, variant="bilinear", trusted=True)
        if not probs:
            return ops.argmax(up)
        p, labels = ops.softmax_argmax(up)
        return labels, p

    def upsampled(xt, wt):
        return F.conv_transpose2d(xt, wt, stride=s)[:, :, o:o + oh, o:o + ow]

    def reference(xt, wt, probs):
        up = upsampled(xt, wt)
        return (up.argmax(1), up.softmax(1)) if probs else up.argmax(1)

    def reference64(probs):
        up = upsampled(ctx.f64(xs[0][1]), ctx.f64(wt))
        return (decisive_labels(up), up.softmax(1)) if probs else decisive_labels(up)

    desc = f"x {fmt(L['x'])} k{k} s{s} -> labels {oh}x{ow} at {o} (torch: full output, slice, argmax)"
    cases = []
    for v in VARIANTS:
        probs = v.endswith("+probs")
        run = fused if v.startswith("fused") else unfused
        nbytes = 4.0 * (n * c * h * w + n * oh * ow + (n * c * oh * ow if probs else 0))
        ref = refs[probs]
        cases.append(Case(row_name(tag, L["name"], v, ref), "kernel", "head", tag, L["name"], v, ref, desc,
                          [lambda xo=xo, run=run, probs=probs: run(xo, probs) for xo, _ in xs],
                          [lambda xt=xt, probs=probs: reference(xt, wt, probs) for _, xt in xs], "fp32", None,
                          nbytes, "labels checked where the float64 top two differ by more than fp32 rounding",
                          ref64=lambda probs=probs: reference64(probs)))
    return cases
