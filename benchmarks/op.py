"""python -m benchmarks.op OP [--variant V ...] [--shape S ...] [--backend host|cuda]

A kernel author's loop for one op: every variant (or those named) runs on the
same inputs, is checked against PyTorch in float64 at its precision's
tolerance (fp32 1e-5, TF32 2e-3, bf16 1e-2 relative L2; labels exactly,
except where the float64 top two classes lie within fp32 rounding), and is
timed beside the others and beside PyTorch's own fp32 op (cuDNN on a GPU,
torch's CPU kernels on the host). The output is checked again after the
timing loop (the same bits). Exit status 1 when any check fails.

On the host, fcn_cuda runs under the CUDA emulation: its times are the
emulator's CPU time, not GPU time, and the output says so.

Each op takes --shape as comma-separated integers (repeat --shape for a
sweep; `python -m benchmarks.op --list` prints the ops, their shapes and
defaults). Examples:

    python -m benchmarks.op conv2d --shape 1,64,64,64,64,3,3,1
    python -m benchmarks.op conv2d --variant igemm --variant direct --shape 1,3,5,5,8,3,3,100
    python -m benchmarks.op conv2d --sweep
    python -m benchmarks.op upsample_argmax --backend cuda
    python -m benchmarks.op train_step --threads 2 --profile
"""

import argparse
import collections
import functools
import inspect
import sys
import time
from dataclasses import dataclass
from typing import Callable, Tuple

import numpy as np

import fcn_cuda
from fcn_cuda import ops
from fcn_cuda.ops.conv2d import conv2d_default_variant, conv2d_tile_use, conv_out

from .cases import TOLERANCE
from .cases.conv2d import conv_cases
from .cases.conv2d_backward import grad_weight_cases
from .cases.crop import skip_cases
from .cases.head import head_cases
from .cases.pool import pool_cases
from .cases.preprocess import preprocess_cases
from .cases.softmax import softmax_cases
from .cases.training import bundled_step_cases
from .cases.upsample import upsample_cases
from .context import Context
from .suite import Config, recheck

HOST_NOTE = ("host backend: fcn_cuda runs under the CUDA emulation; its times are the emulator's CPU time, "
             "not GPU time (PyTorch: its CPU kernels)")


@dataclass(frozen=True)
class Op:
    fields: str                   # what --shape holds
    defaults: Tuple[tuple, ...]   # the shapes run without --shape
    build: Callable               # (ctx, tag, shape) -> [Case]
    about: Callable = None        # shape -> a line on what fcn_cuda will pick (or None)
    sweep: Tuple[tuple, ...] = ()  # the shapes --sweep runs


def _conv(ctx, tag, shape):
    n, c, h, w, k, r, s, pad = shape
    return conv_cases(ctx, tag, dict(type="conv", name="conv2d", x=(n, c, h, w), w=(k, c, r, s), pad=pad, relu=True))


def _conv_about(shape):
    n, c, h, w, k, r, s, pad = shape
    m, crs = n * conv_out(h, r, 1, pad) * conv_out(w, s, 1, pad), c * r * s
    return (f"igemm tile use {conv2d_tile_use(m, k, crs):.2f}; default variant here: "
            f"{conv2d_default_variant(m, k, crs)}")


def _grad_weight(ctx, tag, shape):
    n, c, h, w, k, r, s, pad = shape
    return grad_weight_cases(ctx, tag, dict(name="conv2d_grad_weight", x=(n, c, h, w), w=(k, c, r, s), pad=pad))


def _pool(ctx, tag, shape):
    return pool_cases(ctx, tag, dict(name="max_pool2d", x=shape))


def _transpose(ctx, tag, shape):
    n, c, h, w, k, s = shape
    return upsample_cases(ctx, tag, dict(name="conv_transpose2d", x=(n, c, h, w), k=k, stride=s, window=None))


def _transpose_window(ctx, tag, shape):
    n, c, h, w, k, s, oh, ow, o = shape
    return upsample_cases(ctx, tag, dict(name="conv_transpose2d_window", x=(n, c, h, w), k=k, stride=s,
                                         window=(oh, ow, o)))


def _head(ctx, tag, shape):
    n, c, h, w, k, s, oh, ow, o = shape
    return head_cases(ctx, tag, dict(name="upsample_argmax", x=(n, c, h, w), k=k, stride=s, window=(oh, ow, o)))


