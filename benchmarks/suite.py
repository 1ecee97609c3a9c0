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

import traceback
from dataclasses import dataclass
from typing import Optional

import numpy as np

from fcn_cuda.model import VGG16_BLOCKS

from .cases.conv2d import conv_cases
from .cases.crf import crf_cases
from .cases.crop import skip_cases
from .cases.dispatch import dispatch_cases
from .cases.model import end_to_end_cases, fcn8s_layers
from .cases.pool import pool_cases
from .cases.preprocess import preprocess_cases
from .cases.softmax import softmax_cases
from .cases.training import train_step_cases
from .cases.upsample import upsample_cases
from .timing import Timing, time_device, time_host

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
