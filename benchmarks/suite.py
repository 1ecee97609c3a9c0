"""The benchmark suite: every FCN-8s layer, the kernels around it and the
whole network, fcn_cuda against PyTorch measured in the same run.

On a GPU the reference is PyTorch on CUDA (cuDNN for convolutions, with
cudnn.benchmark on; TF32 off and on); on the host it is PyTorch on the CPU
and fcn_cuda runs under the CUDA emulation, so host rows are labeled as
emulation everywhere they appear.

Each row: `ours_ms` (fcn_cuda) and `ref_ms` (PyTorch) as medians,
`ratio = ref_ms / ours_ms` (> 1: fcn_cuda is faster), the achieved TFLOP/s
(2 x MACs of the useful work / time) and/or GB/s (fewest bytes the op must
move / time), `pct_of_peak`: the roofline fraction
100 * max(flops / peak_flops, bytes / copy_bandwidth) / time against the
peaks measured at the start of the same run, and `err`, the difference
between the two outputs (relative L2, or the fraction of differing labels).
fcn_cuda's output is taken before the timing loop and again after it: the
row fails when the two differ or when any output holds a NaN or an infinity.
"""

import contextlib
import traceback
from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np

import fcn_cuda
from fcn_cuda import _backend, ops
from fcn_cuda.bilinear import bilinear_weights
from fcn_cuda.crf import PARAMETERS, PYDENSECRF_README
from fcn_cuda.model import BF16_WEIGHT_LAYERS, CONV1_PAD, VGG16_BLOCKS, head_geometry, param_shapes
from fcn_cuda.ops.loss import softmax_cross_entropy_on_device

from .timing import CupyClock, Timing, TorchClock, time_device, time_host

KINDS = ("kernel", "layer", "end_to_end", "train_step", "dispatch")

QUARTER_WIDTHS = ((16, 16), (32, 32), (64, 64, 64), (128, 128, 128), (128, 128, 128))
TINY_WIDTHS = ((4, 4), (8, 8), (8, 8, 8), (16, 16, 16), (16, 16, 16))


# (H, W, classes, iterations, variants): pydensecrf's README parameters. 160x160 is the bundled model's
# input; 120x160 with 21 classes the emulator's target (within 3x of pydensecrf); 375x500 (a 500 x 375
# VOC image) with 21 classes and 10 iterations the GPU's (at least 50x pydensecrf; docs/performance.md,
# 'The dense CRF'); the naive
# rung is O((H*W)^2), so it has a small image of its own, beside the lattice.
CRF_CASES = ((160, 160, 4, 5, ("lattice",)), (120, 160, 21, 5, ("lattice",)), (375, 500, 21, 10, ("lattice",)),
             (30, 40, 4, 5, ("naive", "lattice")))
QUICK_CRF_CASES = ((48, 64, 4, 5, ("lattice",)), (16, 20, 3, 2, ("naive", "lattice")))


@dataclass(frozen=True)
class Config:
    """What one run measures: the input shapes (batch, height, width), the
    model widths, and how many times each side runs."""

    name: str
    shapes: tuple
    widths: tuple
    fc: int
    note: str
    classes: int = 21
    repeats: int = 25
    warmup: int = 3
    sets: int = 2             # input sets rotated between runs
    budget_s: Optional[float] = None  # host: stop repeating a side after this many seconds (>= 3 runs)
    peak_sizes: tuple = (1 << 28, 8192)  # copy elements per buffer, matmul size
    compile: bool = True      # also time torch.compile's FCN-8s end to end
    crf: tuple = CRF_CASES    # dense_crf rows: (H, W, classes, iterations, variants)


def config_for(backend, quick):
    if backend == "cuda":
        if quick:
            return Config("gpu-quick", ((1, 128, 128), (2, 128, 128)), QUARTER_WIDTHS, 256,
                          "GPU quick check: quarter-width FCN-8s at 128x128 (not the reference input)",
                          repeats=20, warmup=3, peak_sizes=(1 << 26, 4096), crf=QUICK_CRF_CASES)
        return Config("gpu-full", ((1, 500, 500), (8, 512, 512)), VGG16_BLOCKS, 4096,
                      "full-width FCN-8s (VGG16, fc 4096, 21 classes), batch 1 at 500x500 and batch 8 at 512x512",
                      repeats=25, warmup=3)
    if quick:
        return Config("host-quick", ((1, 48, 48), (2, 32, 32)), TINY_WIDTHS, 32,
                      "host emulation, quick: tiny-width FCN-8s (4..16 channels, fc 32) at 48x48 and 2 x 32x32",
                      repeats=3, warmup=1, sets=1, budget_s=0.3, peak_sizes=(1 << 22, 1024), compile=False,
                      crf=QUICK_CRF_CASES)
    return Config("host-default", ((1, 128, 128), (2, 96, 96)), QUARTER_WIDTHS, 256,
                  "host emulation: the full-width 500x500 model is far too slow to emulate, so a quarter-width "
                  "FCN-8s (16..128 channels, fc 256) at 128x128 and 2 x 96x96",
                  repeats=5, warmup=1, sets=1, budget_s=2.0, peak_sizes=(1 << 24, 2048))


