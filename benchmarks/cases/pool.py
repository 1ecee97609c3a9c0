"""max_pool2d's row: FCN's 2x2 / stride 2 ceil-mode pool."""

from fcn_cuda import ops

from . import Case, fmt, plain_ref, row_name


def pooled(size):
    """Output size of a 2x2 / stride 2 max pool in ceil mode (FCN's pools)."""
    out = (size - 2 + 1) // 2 + 1
    return out - 1 if (out - 1) * 2 >= size else out


def pool_cases(ctx, tag, L):
    F = ctx.torch.nn.functional
    name = row_name(tag, L["name"], "max_pool2d", plain_ref(ctx))
    if not ctx.wants(name):
        return []
    n, c, h, w = L["x"]
    xs = ctx.input_sets(L["x"])
    nbytes = 4.0 * (n * c * h * w + n * c * pooled(h) * pooled(w))
    return [Case(name, "layer", "pool", tag, L["name"], "max_pool2d", plain_ref(ctx), f"x {fmt(L['x'])} 2x2/2 ceil",
                 [lambda xo=xo: ops.max_pool2d(xo, 2, 2, ceil_mode=True) for xo, _ in xs],
                 [lambda xt=xt: F.max_pool2d(xt, 2, 2, ceil_mode=True) for _, xt in xs], "fp32", None, nbytes,
                 ref64=lambda: F.max_pool2d(ctx.f64(xs[0][1]), 2, 2, ceil_mode=True))]