def _skip(layer):
    def build(ctx, tag, shape):
        n, k, h, w, c, hf, wf, o = shape
        cases = skip_cases(ctx, tag, dict(name="score_crop_add", up=(n, k, h, w), feat=(n, c, hf, wf), offset=o))
        return [case for case in cases if case.layer.startswith(layer)]
    return build


def _softmax(op):
    def build(ctx, tag, shape):
        n, c, h, w = shape
        return [case for case in softmax_cases(ctx, tag, n, c, h, w) if case.layer == op]
    return build


def _preprocess(ctx, tag, shape):
    return preprocess_cases(ctx, tag, *shape)


def _train_step(ctx, tag, shape):
    return bundled_step_cases(ctx, tag, *shape)


# FCN-like shapes across igemm's tile use: the evidence behind the host's
# default-variant rule (ops.conv2d.conv2d_default_variant).
CONV2D_SWEEP = (
    (1, 3, 5, 5, 8, 3, 3, 100),      # conv1_1 on a tiny image: mostly padding, 8 channels
    (1, 3, 64, 64, 64, 3, 3, 1),
    (1, 1, 64, 64, 64, 3, 3, 1),
    (1, 64, 32, 32, 64, 3, 3, 1),
    (1, 64, 64, 64, 1, 3, 3, 1),     # one output channel
    (1, 64, 16, 16, 21, 1, 1, 0),    # score layer
    (2, 64, 3, 3, 64, 1, 1, 0),
    (1, 512, 8, 8, 512, 7, 7, 0),    # fc6 on a 2x2 output
    (1, 4096, 4, 4, 21, 1, 1, 0),    # score_fr on 16 pixels
)

# The bundled model's 3x3 layers trained at 96x96 (VGG16 at 1/8 width, FCN's pad 100: conv1 maps 294x294), batch 4.
GRAD_WEIGHT_SWEEP = tuple((4, c, h, h, k, 3, 3, 1) for c, k, h in ((8, 8, 294), (8, 16, 147), (16, 16, 147),
                                                                   (16, 32, 74), (32, 32, 74), (64, 64, 37)))

OPS = {
    # a VGG layer, 64 -> 64 channels at 64x64
    "conv2d": Op("N,C,H,W,K,R,S,PAD", ((1, 64, 64, 64, 64, 3, 3, 1),), _conv, _conv_about, sweep=CONV2D_SWEEP),
    # the bundled model's conv1_2 trained at 96x96 (conv1 maps 294x294 with pad 100), batch 4
    "conv2d_grad_weight": Op("N,C,H,W,K,R,S,PAD", ((4, 8, 294, 294, 8, 3, 3, 1),), _grad_weight,
                             sweep=GRAD_WEIGHT_SWEEP),
    "max_pool2d": Op("N,C,H,W (2x2 / stride 2, ceil mode)", ((1, 64, 128, 128),), _pool),
    "conv_transpose2d": Op("N,C,H,W,K,STRIDE (bilinear weights)", ((1, 21, 32, 32, 4, 2),), _transpose),
    "conv_transpose2d_window": Op("N,C,H,W,K,STRIDE,OUT_H,OUT_W,OFFSET (bilinear weights)",
                                  ((1, 21, 63, 63, 16, 8, 500, 500, 6),), _transpose_window),
    # upscore8 into a 500 x 500 window: offset 6 on a 63 x 63 map, and FCN-8s' own (offset 31, 70 x 70)
    "upsample_argmax": Op("N,C,H,W,K,STRIDE,OUT_H,OUT_W,OFFSET (bilinear weights)",
                          ((1, 21, 63, 63, 16, 8, 500, 500, 6), (1, 21, 70, 70, 16, 8, 500, 500, 31)), _head),
    "score_crop_add": Op("N,K,H,W,C,HF,WF,OFFSET (up N x K x H x W; feat N x C x HF x WF)",
                         ((1, 21, 34, 34, 64, 40, 40, 5),), _skip("score_crop_add")),
    "crop_add": Op("N,K,H,W,C,HF,WF,OFFSET (the score map is N x K x HF x WF; C unused)",
                   ((1, 21, 34, 34, 64, 40, 40, 5),), _skip("crop_add")),
    "softmax": Op("N,CLASSES,H,W", ((1, 21, 128, 128),), _softmax("softmax")),
    "argmax": Op("N,CLASSES,H,W", ((1, 21, 128, 128),), _softmax("argmax")),
    "softmax_argmax": Op("N,CLASSES,H,W", ((1, 21, 128, 128),), _softmax("softmax_argmax")),
    "preprocess": Op("N,H,W", ((1, 128, 128),), _preprocess),
    # the bundled recipe's batch: 4 synthetic 160 x 160 images
    "train_step": Op("N,SIZE (the bundled model's recipe)", ((4, 160),), _train_step),
}