def shape_tag(shape):
    n, h, w = shape
    return f"{n}x{h}x{w}"


@dataclass
class Case:
    """One row to measure: fcn_cuda's callables and PyTorch's, one per input set."""

    name: str
    kind: str
    group: str
    config: str
    layer: str
    ours: str
    ref: str
    shape: str
    ours_fns: List[Callable]
    ref_fns: List[Callable]
    ref_precision: str = "fp32"
    flops: Optional[float] = None
    bytes: Optional[float] = None
    note: str = ""
    ref_on_host: bool = False  # the reference is CPU code (pydensecrf): timed on the host clock on any backend

    @property
    def ours_key(self):
        return (self.config, self.layer, self.ours)

    @property
    def ref_key(self):
        return (self.config, self.layer, self.ref)


def row_name(tag, layer, ours, ref):
    return f"{tag}/{layer}/{ours}/{ref}"


# --------------------------------------------------------------------- context
class Context:
    """The backend, both frameworks' arrays and clocks, and the row filter."""

    def __init__(self, backend, cfg, only=(), log=print, threads=1):
        import torch

        self._previous_backend = fcn_cuda.use_backend(backend)
        self.be = _backend.active()
        self.gpu = self.be.name == "cuda"
        self.cfg = cfg
        self.only = tuple(only or ())
        self.log = log
        self.torch = torch
        self.skipped = []
        self.failed = []
        self.rng = np.random.default_rng(2024)
        if self.gpu:
            if not torch.cuda.is_available():
                raise RuntimeError("the cuda backend is active but this PyTorch has no CUDA: the reference cannot run")
            self.device = torch.device("cuda")
            torch.backends.cudnn.benchmark = True
            self.ours_clock = CupyClock()
            self.ref_clock = TorchClock()
        else:
            # Both sides get the same number of CPU threads; one by default: on
            # a shared CPU, a multi-threaded op waits for its slowest thread's
            # time slice (seen here: a 10 us torch conv took 24 ms with 2 threads).
            self.device = torch.device("cpu")
            self._restore = (fcn_cuda.emulator_workers(), torch.get_num_threads())
            fcn_cuda.set_emulator_workers(threads)
            torch.set_num_threads(threads)

    def close(self):
        """Puts back the backend and the thread settings the run changed."""
        if not self.gpu and getattr(self, "_restore", None):
            fcn_cuda.set_emulator_workers(self._restore[0])
            self.torch.set_num_threads(self._restore[1])
            self._restore = None
        if self._previous_backend is not None:
            fcn_cuda.use_backend(self._previous_backend)
            self._previous_backend = None

    # ---- what runs
    def wants(self, name):
        return not self.only or any(s in name for s in self.only)

    def skip(self, name, reason):
        self.skipped.append({"name": name, "reason": reason})
        self.log(f"  skipped {name}: {reason}")

    # ---- data: random (never zeros), the same values on both sides
    def randn(self, shape, scale=1.0):
        return (self.rng.standard_normal(shape, dtype=np.float32) * np.float32(scale))

    def pair(self, a):
        """(fcn_cuda array, torch tensor) holding the same values."""
        return self.be.xp.asarray(a), self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def input_sets(self, shape, scale=1.0):
        return [self.pair(self.randn(shape, scale)) for _ in range(self.cfg.sets)]

    # ---- the reference's numeric mode
    @contextlib.contextmanager
    def ref_mode(self, precision):
        """PyTorch without autograd; on a GPU, TF32 for convolutions and
        matmuls on ('tf32') or off ('fp32'), set through the legacy flags only
        (mixing them with the fp32_precision API makes torch raise)."""
        torch = self.torch
        if precision not in ("fp32", "tf32", "bf16"):
            raise ValueError(f"unknown precision {precision!r}")
        with torch.inference_mode():
            if not self.gpu:
                yield
                return
            saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
            try:
                yield
            finally:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

    # ---- clocks
    def time_ours(self, fns):
        c = self.cfg
        if self.gpu:
            return time_device(self.ours_clock, fns, c.warmup, c.repeats)
        return time_host(fns, c.warmup, c.repeats, c.budget_s)

    def time_ref(self, fns, precision, on_host=False):
        c = self.cfg
        with self.ref_mode(precision):
            if self.gpu and not on_host:
                return time_device(self.ref_clock, fns, c.warmup, c.repeats)
            return time_host(fns, c.warmup, c.repeats, c.budget_s)

    def free(self):
        """Gives cached device memory back between groups of rows."""
        if self.gpu:
            self.be.xp.get_default_memory_pool().free_all_blocks()
            self.torch.cuda.empty_cache()

    def ours_numpy(self, out):
        if isinstance(out, tuple):
            return tuple(self.ours_numpy(o) for o in out)
        return np.asarray(self.be.to_numpy(out)) if not isinstance(out, np.ndarray) else out

    def ref_numpy(self, out):
        if isinstance(out, tuple):
            return tuple(self.ref_numpy(o) for o in out)
        if isinstance(out, np.ndarray):
            return out
        if hasattr(out, "detach"):
            return out.detach().cpu().numpy()
        return np.asarray(self.be.to_numpy(out))  # fcn_cuda's arrays or a number (the dispatch rows' direct calls)


