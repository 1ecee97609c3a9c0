"""conv_transpose2d's rows (and conv_transpose2d_window's, FCN's last
upsampling): every variant on bilinear weights."""

from fcn_cuda import ops
from fcn_cuda.bilinear import bilinear_weights

from . import Case, fmt, plain_ref, row_name


def upsample_cases(ctx, tag, L):
    F = ctx.torch.nn.functional
    ref = plain_ref(ctx)
    names = [row_name(tag, L["name"], v, ref) for v in ops.CONV_TRANSPOSE2D_VARIANTS]
    if not any(map(ctx.wants, names)):
        return []
    n, c, h, w = L["x"]
    k, s = L["k"], L["stride"]
    xs = ctx.input_sets(L["x"], 3.0)
    wo, wt = ctx.pair(bilinear_weights(c, k))
    # trusted=True, as the model calls them: it checks once, at load, that the
    # weights are per-channel, so the timed call is the kernel alone (without
    # it, every call would also run that check, reductions and a host sync).
    if L["window"] is None:
        oh, ow = (h - 1) * s + k, (w - 1) * s + k
        ours = lambda xo, v: ops.conv_transpose2d(xo, wo, stride=s, variant=v, trusted=True)
        ref_fn = lambda xt, wt: F.conv_transpose2d(xt, wt, stride=s)
        desc = f"x {fmt(L['x'])} k{k} s{s} -> {oh}x{ow}"
    else:
        oh, ow, o = L["window"]
        ours = lambda xo, v: ops.conv_transpose2d_window(xo, wo, s, oh, ow, o, variant=v, trusted=True)
        ref_fn = lambda xt, wt: F.conv_transpose2d(xt, wt, stride=s)[:, :, o:o + oh, o:o + ow]
        desc = f"x {fmt(L['x'])} k{k} s{s}, window {oh}x{ow} at {o} (torch: full output, then a slice)"
    nbytes = 4.0 * (n * c * h * w + c * c * k * k + n * c * oh * ow)
    ref_fns = [lambda xt=xt: ref_fn(xt, wt) for _, xt in xs]
    return [Case(row_name(tag, L["name"], v, ref), "layer", "upsample", tag, L["name"], v, ref, desc,
                 [lambda xo=xo, v=v: ours(xo, v) for xo, _ in xs], ref_fns, "fp32", None, nbytes,
                 "21x21 diagonal bilinear weights" if c == 21 else "diagonal bilinear weights",
                 ref64=lambda: ref_fn(ctx.f64(xs[0][1]), ctx.f64(wt)))
            for v in ops.CONV_TRANSPOSE2D_VARIANTS]