def parse_shape(op, text):
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape {text!r}: comma-separated integers, for {op}: {OPS[op].fields}")
    names = OPS[op].fields.split(" ")[0].split(",")
    if len(shape) != len(names):
        raise argparse.ArgumentTypeError(f"--shape {text!r}: {op} takes {len(names)} numbers: {OPS[op].fields}")
    for name, v in zip(names, shape):
        if v < (0 if name in ("PAD", "OFFSET") else 1):
            raise argparse.ArgumentTypeError(f"--shape {text!r}: {name} must be at least "
                                             f"{0 if name in ('PAD', 'OFFSET') else 1}, not {v}")
    return shape


def check(out, ref, tol):
    """(passed, what was measured): floats by relative L2 error against tol,
    labels exactly wherever the reference is sure (label >= 0)."""
    if isinstance(out, tuple):
        results = [check(o, r, tol) for o, r in zip(out, ref)]
        return all(ok for ok, _ in results), "; ".join(text for _, text in results)
    o, r = np.asarray(out), np.asarray(ref)
    if o.shape != r.shape:
        return False, f"shape {o.shape} != the reference's {r.shape}"
    if np.issubdtype(o.dtype, np.integer):
        sure = r >= 0
        wrong = int(np.count_nonzero(o[sure] != r[sure]))
        return wrong == 0, f"labels {wrong} of {int(sure.sum())} differ ({r.size - int(sure.sum())} near-ties left out)"
    o, r = o.astype(np.float64), r.astype(np.float64)
    rel = float(np.linalg.norm(o - r) / max(np.linalg.norm(r), 1e-30))
    return rel <= tol, f"rel_l2 {rel:.1e} (tolerance {tol:.0e})"