# ----------------------------------------------------------------- peaks
def measure_peaks(ctx):
    """Measured ceilings for the roofline: device-to-device copy bandwidth
    (bytes read + written) and matmul rates; on the host, a NumPy copy and
    torch's CPU matmul (fp32), labeled as CPU figures."""
    torch = ctx.torch
    n_copy, m = ctx.cfg.peak_sizes
    if ctx.gpu:
        a = torch.randn(n_copy, device=ctx.device)
        b = torch.empty_like(a)
        # Two 1 GiB buffers dwarf the L2: no flush needed between copies.
        t = time_device(ctx.ref_clock, [lambda: b.copy_(a)], warmup=3, repeats=20, flush=False)
        peaks = {"where": f"GPU: {torch.cuda.get_device_name()}",
                 "copy_gbps": 2 * n_copy * 4 / t.median_ms / 1e6,
                 "copy_bytes": 2 * n_copy * 4, "matmul_size": m}
        del a, b
        x, y = torch.randn(m, m, device=ctx.device), torch.randn(m, m, device=ctx.device)
        for prec, (p, q) in (("fp32", (x, y)), ("tf32", (x, y)), ("bf16", (x.bfloat16(), y.bfloat16()))):
            with ctx.ref_mode(prec):
                t = time_device(ctx.ref_clock, [lambda p=p, q=q: p @ q], warmup=3, repeats=20, flush=False)
            peaks[f"matmul_{prec}_tflops"] = 2.0 * m ** 3 / t.median_ms / 1e9
        del x, y
        ctx.free()
        return peaks
    a = ctx.randn(n_copy)
    b = np.empty_like(a)
    t = time_host([lambda: np.copyto(b, a)], warmup=1, repeats=5)
    peaks = {"where": f"CPU (host): NumPy copy and torch CPU matmul with {torch.get_num_threads()} thread(s); "
                      "not GPU figures",
             "copy_gbps": 2 * n_copy * 4 / t.median_ms / 1e6, "copy_bytes": 2 * n_copy * 4, "matmul_size": m}
    x, y = torch.from_numpy(ctx.randn((m, m))), torch.from_numpy(ctx.randn((m, m)))
    with ctx.ref_mode("fp32"):
        t = time_host([lambda: x @ y], warmup=1, repeats=5)
    peaks["matmul_fp32_tflops"] = 2.0 * m ** 3 / t.median_ms / 1e9
    return peaks


def peak_flops(peaks, precision):
    return peaks.get(f"matmul_{precision}_tflops") or peaks.get("matmul_fp32_tflops")


def pct_of_peak(ms, flops, nbytes, peaks, precision):
    """The roofline fraction: the time the measured peaks allow over the time taken, in %."""
    floors = []
    if flops:
        floors.append(flops / (peak_flops(peaks, precision) * 1e12))
    if nbytes:
        floors.append(nbytes / (peaks["copy_gbps"] * 1e9))
    return 100.0 * max(floors) / (ms * 1e-3) if floors else None


# ---------------------------------------------------------------- FCN-8s shapes
def pooled(size):
    """Output size of a 2x2 / stride 2 max pool in ceil mode (FCN's pools)."""
    out = (size - 2 + 1) // 2 + 1
    return out - 1 if (out - 1) * 2 >= size else out


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


def _fmt(shape):
    return "x".join(str(v) for v in shape)


# ------------------------------------------------------------------ the rows
def conv_refs(ctx, precision="fp32"):
    """(reference name, its math) for a variant of the given precision: an
    fp32 variant against cuDNN with TF32 off and on, a tensor-core one
    against cuDNN doing the same math."""
    if not ctx.gpu:
        return (("torch-cpu", "fp32"),)
    return {"fp32": (("cudnn-fp32", "fp32"), ("cudnn-tf32", "tf32")), "tf32": (("cudnn-tf32", "tf32"),),
            "bf16": (("cudnn-bf16", "bf16"),)}[precision]


def plain_ref(ctx):
    return "torch-fp32" if ctx.gpu else "torch-cpu"


# The row of igemm_bf16 on filters pre-converted to bf16 (ops.to_bf16_weights),
# for the layers a model can run that way (FCN.use_bf16_weights).
BF16_WEIGHTS_ROW = "igemm_bf16+bf16w"


