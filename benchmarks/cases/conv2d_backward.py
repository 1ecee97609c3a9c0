"""conv2d_grad_weight: the weight and bias gradients of a 3x3 (or any) layer
with the ReLU mask fused in, as training runs them, against torch's
convolution_backward on the masked gradient."""

from fcn_cuda import ops
from fcn_cuda.ops.conv2d import conv_out

from . import Case, fmt, plain_ref, row_name


def grad_weight_cases(ctx, tag, L):
    """L: name, x (N, C, H, W), w (K, C, R, S), pad. The incoming gradient and
    the forward output y (whose sign is the ReLU mask) are random."""
    torch = ctx.torch
    ref = plain_ref(ctx)
    name = row_name(tag, L["name"], "conv2d_grad_weight", ref)
    if not ctx.wants(name):
        return []
    n, c, h, w = L["x"]
    k, _, r, s = L["w"]
    pad = L["pad"]
    p, q = conv_out(h, r, 1, pad), conv_out(w, s, 1, pad)
    xs = ctx.input_sets(L["x"])
    gys = ctx.input_sets((n, k, p, q))
    ys = ctx.input_sets((n, k, p, q))
    sets = list(zip(xs, gys, ys))

    def reference(xt, gyt, yt):
        masked = gyt * (yt > 0)
        w_like = torch.empty(L["w"], dtype=xt.dtype, device=xt.device)  # only its shape is read
        _, gw, gb = torch.ops.aten.convolution_backward(masked, xt, w_like, [k], [1, 1], [pad, pad], [1, 1], False,
                                                         [0, 0], 1, [False, True, True])
        return gw, gb

    splits = ctx.be.ext.conv2d_grad_weight_splits(n * p * q, k, c * r * s)
    return [Case(name, "kernel", "conv2d_backward", tag, L["name"], "conv2d_grad_weight", ref,
                 f"x {fmt(L['x'])}, grad_y {fmt((n, k, p, q))} masked by relu_y, w {fmt(L['w'])} pad {pad}; "
                 f"{splits} split(s) of the pixels",
                 [lambda xo=xo, go=go, yo=yo: ops.conv2d_grad_weight(xo, go, (r, s), 1, pad, relu_y=yo)
                  for (xo, _), (go, _), (yo, _) in sets],
                 [lambda xt=xt, gt=gt, yt=yt: reference(xt, gt, yt) for (_, xt), (_, gt), (_, yt) in sets], "fp32",
                 2.0 * n * k * p * q * c * r * s, 4.0 * (n * c * h * w + 2 * n * k * p * q + k * c * r * s + k),
                 ref64=lambda: reference(*(ctx.f64(t) for (_, t) in sets[0])))]
