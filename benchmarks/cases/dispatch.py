"""The dispatch rows: the same kernels through torch.ops.fcn_cuda and directly."""

import numpy as np

import fcn_cuda
from fcn_cuda import ops
from fcn_cuda.bilinear import bilinear_weights
from fcn_cuda.crf import PARAMETERS, PYDENSECRF_README
from fcn_cuda.ops.loss import softmax_cross_entropy_on_device

from . import Case, fmt, row_name
from .crf import crf_input
from .model import conv_flops, random_state_dict


DIRECT, THROUGH_TORCH = "fcn_cuda.ops", "torch.ops.fcn_cuda"


def dispatch_cases(ctx, tag, n, h, w, layers):
    """The same kernels called through PyTorch (torch.ops.fcn_cuda: torch
    tensors in and out, nothing requiring grad) against the direct call
    (fcn_cuda.ops on arrays): ours_ms - ref_ms is the dispatch's cost (the
    dispatcher, the autograd layer, the NumPy / DLPack hand-over). One row
    per op at an FCN-8s shape, and fcn_cuda.torch.FCN's forward (inference
    mode) against fcn_cuda.FCN's on the same weights."""
    import fcn_cuda.torch as fct

    torch = ctx.torch
    top = torch.ops.fcn_cuda
    by = {L["name"]: L for L in layers}
    classes = ctx.cfg.classes
    conv, pool, up2, up8, skip = by["conv5_1"], by["pool5"], by["upscore2"], by["upscore8"], by["score_pool4"]
    oh, ow, o8 = up8["window"]
    so = skip["offset"]
    n_, k, hu, wu = skip["up"]
    scores_shape = (n, classes, h, w)

    def tensors(arrays):
        return [a if isinstance(a, (int, float, list)) else ctx.pair(a) for a in arrays]

    def rng_labels():
        labels = ctx.rng.integers(0, classes, (n, h, w)).astype(np.int32)
        labels[ctx.rng.random((n, h, w)) < 0.1] = 255
        return labels

    cw = ctx.randn(conv["w"], np.sqrt(2.0 / np.prod(conv["w"][1:])))
    b4 = bilinear_weights(classes, 4)
    b16 = bilinear_weights(classes, 16)
    rows = [  # (layer, shape note, torch.ops call, direct call, inputs (arrays; numbers pass through))
        (f"conv2d({conv['name']})", f"x {fmt(conv['x'])} w {fmt(conv['w'])} pad 1 relu",
         lambda x, w, b: top.conv2d(x, w, b, [1, 1], [1, 1], True), lambda x, w, b: ops.conv2d(x, w, b, 1, 1, True),
         [ctx.randn(conv["x"]), cw, ctx.randn((conv["w"][0],), 0.1)]),
        (f"max_pool2d({pool['name']})", f"x {fmt(pool['x'])} 2x2/2 ceil",
         lambda x: top.max_pool2d(x, [2, 2], [2, 2], True), lambda x: ops.max_pool2d(x, 2, 2, True),
         [ctx.randn(pool["x"])]),
        (f"conv_transpose2d({up2['name']})", f"x {fmt(up2['x'])} bilinear k4 s2",
         lambda x, w: top.conv_transpose2d(x, w, None, [2, 2], [0, 0]), lambda x, w: ops.conv_transpose2d(x, w, None, 2),
         [ctx.randn(up2["x"], 3.0), b4]),
        (f"conv_transpose2d_window({up8['name']})", f"x {fmt(up8['x'])} bilinear k16 s8, window {oh}x{ow} at {o8}",
         lambda x, w: top.conv_transpose2d_window(x, w, None, [8, 8], [oh, ow], [o8, o8]),
         lambda x, w: ops.conv_transpose2d_window(x, w, 8, oh, ow, o8), [ctx.randn(up8["x"], 3.0), b16]),
        (f"crop_add({skip['name']})", f"up {fmt(skip['up'])} + score {fmt((n_, k, *skip['feat'][2:]))}",
         lambda a, b: top.crop_add(a, b, [so, so]), lambda a, b: ops.crop_add(a, b, so),
         [ctx.randn(skip["up"]), ctx.randn((n_, k, *skip["feat"][2:]))]),
        (f"score_crop_add({skip['name']})", f"up {fmt(skip['up'])} + 1x1 conv of feat {fmt(skip['feat'])}",
         lambda u, f, w, b: top.score_crop_add(u, f, w, b, [so, so], 1.0),
         lambda u, f, w, b: ops.score_crop_add(u, f, w, b, so),
         [ctx.randn(skip["up"]), ctx.randn(skip["feat"]), ctx.randn((k, skip["feat"][1], 1, 1), 0.1),
          ctx.randn((k,), 0.1)]),
        ("softmax(scores)", f"scores {fmt(scores_shape)}", lambda x: top.softmax(x), lambda x: ops.softmax(x),
         [ctx.randn(scores_shape, 3.0)]),
        ("argmax(scores)", f"scores {fmt(scores_shape)}", lambda x: top.argmax(x), lambda x: ops.argmax(x),
         [ctx.randn(scores_shape, 3.0)]),
        (f"upsample_argmax({up8['name']})", f"x {fmt(up8['x'])} k16 s8 -> labels {oh}x{ow}",
         lambda x, w: top.upsample_argmax(x, w, [8, 8], [oh, ow], [o8, o8]),
         lambda x, w: ops.upsample_argmax(x, w, 8, oh, ow, o8), [ctx.randn(up8["x"], 3.0), b16]),
        ("softmax_cross_entropy(scores)", f"scores {fmt(scores_shape)}, loss and gradient",
         lambda x, l: top.softmax_cross_entropy(x, l, 255, False, None),
         # what the op runs: the loss left on the device (the public call also brings it to the host)
         lambda x, l: softmax_cross_entropy_on_device(x, l), [ctx.randn(scores_shape, 3.0), rng_labels()]),
        ("dropout(fc6)", f"x {fmt(by['fc7']['x'])} p 0.5",
         lambda x: top.dropout(x, 0.5, 1, 2, 0), lambda x: ops.dropout(x, 0.5, 1, 2), [ctx.randn(by["fc7"]["x"])]),
        ("dense_crf(probs)", f"img {h}x{w}x3, probs {classes}x{h}x{w}, 5 iterations",
         lambda i, p: top.dense_crf(i, p, 5, *(PYDENSECRF_README[k] for k in PARAMETERS[1:]), "lattice"),
         lambda i, p: fcn_cuda.dense_crf(i, p, 5), list(crf_input(ctx.rng, h, w, classes))),
    ]
    cases = []
    for layer, desc, through, direct, arrays in rows:
        name = row_name(tag, layer, THROUGH_TORCH, DIRECT)
        if not ctx.wants(name):
            continue
        pairs = tensors(arrays)
        mine = [p[0] for p in pairs]
        out = direct(*mine)
        outs = out if isinstance(out, tuple) else (out,)
        nbytes = float(sum(a.nbytes for a in arrays) + sum(getattr(o, "nbytes", 4) for o in outs))
        cases.append(Case(name, "dispatch", "dispatch", tag, layer, THROUGH_TORCH, DIRECT, desc,
                          [lambda f=through, t=[p[1] for p in pairs]: f(*t)], [lambda f=direct, a=mine: f(*a)], "fp32", None,
                          nbytes, "the same kernel both ways: ours - ref = the cost of the torch dispatch"))
    name = row_name(tag, "FCN-8s forward", "fcn_cuda.torch.FCN", "fcn_cuda.FCN")
    if ctx.wants(name):
        model = fcn_cuda.FCN("8s", classes, state_dict=random_state_dict(ctx.cfg))
        net = fct.FCN.from_model(model).to(ctx.device).eval()
        xs = ctx.input_sets((n, 3, h, w), 60.0)

        def module(xt):
            with torch.inference_mode():
                return net(xt)

        cases.append(Case(name, "dispatch", "dispatch", tag, "FCN-8s forward", "fcn_cuda.torch.FCN", "fcn_cuda.FCN",
                          f"FCN-8s x {n}x3x{h}x{w} -> scores", [lambda xt=xt: module(xt) for _, xt in xs],
                          [lambda xo=xo: model(xo) for xo, _ in xs], "fp32", float(conv_flops(layers)), None,
                          "the nn.Module against fcn_cuda.FCN: the same kernels, 22 to 25 ops dispatched"))
    return cases
