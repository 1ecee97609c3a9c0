"""FCN-8s's layer walk (the shapes the suite measures) and the whole-network
rows: forward and infer against a PyTorch FCN-8s."""

import numpy as np

import fcn_cuda
from fcn_cuda import ops
from fcn_cuda.bilinear import bilinear_weights
from fcn_cuda.model import CONV1_PAD, head_geometry, param_shapes

from . import Case, plain_ref, row_name
from .pool import pooled


def fcn8s_layers(n, h, w, widths, fc, classes):
    """The layers of FCN-8s for an n x 3 x h x w input, in order, as dicts
    with their shapes (the same walk as fcn_cuda.FCN.forward)."""
    layers = []
    c, hh, ww = 3, h, w
    pools = {}
    for b, block in enumerate(widths):
        for i, k in enumerate(block):
            pad = CONV1_PAD if b == i == 0 else 1
            layers.append(dict(type="conv", name=f"conv{b + 1}_{i + 1}", x=(n, c, hh, ww), w=(k, c, 3, 3),
                               pad=pad, relu=True))
            hh, ww, c = hh + 2 * pad - 2, ww + 2 * pad - 2, k
        layers.append(dict(type="pool", name=f"pool{b + 1}", x=(n, c, hh, ww)))
        hh, ww = pooled(hh), pooled(ww)
        pools[b + 1] = (n, c, hh, ww)
    for name, k, r, relu in (("fc6", fc, 7, True), ("fc7", fc, 1, True), ("score_fr", classes, 1, False)):
        layers.append(dict(type="conv", name=name, x=(n, c, hh, ww), w=(k, c, r, r), pad=0, relu=relu))
        hh, ww, c = hh - r + 1, ww - r + 1, k
    off = head_geometry("8s")
    for up, skip, pool in (("upscore2", "score_pool4", 4), ("upscore_pool4", "score_pool3", 3)):
        layers.append(dict(type="upsample", name=up, x=(n, classes, hh, ww), k=4, stride=2, window=None))
        hh, ww = (hh - 1) * 2 + 4, (ww - 1) * 2 + 4
        layers.append(dict(type="skip", name=skip, up=(n, classes, hh, ww), feat=pools[pool], offset=off[skip]))
    layers.append(dict(type="upsample", name="upscore8", x=(n, classes, hh, ww), k=16, stride=8,
                       window=(h, w, off["upscore8"])))
    return layers


def conv_flops(layers):
    """2 x MACs of every convolution in the forward pass (skip scores on the cropped window only)."""
    total = 0
    for L in layers:
        if L["type"] == "conv":
            n, c, h, w = L["x"]
            k, _, r, s = L["w"]
            p, q = h + 2 * L["pad"] - r + 1, w + 2 * L["pad"] - s + 1
            total += 2 * n * k * p * q * c * r * s
        elif L["type"] == "skip":
            n, k, h, w = L["up"]
            total += 2 * n * k * h * w * L["feat"][1]
    return total


def random_state_dict(cfg, seed=7):
    """FCN-8s weights with nothing zero: He-normal convolutions, small random
    score layers and biases, the reference's bilinear (per-channel) upsampling."""
    rng = np.random.default_rng(seed)
    sd = {}
    for name, shape in param_shapes("8s", cfg.classes, cfg.widths, cfg.fc).items():
        layer = name.rsplit(".", 1)[0]
        if layer.startswith("upscore"):
            sd[name] = bilinear_weights(shape[0], shape[2])
        elif name.endswith(".bias"):
            sd[name] = (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.1))
        else:
            fan_in = int(np.prod(shape[1:]))
            sd[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
    return sd


def end_to_end_cases(ctx, tag, n, h, w, layers):
    """FCN-8s forward (preprocessed input -> scores) and infer (uint8 images
    in host memory -> labels in host memory) against the PyTorch FCN-8s with
    the same weights."""
    from ..torch_fcn8s import TorchFCN8s, preprocess as torch_preprocess

    torch = ctx.torch
    cfg = ctx.cfg
    if ctx.gpu:
        refs = [("torch-eager-fp32", "fp32"), ("torch-eager-tf32", "tf32"), ("torch-compile-fp32", "fp32")]
    else:
        refs = [("torch-cpu", "fp32"), ("torch-cpu-compile", "fp32")]
    if not cfg.compile:
        for op in ("forward", "infer"):
            name = row_name(tag, op, "fcn_cuda", refs[-1][0])
            if ctx.wants(name):
                ctx.skip(name, "torch.compile is left out of --quick (compiling takes longer than the smoke run)")
        refs = refs[:-1]
    names = [row_name(tag, op, "fcn_cuda", r) for op in ("forward", "infer") for r, _ in refs]
    if not any(map(ctx.wants, names)):
        return []
    sd = random_state_dict(cfg)
    model = fcn_cuda.FCN("8s", cfg.classes, state_dict=sd)
    net = TorchFCN8s(sd, cfg.classes).to(ctx.device).eval()
    del sd
    compiled = None
    compile_ref = refs[-1][0] if cfg.compile else None
    if compile_ref and any(ctx.wants(row_name(tag, op, "fcn_cuda", compile_ref)) for op in ("forward", "infer")):
        try:
            torch._dynamo.reset()
            compiled = torch.compile(net)  # compiles at the first call, in the warm-up
        except Exception as e:  # e.g. no triton (GPU) or no C++ compiler (CPU) for inductor
            for op in ("forward", "infer"):
                ctx.skip(row_name(tag, op, "fcn_cuda", compile_ref),
                         f"torch.compile failed: {type(e).__name__}: {str(e)[:300]}")
    xs = ctx.input_sets((n, 3, h, w), 60.0)  # pre-processed images: values about +-128
    imgs = [ctx.rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8) for _ in range(cfg.sets)]
    be = ctx.be

    def ours_infer(img):
        if n == 1:
            return fcn_cuda.infer(img[0], model)  # the public call: host image in, host labels out
        return be.to_numpy(ops.argmax(model(ops.preprocess(be.xp.asarray(img)))))

    def ref_infer(m, img):
        return m(torch_preprocess(torch.from_numpy(img).to(ctx.device))).argmax(1).cpu().numpy()

    flops = float(conv_flops(layers))
    cases = []
    infer_desc = ("fcn_cuda.infer: " if n == 1 else "preprocess + forward + argmax: ") + \
        f"uint8 {n}x{h}x{w}x3 in host memory -> labels in host memory"
    for ref_name, prec in refs:
        m = compiled if ref_name == compile_ref else net
        if m is None:
            continue
        note = "compiled at warm-up" if m is compiled else ""
        cases.append(Case(row_name(tag, "forward", "fcn_cuda", ref_name), "end_to_end", "e2e", tag, "forward",
                          "fcn_cuda", ref_name, f"FCN-8s x {n}x3x{h}x{w} -> scores {n}x{cfg.classes}x{h}x{w}",
                          [lambda xo=xo: model(xo) for xo, _ in xs], [lambda xt=xt, m=m: m(xt) for _, xt in xs],
                          prec, flops, None, note))
        cases.append(Case(row_name(tag, "infer", "fcn_cuda", ref_name), "end_to_end", "e2e", tag, "infer",
                          "fcn_cuda", ref_name, infer_desc, [lambda i=i: ours_infer(i) for i in imgs],
                          [lambda i=i, m=m: ref_infer(m, i) for i in imgs], prec, flops, None, note))
    return cases