def conv_cases(ctx, tag, L):
    F = ctx.torch.nn.functional
    variants = {v: conv_refs(ctx, ops.CONV2D_PRECISION[v]) for v in ops.conv2d_variants(L["w"])}
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
    flops = 2.0 * n * k * p * q * c * r * s
    nbytes = 4.0 * (n * c * h * w + k * c * r * s + k + n * k * p * q)
    desc = f"x {_fmt(L['x'])} w {_fmt(L['w'])} pad {pad}{' relu' if relu else ''}"
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
                              desc, ours_fns, ref_fns[prec], prec, flops, v_bytes))
    return cases


def pool_cases(ctx, tag, L):
    F = ctx.torch.nn.functional
    name = row_name(tag, L["name"], "max_pool2d", plain_ref(ctx))
    if not ctx.wants(name):
        return []
    n, c, h, w = L["x"]
    xs = ctx.input_sets(L["x"])
    nbytes = 4.0 * (n * c * h * w + n * c * pooled(h) * pooled(w))
    return [Case(name, "layer", "pool", tag, L["name"], "max_pool2d", plain_ref(ctx), f"x {_fmt(L['x'])} 2x2/2 ceil",
                 [lambda xo=xo: ops.max_pool2d(xo, 2, 2, ceil_mode=True) for xo, _ in xs],
                 [lambda xt=xt: F.max_pool2d(xt, 2, 2, ceil_mode=True) for _, xt in xs], "fp32", None, nbytes)]


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
        ref_fn = lambda xt: F.conv_transpose2d(xt, wt, stride=s)
        desc = f"x {_fmt(L['x'])} k{k} s{s} -> {oh}x{ow}"
    else:
        oh, ow, o = L["window"]
        ours = lambda xo, v: ops.conv_transpose2d_window(xo, wo, s, oh, ow, o, variant=v, trusted=True)
        ref_fn = lambda xt: F.conv_transpose2d(xt, wt, stride=s)[:, :, o:o + oh, o:o + ow]
        desc = f"x {_fmt(L['x'])} k{k} s{s}, window {oh}x{ow} at {o} (torch: full output, then a slice)"
    nbytes = 4.0 * (n * c * h * w + c * c * k * k + n * c * oh * ow)
    ref_fns = [lambda xt=xt: ref_fn(xt) for _, xt in xs]
    return [Case(row_name(tag, L["name"], v, ref), "layer", "upsample", tag, L["name"], v, ref, desc,
                 [lambda xo=xo, v=v: ours(xo, v) for xo, _ in xs], ref_fns, "fp32", None, nbytes,
                 "21x21 diagonal bilinear weights" if c == 21 else "diagonal bilinear weights")
            for v in ops.CONV_TRANSPOSE2D_VARIANTS]


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
    desc = f"up {_fmt(L['up'])} + 1x1 conv of feat {_fmt(L['feat'])} cropped at {o}"
    if any(map(ctx.wants, names)):
        ref_fns = [lambda ut=ut, ft=ft: ut + F.conv2d(ft, wt, bt)[:, :, o:o + h, o:o + w] for (_, ut), (_, ft) in sets]
        fused = [lambda uo=uo, fo=fo: ops.score_crop_add(uo, fo, wo, bo, o) for (uo, _), (fo, _) in sets]
        unfused = [lambda uo=uo, fo=fo: ops.crop_add(uo, ops.conv2d(fo, wo, bo), o) for (uo, _), (fo, _) in sets]
        note = "flops/bytes count the cropped window only (the fused kernel computes nothing else)"
        for v, fns in (("score_crop_add", fused), ("conv2d+crop_add", unfused)):
            cases.append(Case(row_name(tag, L["name"], v, ref), "layer", "skip", tag, L["name"], v, ref, desc,
                              fns, ref_fns, "fp32", flops, nbytes, note))
    if want_crop:
        scores = ctx.input_sets((n, k, hf, wf))
        pairs = list(zip(ups, scores))
        cases.append(Case(crop_name, "kernel", "skip", tag, crop_layer, "crop_add", ref,
                          f"up {_fmt(L['up'])} + score {_fmt((n, k, hf, wf))}[crop at {o}]",
                          [lambda uo=uo, so=so: ops.crop_add(uo, so, o) for (uo, _), (so, _) in pairs],
                          [lambda ut=ut, st=st: ut + st[:, :, o:o + h, o:o + w] for (_, ut), (_, st) in pairs],
                          "fp32", None, 4.0 * 3 * n * k * h * w))
    return cases


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
                                  f"scores {_fmt(shape)} over dim 1", [lambda xo=xo, v=v, f=fn: f(xo, v) for xo, _ in xs],
                                  ref_fns, "fp32", None, nbytes, "labels: int32 ours, int64 torch"
                                  if labels else ""))
    return cases


