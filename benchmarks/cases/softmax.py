"""softmax, argmax and softmax_argmax over the class dimension, every variant."""

from fcn_cuda import ops

from . import Case, fmt, plain_ref, row_name


def softmax_cases(ctx, tag, n, classes, h, w):
    torch = ctx.torch
    ref = plain_ref(ctx)
    variants = [v for v in ops.SOFTMAX_VARIANTS if v != "float4" or (h * w) % 4 == 0]
    ops_ = (("softmax", ops.softmax, lambda xt: torch.softmax(xt, 1), 2),
            ("argmax", ops.argmax, lambda xt: torch.argmax(xt, 1), 1),
            ("softmax_argmax", ops.softmax_argmax, lambda xt: (torch.softmax(xt, 1), torch.argmax(xt, 1)), 2))
    wanted = [(op, v) for op, *_ in ops_ for v in variants if ctx.wants(row_name(tag, op, v, ref))]
    if not wanted:
        return []
    shape = (n, classes, h, w)
    xs = ctx.input_sets(shape, 3.0)
    cases = []
    for op, fn, ref_fn, passes in ops_:
        labels = op != "softmax"
        nbytes = 4.0 * (passes * n * classes * h * w + (n * h * w if labels else 0))
        ref_fns = [lambda xt=xt, f=ref_fn: f(xt) for _, xt in xs]
        for v in variants:
            if (op, v) in wanted:
                cases.append(Case(row_name(tag, op, v, ref), "kernel", "softmax", tag, op, v, ref,
                                  f"scores {fmt(shape)} over dim 1", [lambda xo=xo, v=v, f=fn: f(xo, v) for xo, _ in xs],
                                  ref_fns, "fp32", None, nbytes, "labels: int32 ours, int64 torch"
                                  if labels else "", ref64=lambda f=ref_fn: f(ctx.f64(xs[0][1]))))
    return cases