def profile(fn):
    """Seconds per fcn_cuda.ops function within one call of fn, largest first."""
    spent = collections.Counter()
    originals = {name: getattr(ops, name) for name in ops.__all__ if inspect.isfunction(getattr(ops, name))}

    def timed(name, f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0
        return wrapper

    try:
        for name, f in originals.items():
            setattr(ops, name, timed(name, f))
        fn()
    finally:
        for name, f in originals.items():
            setattr(ops, name, f)
    return spent.most_common()


def rates(case, ms):
    parts = []
    if case.flops:
        parts.append(f"{case.flops / ms / 1e6:9.3g} GFLOP/s")
    if case.bytes:
        parts.append(f"{case.bytes / ms / 1e6:9.3g} GB/s")
    return "  ".join(parts)


def run_op(ctx, op, shapes, variants, log=print, by_op=False):
    """Checks and times the op's variants at each shape (by_op: then the time
    each fcn_cuda op takes within one call); returns the number of failed checks."""
    failed = 0
    for shape in shapes:
        tag = "x".join(map(str, shape))
        cases = OPS[op].build(ctx, tag, shape)
        known = sorted({case.ours for case in cases})
        unknown = [v for v in variants if v not in known]
        if unknown:
            raise SystemExit(f"{op} at {tag} has no variant {', '.join(unknown)} (it has: {', '.join(known)})")
        cases = [case for case in cases if not variants or case.ours in variants]
        log(f"{op}: {cases[0].shape}")
        first = cases[0]
        work = [f"{v:.4g} {unit}" for v, unit in ((first.flops, "FLOP"), (first.bytes, "bytes moved at least")) if v]
        if work:
            log("  " + ", ".join(work))
        if OPS[op].about:
            log(f"  {OPS[op].about(shape)}")
        refs, refs64, done = {}, {}, set()
        for case in cases:
            if case.ours in done:
                continue
            done.add(case.ours)
            precision = ops.CONV2D_PRECISION.get(case.ours, "fp32")  # conv2d's reduced-precision variants
            try:
                if id(case.ref64) not in refs64:  # variants that share a reference share its float64 run
                    with ctx.torch.inference_mode():
                        refs64[id(case.ref64)] = ctx.ref_numpy(case.ref64())
                ref64 = refs64[id(case.ref64)]
                before = ctx.ours_numpy(case.ours_fns[0]())
                timing = ctx.time_ours(case.ours_fns)
                after = ctx.ours_numpy(case.ours_fns[0]())
                recheck(before, after, ref64)
                ok, measured = check(before, ref64, TOLERANCE[precision])
            except Exception as e:  # a crash or a result that changed in the loop is a failed check
                ok, measured, timing = False, f"{type(e).__name__}: {e}", None
            failed += not ok
            ms, rate = (f"{timing.median_ms:10.3f} ms", rates(case, timing.median_ms)) if timing else ("-", "")
            log(f"  {case.ours:18s} {'ok  ' if ok else 'FAIL'} {ms:>13s}  {rate:40s}  {measured}")
            if by_op:
                for name, seconds in profile(case.ours_fns[0]):
                    log(f"      {name:32s} {seconds * 1e3:10.3f} ms")
            for c in cases:
                if c.ours == case.ours and c.ref_key not in refs:
                    refs[c.ref_key] = (c, ctx.time_ref(c.ref_fns, c.ref_precision, c.ref_on_host))
        for c, timing in refs.values():
            log(f"  {c.ref + ' (' + c.ref_precision + ')':18s} ref  {timing.median_ms:10.3f} ms  "
                f"{rates(c, timing.median_ms):40s}  PyTorch, the reference timed beside them")
        ctx.free()
    return failed


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.op", description=__doc__.splitlines()[0],
                                 epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("op", nargs="?", choices=sorted(OPS), metavar="OP", help="the op: " + ", ".join(sorted(OPS)))
    ap.add_argument("--variant", action="append", default=[], help="only this variant (repeatable; default: all)")
    ap.add_argument("--shape", action="append", default=[], help="the op's shape (repeatable: a sweep)")
    ap.add_argument("--backend", choices=("host", "cuda"), help="default: fcn_cuda's choice (cuda where a GPU is)")
    ap.add_argument("--repeats", type=int, help="timed runs per variant (default: host 5, GPU 25)")
    ap.add_argument("--threads", type=int, default=1,
                    help="host only: emulator workers and torch CPU threads, the same for both sides (default 1)")
    ap.add_argument("--sweep", action="store_true",
                    help="run the op's sweep of shapes, besides any --shape (conv2d: FCN-like shapes across igemm's "
                         "tile use; conv2d_grad_weight: the bundled model's layers)")
    ap.add_argument("--profile", action="store_true",
                    help="also time each fcn_cuda op within one call of each variant (train_step: the step by op)")
    ap.add_argument("--list", action="store_true", help="print the ops, their --shape fields and defaults")
    args = ap.parse_args(argv)
    if args.list:
        for name, spec in sorted(OPS.items()):
            print(f"{name:24s} --shape {spec.fields}; default {' '.join(','.join(map(str, s)) for s in spec.defaults)}")
        return 0
    if args.op is None:
        ap.error("name an op (--list prints them)")
    try:
        shapes = [parse_shape(args.op, s) for s in args.shape]
    except argparse.ArgumentTypeError as e:
        ap.error(str(e))
    if args.sweep:
        if not OPS[args.op].sweep:
            ap.error(f"{args.op} has no sweep")
        shapes += OPS[args.op].sweep
    shapes = shapes or list(OPS[args.op].defaults)
    if args.threads < 1:
        ap.error("--threads must be at least 1")
    backend = args.backend or fcn_cuda.backend()
    gpu = backend == "cuda"
    repeats = args.repeats if args.repeats is not None else (25 if gpu else 5)
    if repeats < 1:
        ap.error("--repeats must be at least 1")
    cfg = Config("op", (), (), 0, "one op's variants", repeats=repeats, warmup=3 if gpu else 1, sets=2 if gpu else 1)
    ctx = Context(backend, cfg, threads=args.threads)
    try:
        if gpu:
            print(f"GPU: {ctx.torch.cuda.get_device_name()}; CUDA events, L2 flushed before each run, "
                  f"median of {repeats}")
        else:
            print(f"*** {HOST_NOTE} ***")
            print(f"time.perf_counter, median of {repeats} after a warm-up, {args.threads} emulator worker(s) / "
                  f"torch thread(s)")
        failed = run_op(ctx, args.op, shapes, args.variant, by_op=args.profile)
    finally:
        ctx.close()
    print(f"{failed} check(s) failed" if failed else "every check passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