def preprocess_cases(ctx, tag, n, h, w):
    from .torch_fcn8s import preprocess as torch_preprocess

    ref = plain_ref(ctx)
    name = row_name(tag, "preprocess", "preprocess", ref)
    if not ctx.wants(name):
        return []
    imgs = [ctx.pair(ctx.rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)) for _ in range(ctx.cfg.sets)]
    return [Case(name, "kernel", "preprocess", tag, "preprocess", "preprocess", ref,
                 f"uint8 {n}x{h}x{w}x3 RGB -> float32 {n}x3x{h}x{w} BGR - mean",
                 [lambda io=io: ops.preprocess(io) for io, _ in imgs],
                 [lambda it=it: torch_preprocess(it) for _, it in imgs], "fp32", None,
                 float(n * h * w * 3 + 4 * n * 3 * h * w))]


def end_to_end_cases(ctx, tag, n, h, w, layers):
    """FCN-8s forward (preprocessed input -> scores) and infer (uint8 images
    in host memory -> labels in host memory) against the PyTorch FCN-8s with
    the same weights."""
    from .torch_fcn8s import TorchFCN8s, preprocess as torch_preprocess

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


def train_step_cases(ctx, tag, n, h, w, layers):
    """One training step of FCN-8s, forward + loss + backward + SGD update:
    fcn_cuda's Trainer.train_step (every step a kernel, fcn_cuda.backward)
    against PyTorch's (cross_entropy summed / N, loss.backward(),
    optimizer.step()) on the same weights and batch. The learning rate is 0:
    the update runs in full on both sides (the same arithmetic) but leaves
    the weights where they were, so the losses of steps repeated a different
    number of times on each side stay comparable; dropout is off on both
    sides so the two compute the same function."""
    from fcn_cuda.training import Trainer, TrainConfig

    from .torch_fcn8s import TorchFCN8s

    torch = ctx.torch
    cfg = ctx.cfg
    ref = plain_ref(ctx)
    name = row_name(tag, "train_step", "fcn_cuda", ref)
    if not ctx.wants(name):
        return []
    sd = random_state_dict(cfg)
    model = fcn_cuda.FCN("8s", cfg.classes, state_dict=sd)
    net = TorchFCN8s(sd, cfg.classes).to(ctx.device).train()
    del sd
    lr = 0.0
    trainer = Trainer(model, TrainConfig(lr=lr, dropout=False))
    decay = [p for k, p in net.named_parameters() if not k.endswith("bias") and not k.startswith("upscore")]
    biases = [p for k, p in net.named_parameters() if k.endswith("bias")]
    for k, p in net.named_parameters():
        p.requires_grad_(not k.startswith("upscore"))  # frozen, as in the reference and in Trainer
    opt = torch.optim.SGD([{"params": decay, "lr": lr, "weight_decay": 5e-4},
                           {"params": biases, "lr": 2 * lr, "weight_decay": 0.0}], lr=lr, momentum=0.99)
    be = ctx.be
    batches = []
    for _ in range(cfg.sets):
        x = ctx.rng.uniform(-120, 130, (n, 3, h, w)).astype(np.float32)
        labels = ctx.rng.integers(0, cfg.classes, (n, h, w)).astype(np.int32)
        labels[ctx.rng.random((n, h, w)) < 0.1] = 255
        batches.append((be.xp.asarray(x), be.xp.asarray(labels), torch.from_numpy(x).to(ctx.device),
                        torch.from_numpy(labels.astype(np.int64)).to(ctx.device)))

    def ours(x, labels):
        return np.array([trainer.train_step(x, labels)[0]])

    def theirs(xt, lt):
        with torch.inference_mode(False), torch.enable_grad():  # the runner times references without autograd
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(net(xt), lt, ignore_index=255, reduction="sum") / n
            loss.backward()
            opt.step()
        return loss.detach().reshape(1)

    flops = 3.0 * float(conv_flops(layers))  # forward + input gradient + weight gradient
    return [Case(name, "train_step", "train", tag, "train_step", "fcn_cuda", ref,
                 f"FCN-8s x {n}x3x{h}x{w}, loss summed / N, SGD momentum 0.99 at lr 0 (upsampling frozen)",
                 [lambda b=b: ours(b[0], b[1]) for b in batches], [lambda b=b: theirs(b[2], b[3]) for b in batches],
                 "fp32", flops, None, "output compared: the loss")]


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
        (f"conv2d({conv['name']})", f"x {_fmt(conv['x'])} w {_fmt(conv['w'])} pad 1 relu",
         lambda x, w, b: top.conv2d(x, w, b, [1, 1], [1, 1], True), lambda x, w, b: ops.conv2d(x, w, b, 1, 1, True),
         [ctx.randn(conv["x"]), cw, ctx.randn((conv["w"][0],), 0.1)]),
        (f"max_pool2d({pool['name']})", f"x {_fmt(pool['x'])} 2x2/2 ceil",
         lambda x: top.max_pool2d(x, [2, 2], [2, 2], True), lambda x: ops.max_pool2d(x, 2, 2, True),
         [ctx.randn(pool["x"])]),
        (f"conv_transpose2d({up2['name']})", f"x {_fmt(up2['x'])} bilinear k4 s2",
         lambda x, w: top.conv_transpose2d(x, w, None, [2, 2], [0, 0]), lambda x, w: ops.conv_transpose2d(x, w, None, 2),
         [ctx.randn(up2["x"], 3.0), b4]),
        (f"conv_transpose2d_window({up8['name']})", f"x {_fmt(up8['x'])} bilinear k16 s8, window {oh}x{ow} at {o8}",
         lambda x, w: top.conv_transpose2d_window(x, w, None, [8, 8], [oh, ow], [o8, o8]),
         lambda x, w: ops.conv_transpose2d_window(x, w, 8, oh, ow, o8), [ctx.randn(up8["x"], 3.0), b16]),
        (f"crop_add({skip['name']})", f"up {_fmt(skip['up'])} + score {_fmt((n_, k, *skip['feat'][2:]))}",
         lambda a, b: top.crop_add(a, b, [so, so]), lambda a, b: ops.crop_add(a, b, so),
         [ctx.randn(skip["up"]), ctx.randn((n_, k, *skip["feat"][2:]))]),
        (f"score_crop_add({skip['name']})", f"up {_fmt(skip['up'])} + 1x1 conv of feat {_fmt(skip['feat'])}",
         lambda u, f, w, b: top.score_crop_add(u, f, w, b, [so, so], 1.0),
         lambda u, f, w, b: ops.score_crop_add(u, f, w, b, so),
         [ctx.randn(skip["up"]), ctx.randn(skip["feat"]), ctx.randn((k, skip["feat"][1], 1, 1), 0.1),
          ctx.randn((k,), 0.1)]),
        ("softmax(scores)", f"scores {_fmt(scores_shape)}", lambda x: top.softmax(x), lambda x: ops.softmax(x),
         [ctx.randn(scores_shape, 3.0)]),
        ("argmax(scores)", f"scores {_fmt(scores_shape)}", lambda x: top.argmax(x), lambda x: ops.argmax(x),
         [ctx.randn(scores_shape, 3.0)]),
        (f"upsample_argmax({up8['name']})", f"x {_fmt(up8['x'])} k16 s8 -> labels {oh}x{ow}",
         lambda x, w: top.upsample_argmax(x, w, [8, 8], [oh, ow], [o8, o8]),
         lambda x, w: ops.upsample_argmax(x, w, 8, oh, ow, o8), [ctx.randn(up8["x"], 3.0), b16]),
        ("softmax_cross_entropy(scores)", f"scores {_fmt(scores_shape)}, loss and gradient",
         lambda x, l: top.softmax_cross_entropy(x, l, 255, False, None),
         # what the op runs: the loss left on the device (the public call also brings it to the host)
         lambda x, l: softmax_cross_entropy_on_device(x, l), [ctx.randn(scores_shape, 3.0), rng_labels()]),
        ("dropout(fc6)", f"x {_fmt(by['fc7']['x'])} p 0.5",
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


def case_groups(ctx, shape):
    """Lists of cases for one input shape, built lazily (one group's arrays
    live at a time). Cases within a group share reference timings."""
    n, h, w = shape
    cfg = ctx.cfg
    tag = shape_tag(shape)
    layers = fcn8s_layers(n, h, w, cfg.widths, cfg.fc, cfg.classes)
    builders = {"conv": conv_cases, "pool": pool_cases, "upsample": upsample_cases, "skip": skip_cases}
    for L in layers:
        yield lambda L=L: builders[L["type"]](ctx, tag, L)
    yield lambda: softmax_cases(ctx, tag, n, cfg.classes, h, w)
    yield lambda: preprocess_cases(ctx, tag, n, h, w)
    yield lambda: end_to_end_cases(ctx, tag, n, h, w, layers)
    yield lambda: train_step_cases(ctx, tag, n, h, w, layers)
    yield lambda: dispatch_cases(ctx, tag, n, h, w, layers)


# ------------------------------------------------------------------ dense CRF
def crf_input(rng, h, w, classes):
    """(img, probs): a synthetic shapes image and class probabilities like a model's: softmax of 3 on the
    true class plus smooth noise of scale 1."""
    import torch

    from fcn_cuda.data import SyntheticShapes

    img, labels = SyntheticShapes(1, (h, w), seed=int(rng.integers(1 << 30)))[0]
    coarse = torch.from_numpy(rng.standard_normal((1, classes, h // 8 + 2, w // 8 + 2)))
    logits = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)[0].numpy()
    logits[labels % classes, np.arange(h)[:, None], np.arange(w)] += 3.0
    p = np.exp(logits - logits.max(0))
    return np.ascontiguousarray(img), np.ascontiguousarray((p / p.sum(0)).astype(np.float32))


def crf_cases(ctx):
    """fcn_cuda.dense_crf against pydensecrf (pydensecrf2, one CPU core, its README parameters) on the
    same input, pydensecrf timed on the host clock whatever the backend."""
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError:
        for h, w, c, it, variants in ctx.cfg.crf:
            for v in variants:
                ctx.skip(row_name(f"{h}x{w}x{c}cls", f"dense_crf-{it}it", v, "pydensecrf"),
                         "pydensecrf2 is not installed (pip install -e '.[test]')")
        return []

    r = PYDENSECRF_README  # the parameters on both sides

    def reference(img, probs, it):
        c, h, w = probs.shape
        d = dcrf.DenseCRF2D(w, h, c)
        d.setUnaryEnergy(unary_from_softmax(probs))
        d.addPairwiseGaussian(sxy=r["gaussian_sxy"], compat=r["gaussian_compat"])
        d.addPairwiseBilateral(sxy=r["bilateral_sxy"], srgb=r["bilateral_srgb"], rgbim=img,
                               compat=r["bilateral_compat"])
        return np.array(d.inference(it)).reshape(c, h, w)

    cases = []
    for h, w, c, it, variants in ctx.cfg.crf:
        tag, layer = f"{h}x{w}x{c}cls", f"dense_crf-{it}it"
        names = [row_name(tag, layer, v, "pydensecrf") for v in variants]
        if not any(map(ctx.wants, names)):
            continue
        inputs = [crf_input(ctx.rng, h, w, c) for _ in range(ctx.cfg.sets)]
        ref_fns = [lambda img=img, p=p, it=it: reference(img, p, it) for img, p in inputs]
        dev = [(ctx.be.xp.asarray(img), ctx.be.xp.asarray(p)) for img, p in inputs]
        for v, name in zip(variants, names):
            cases.append(Case(name, "kernel", "crf", tag, layer, v, "pydensecrf", f"{h}x{w} RGB, {c} classes, "
                              f"{it} iterations, pydensecrf's README parameters",
                              [lambda img=img, p=p, it=it, v=v: fcn_cuda.dense_crf(img, p, it, variant=v)
                               for img, p in dev],
                              ref_fns, "fp32", None, float(h * w * (3 + 8 * c)),
                              "pydensecrf2 on one CPU core; bytes: img, probs and Q once (a floor, not the "
                              "lattice's traffic); rel_l2 of Q", ref_on_host=True))
    return cases


# ------------------------------------------------------------------ comparing
def compare(ours, ref):
    """{'rel_l2': ..} for float outputs, {'label_mismatch': ..} for labels; tuples compared part by part."""
    if isinstance(ours, tuple):
        err = {}
        for o, r in zip(ours, ref):
            for key, v in compare(o, r).items():
                err[key] = max(err.get(key, 0.0), v)
        return err
    o, r = np.asarray(ours).reshape(-1), np.asarray(ref).reshape(-1)
    if o.size != r.size:
        raise AssertionError(f"ours has {o.size} values, the reference {r.size}")
    if np.issubdtype(o.dtype, np.integer):
        return {"label_mismatch": float(np.mean(o.astype(np.int64) != r.astype(np.int64)))}
    o, r = o.astype(np.float64), r.astype(np.float64)
    finite = np.isfinite(o)
    if not finite.all():  # JSON has no NaN: report how much of the output is not finite instead
        return {"nonfinite": float(np.mean(~finite))}
    return {"rel_l2": float(np.linalg.norm(o - r) / max(np.linalg.norm(r), 1e-30))}


def require_finite(out, what):
    """Raises when an output (or a part of a tuple) holds a NaN or an infinity."""
    for part in out if isinstance(out, tuple) else (out,):
        a = np.asarray(part)
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise AssertionError(f"{what} is not finite: {np.mean(~np.isfinite(a)):.3g} of its values are NaN or inf")


def recheck(before, after, ref):
    """The check of a timed row: fcn_cuda's output on input set 0 before the
    timing loop and again after it, each against the reference. fcn_cuda is
    deterministic, so the second must be the first's bits: a difference means
    that runs back to back raced or corrupted state. A NaN or an infinity in
    any output fails the row. Returns the worse of the two errors."""
    require_finite(ref, "the reference's output")
    require_finite(before, "the output")
    require_finite(after, "the output after the timing loop")
    pairs = zip(before, after) if isinstance(before, tuple) else ((before, after),)
    for b, a in pairs:
        if not np.array_equal(np.asarray(b), np.asarray(a)):
            differ = float(np.mean(np.asarray(b) != np.asarray(a)))
            raise AssertionError(f"the output after the timing loop differs from the one before it "
                                 f"({differ:.3g} of its values): runs back to back changed the result")
    err = compare(before, ref)
    for key, v in compare(after, ref).items():
        err[key] = max(err.get(key, 0.0), v)
    return err


def make_row(case, t_ours: Timing, t_ref: Timing, err, peaks):
    ours_ms, ref_ms = t_ours.median_ms, t_ref.median_ms

    def rate(ms):
        return ((case.flops / ms / 1e9) if case.flops else None, (case.bytes / ms / 1e6) if case.bytes else None)

    tflops, gbps = rate(ours_ms)
    ref_tflops, ref_gbps = rate(ref_ms)
    basis = "+".join(b for b, v in (("compute", case.flops), ("memory", case.bytes)) if v)
    return {
        "name": case.name, "kind": case.kind, "group": case.group, "config": case.config, "layer": case.layer,
        "ours": case.ours, "ref": case.ref, "shape": case.shape,
        "ours_ms": ours_ms, "ref_ms": ref_ms, "ratio": ref_ms / ours_ms,
        "ours_iqr_ms": t_ours.iqr_ms, "ref_iqr_ms": t_ref.iqr_ms, "ours_min_ms": t_ours.min_ms,
        "ref_min_ms": t_ref.min_ms, "ours_runs": t_ours.n, "ref_runs": t_ref.n,
        "flops": case.flops, "bytes": case.bytes, "tflops": tflops, "gbps": gbps,
        "ref_tflops": ref_tflops, "ref_gbps": ref_gbps,
        "pct_of_peak": pct_of_peak(ours_ms, case.flops, case.bytes, peaks, "fp32"),
        "ref_pct_of_peak": pct_of_peak(ref_ms, case.flops, case.bytes, peaks, case.ref_precision),
        "peak_basis": f"{basis} (ours fp32, ref {case.ref_precision})" if basis else None,
        "ref_precision": case.ref_precision, "err": err, "note": case.note,
    }


def run_group(ctx, cases, peaks, rows):
    """Times each wanted case; within a group each side is timed once per
    (input, layer, variant) and shared by the rows that compare it."""
    ours_cache, ref_cache = {}, {}
    for case in cases:
        if not ctx.wants(case.name):
            continue
        try:
            if case.ours_key not in ours_cache:
                before = ctx.ours_numpy(case.ours_fns[0]())
                t_ours = ctx.time_ours(case.ours_fns)
                after = ctx.ours_numpy(case.ours_fns[0]())
                ours_cache[case.ours_key] = (t_ours, before, after)
            if case.ref_key not in ref_cache:
                t_ref = ctx.time_ref(case.ref_fns, case.ref_precision, case.ref_on_host)
                with ctx.ref_mode(case.ref_precision):
                    ref_out = ctx.ref_numpy(case.ref_fns[0]())
                ref_cache[case.ref_key] = (t_ref, ref_out)
            t_ours, before, after = ours_cache[case.ours_key]
            t_ref, ref_out = ref_cache[case.ref_key]
            err = recheck(before, after, ref_out)
        except Exception as e:
            if "compile" in case.ref:  # a failing torch.compile is the reference's problem: noted, not fatal
                ctx.skip(case.name, f"torch.compile failed: {type(e).__name__}: {str(e)[:300]}")
                continue
            ctx.failed.append({"name": case.name, "error": f"{type(e).__name__}: {e}"})
            ctx.log(f"  FAILED {case.name}: {type(e).__name__}: {e}")
            ctx.log(traceback.format_exc())
            continue
        row = make_row(case, t_ours, t_ref, err, peaks)
        rows.append(row)
        ctx.log(format_row(row))


def format_row(row):
    rate = (f"{row['tflops']:.3g} TFLOP/s" if row["tflops"] is not None else f"{row['gbps']:.3g} GB/s")
    err = ", ".join(f"{k} {v:.1e}" for k, v in row["err"].items())
    return (f"  {row['name']:60s} ours {row['ours_ms']:9.3f} ms  ref {row['ref_ms']:9.3f} ms  "
            f"x{row['ratio']:6.2f}  {rate:>16s}  {row['pct_of_peak']:5.1f}% peak  {err}")


def run(ctx):
    """Measures the peaks and every wanted row; returns (peaks, rows)."""
    ctx.log(f"measuring peaks ({'GPU' if ctx.gpu else 'CPU, host'}) ...")
    peaks = measure_peaks(ctx)
    ctx.log("  " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in peaks.items()))
    rows = []
    for shape in ctx.cfg.shapes:
        ctx.log(f"input {shape_tag(shape)} (N x H x W)")
        for build in case_groups(ctx, shape):
            cases = build()
            if cases:
                run_group(ctx, cases, peaks, rows)
            del cases
            ctx.free()
    cases = crf_cases(ctx)
    if cases:
        ctx.log("dense CRF (H x W x classes)")
        run_group(ctx, cases, peaks, rows)
    return peaks, rows
