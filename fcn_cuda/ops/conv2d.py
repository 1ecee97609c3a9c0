"""Convolution forward (csrc/kernels/conv2d.cuh, conv2d_small_c.cuh, conv2d_mma.cuh,
conv2d_wgmma.cuh): conv2d and its variants, the fused conv2d_relu_maxpool, bf16 weights, and the policy that
picks a variant and a depth split when the caller does not.
"""

import numpy as np

from .. import _backend
from .. import _validate as V

__all__ = ["conv2d", "CONV2D_VARIANTS", "CONV2D_PRECISION", "CONV2D_SPLIT_VARIANTS", "conv2d_variants", "Bf16Weights",
           "to_bf16_weights", "conv2d_relu_maxpool", "CONV2D_RELU_MAXPOOL_VARIANTS", "WGMMA_VARIANTS"]

CONV2D_VARIANTS = ("direct", "igemm", "small_c", "igemm_tf32", "igemm_bf16", "mma_tf32", "mma_bf16", "wgmma_tf32",
                   "wgmma_bf16")
# The math each variant does (docs/design.md gives each its tolerance).
CONV2D_PRECISION = {"direct": "fp32", "igemm": "fp32", "small_c": "fp32", "igemm_tf32": "tf32", "igemm_bf16": "bf16",
                    "mma_tf32": "tf32", "mma_bf16": "bf16", "wgmma_tf32": "tf32", "wgmma_bf16": "bf16"}
SMALL_C_MAX_TAPS = 64  # small_c keeps a pixel's C*R*S taps in registers
# The variants that can split their depth (split-K, conv2d's `splits`).
CONV2D_SPLIT_VARIANTS = ("igemm", "igemm_tf32", "igemm_bf16", "mma_tf32", "mma_bf16", "wgmma_tf32", "wgmma_bf16")
CONV2D_RELU_MAXPOOL_VARIANTS = ("igemm", "igemm_tf32", "igemm_bf16", "mma_tf32", "mma_bf16", "wgmma_tf32",
                                "wgmma_bf16")
# The Hopper rung (csrc/kernels/conv2d_wgmma.cuh): sm_90a's wgmma fed by TMA,
# stride 1 only (FCN's convolutions), x's width a multiple of 4 (TMA's
# 16-byte row strides); on the cuda backend an sm_90 GPU.
WGMMA_VARIANTS = ("wgmma_tf32", "wgmma_bf16")
WGMMA_CHANNELS = 32  # input channels per pipeline stage: C is padded up to it


def conv2d_variants(w_shape, precision=None, stride=None):
    """The variants that take filters of shape K x C x R x S (of one
    precision, if given) at `stride`; None: at every stride, which leaves
    out the stride-1 wgmma variants."""
    _, c, r, s = V.shape4(w_shape, "w_shape", "(K, C, R, S)")
    if precision is not None:
        V.choice(precision, "precision", set(CONV2D_PRECISION.values()))
    unit = stride is not None and V.pair(stride, "stride", minimum=1) == (1, 1)
    return tuple(v for v in CONV2D_VARIANTS if (v != "small_c" or c * r * s <= SMALL_C_MAX_TAPS)
                 and (v not in WGMMA_VARIANTS or unit) and precision in (None, CONV2D_PRECISION[v]))


def wgmma_refusal(x_shape, stride, backend=None):
    """Why the wgmma variants cannot run this convolution (input N x C x H x W,
    `stride`) on `backend` (None: the active one), or None when they can."""
    be = backend or _backend.active()
    if V.pair(stride, "stride", minimum=1) != (1, 1):
        return f"they compute stride 1 only (FCN's convolutions), got stride {stride}"
    if x_shape[3] % 4:
        return (f"TMA needs x's rows to be a multiple of 16 bytes, i.e. its width a multiple of 4, got "
                f"{x_shape[3]}")
    cc = be.compute_capability()
    if cc is not None and cc != 90:
        return (f"they need an sm_90 GPU (wgmma and TMA, compiled for sm_90a); this device has compute "
                f"capability {cc // 10}.{cc % 10}")
    if cc is not None and not be.wgmma_code_loaded():
        return ("this build's code for the GPU is plain sm_90, where the wgmma kernels are traps: rebuild with "
                "FCN_CUDA_ARCH naming 90a (the default does)")
    return None


def conv2d_wgmma_wins(x_shape, w_shape, stride, padding, backend=None):
    """Whether conv2d's default at precision tf32 / bf16 is wgmma_* rather
    than the Ampere rung's mma_*: on an sm_90 GPU, where wgmma applies
    (wgmma_refusal) and its 128 x 128 tiles fill the GPU (at least 132, an
    H100's SMs: fewer would idle SMs, and its split is not automatic). Why:
    docs/performance.md, rung 10; a prediction, not yet measured."""
    be = backend or _backend.active()
    n, _, h, wd = x_shape
    k, _, r, s = w_shape
    ph, pw = V.pair(padding, "padding", minimum=0)
    p, q = h + 2 * ph - r + 1, wd + 2 * pw - s + 1
    tiles = n * -(-p // 16) * -(-q // 8) * -(-k // 128)
    return be.name == "cuda" and wgmma_refusal(x_shape, stride, be) is None and tiles >= 132


def conv_out(size, k, s, p):
    """A convolution's output size along one axis: input `size`, kernel k,
    stride s, padding p (negative when no window fits)."""
    return (size + 2 * p - k) // s + 1


# ---- the policy: what conv2d runs when the caller does not say


def conv2d_tile_use(m, k, crs):
    """The useful fraction of the work igemm does in its tiles (GEMM rows
    m = N*P*Q, columns k = K, depth crs = C*R*S): 64 x 64 x 16, or for
    K <= 32 and K <= 16 the narrower 128 x 32 and 256 x 16 its launcher picks."""
    padded = lambda v, tile: -(-v // tile) * tile
    tile_n = 16 if k <= 16 else 32 if k <= 32 else 64
    return m * k * crs / (padded(m, 4096 // tile_n) * padded(k, tile_n) * padded(crs, 16))


def conv2d_mma_tile(m, k, splits=1):
    """The block tile (pixels = channels) the mma variants' launcher picks for
    GEMM rows m = N*P*Q, columns k = K and `splits` depth splits: 128 where
    that still gives 132 blocks (an H100's SMs) and pads k no further than
    64 does, else 64 (csrc/ops/conv2d.cu, launch_mma). Either tile sums
    each output in the same order: the bits do not depend on it."""
    k_tiles = -(-k // 128)
    return 128 if -(-m // 128) * k_tiles * splits >= 132 and 2 * k_tiles == -(-k // 64) else 64


def conv2d_default_variant(m, k, crs, backend=None, precision="fp32"):
    """The variant conv2d runs for variant=None (GEMM rows m = N*P*Q,
    columns k = K, depth crs = C*R*S) on `backend` ('host' or 'cuda'; None:
    the active one) at `precision` (conv2d's precision=; CONV2D_PRECISION).

    fp32: small_c for shallow filters (conv1_1's 27 taps;
    docs/performance.md, rung 2); else igemm; on the host, direct
    where most of igemm's tile work would be zero-fill: the emulator runs
    direct faster below about 20% tile use (`python -m benchmarks.op conv2d
    --sweep`). Not yet measured on a GPU.
    tf32 / bf16: on the GPU mma_tf32 / mma_bf16, which docs/performance.md
    (rung 9) predicts ahead of the WMMA rung's igemm_tf32 / igemm_bf16 on
    every shape (larger tiles, cp.async stages, conflict-free ldmatrix; not
    yet measured); on the host igemm_tf32 / igemm_bf16, which the emulator
    runs 1.5-4x faster on every shape of that sweep (each lane of an
    emulated mma.sync or ldmatrix waits for its whole warp)."""
    V.choice(precision, "precision", set(CONV2D_PRECISION.values()))
    if precision != "fp32":
        return ("igemm_" if (backend or _backend.active().name) == "host" else "mma_") + precision
    if crs <= SMALL_C_MAX_TAPS // 2:
        return "small_c"
    if (backend or _backend.active().name) == "host" and conv2d_tile_use(m, k, crs) < 0.2:
        return "direct"
    return "igemm"


def conv2d_auto_splits(m, k, crs):
    """splits=None's depth split for an igemm variant (GEMM rows m = N*P*Q,
    columns k = K, depth crs = C*R*S): none where there are at least
    2 x 132 (an H100's SMs) 64 x 64 tiles or the depth is under 4096; else
    enough splits for about 1024 blocks, each at least 64 stages (1024 taps)
    deep, as conv2d_grad_weight's split rule does. At 500 x 500, batch 1:
    fc6, fc7 and conv5_x get 4 splits, conv1-conv4 none. Why, and what it
    should give on a GPU (not yet measured): docs/performance.md, rung 6.
    The rule reads the shape only, never the machine or backend, so the
    bits of a result never depend on where it ran."""
    tiles = -(-m // 64) * -(-k // 64)
    if tiles >= 2 * 132 or crs < 4096:
        return 1
    return min(-(-1024 // tiles), -(-crs // 16) // 64)


def conv2d_relu_maxpool_variant(x_shape, w_shape, padding):
    """The variant conv2d picks by default for this stride-1 layer when
    conv2d_relu_maxpool has it and conv2d would not split its depth, else
    None: FCN's forward fuses exactly then, so its output stays that of
    conv2d + max_pool2d bit for bit (a split sums in another order)."""
    n, _, h, wd = x_shape
    k, c, r, s = w_shape
    m = n * (h + 2 * padding - r + 1) * (wd + 2 * padding - s + 1)
    variant = conv2d_default_variant(m, k, c * r * s)
    if variant not in CONV2D_RELU_MAXPOOL_VARIANTS or conv2d_auto_splits(m, k, c * r * s) > 1:
        return None
    return variant


# ---- bf16 weights


class Bf16Weights:
    """Convolution filters stored in bfloat16, half the bytes of float32, for
    conv2d / conv2d_relu_maxpool's igemm_bf16 and mma_bf16 (their bf16-weights mode).

    NumPy and CuPy have no bfloat16 dtype, so ``bits`` holds each weight's
    bf16 bit pattern (the upper 16 bits of the float32 it stands for) as a
    K x C x R x S uint16 array of the active backend; ``shape`` is the
    filters' logical shape. Made by to_bf16_weights(w). The values are w
    rounded to nearest even, the rounding igemm_bf16 and mma_bf16 apply to
    float32 weights as they load them, so each gives the same bits on either.
    """

    def __init__(self, bits):
        self.bits = V.array(bits, "bits", ndim=4, dtype=np.uint16, shape_hint="K x C x R x S")

    @property
    def shape(self):
        return tuple(self.bits.shape)

    def __repr__(self):
        return f"Bf16Weights(shape={self.shape})"


def to_bf16_weights(w):
    """``w`` (K x C x R x S float32) rounded to bfloat16, round to nearest
    even (NaN stays NaN, overflow past the bf16 maximum becomes inf), as a
    Bf16Weights (csrc/kernels/conv2d.cuh, conv2d_to_bf16). Convert once, when
    the weights are loaded; conv2d then streams half the weight bytes."""
    be = _backend.active()
    w = V.array(w, "w", ndim=4, shape_hint="K x C x R x S", be=be)
    V.fits_int32(w.size + 255, "w (plus a block of 256 threads)")
    bits = be.empty(w.shape, np.uint16)
    be.ext.conv2d_to_bf16(be.ptr(w), be.ptr(bits), w.size, be.stream())
    return Bf16Weights(bits)


# ---- the convolutions


BF16_WEIGHT_VARIANTS = ("igemm_bf16", "mma_bf16")  # the variants that read Bf16Weights


def _bf16_variant(w, variant, op):
    """The variant for bf16 weights: igemm_bf16 or mma_bf16; by default
    precision='bf16''s default (conv2d_default_variant: mma_bf16 on the GPU,
    igemm_bf16 on the host), the same bits either way."""
    if variant not in (None, *BF16_WEIGHT_VARIANTS):
        raise ValueError(f"w holds bf16 weights ({w!r}), which only variants {list(BF16_WEIGHT_VARIANTS)} of {op} "
                         f"read; got variant {variant!r} (pass float32 weights for it)")
    return variant or conv2d_default_variant(0, 0, 0, None, "bf16")  # the shape does not matter at bf16


def _conv_args(x, w, b, stride, padding, op, be):
    """The checks every convolution entry point makes: (x, w, wt, b, g), g
    the backend's ConvShape (csrc/kernels/shapes.h: every size, the launchers
    take it whole). w: float32 filters (wt fp32), or a Bf16Weights, whose bits
    come back as w (wt bf16)."""
    x = V.array(x, "x", ndim=4, shape_hint="N x C x H x W", be=be)
    if isinstance(w, Bf16Weights):
        w = V.array(w.bits, "w.bits", ndim=4, dtype=np.uint16, shape_hint="K x C x R x S", be=be)
        wt = be.ext.WeightType.bf16
    else:
        w = V.array(w, "w", ndim=4, shape_hint="K x C x R x S", be=be)
        wt = be.ext.WeightType.fp32
    n, c, h, wd = x.shape
    k, cw, r, s = w.shape
    if cw != c:
        raise ValueError(f"w has {cw} input channels (shape {tuple(w.shape)}) but x has {c} "
                         f"(shape {tuple(x.shape)})")
    if k > 65535 * 64:  # the igemm kernels put 64-channel tiles on grid.y
        raise ValueError(f"w has {k} output channels; {op} supports at most {65535 * 64}")
    if b is not None:
        b = V.array(b, "b", ndim=1, be=be)
        if b.shape[0] != k:
            raise ValueError(f"b must hold one value per output channel of w ({k}), got {b.shape[0]}")
    sh, sw = V.pair(stride, "stride", minimum=1)
    ph, pw = V.pair(padding, "padding", minimum=0)
    if max(sh, sw) > V.INT32_LIMIT:
        raise ValueError(f"stride must be at most {V.INT32_LIMIT}, got {(sh, sw)}")
    if max(h + 2 * ph, wd + 2 * pw) > V.INT32_LIMIT:
        raise ValueError(f"padding {(ph, pw)} makes the padded input {h + 2 * ph} x {wd + 2 * pw}, "
                         f"beyond 32-bit indexing ({V.INT32_LIMIT})")
    p, q = conv_out(h, r, sh, ph), conv_out(wd, s, sw, pw)
    if p <= 0 or q <= 0:
        raise ValueError(f"output size would be {p} x {q}: the {r} x {s} kernel of w is larger than x's "
                         f"{h} x {wd} image with padding {(ph, pw)}")
    return x, w, wt, b, be.ext.ConvShape(x.shape, w.shape, (sh, sw), (ph, pw))


def _precision(precision, variant, op):
    """conv2d's / conv2d_relu_maxpool's precision argument, checked against
    the variant when one is given as well."""
    if precision is None:
        return None
    V.choice(precision, "precision", set(CONV2D_PRECISION.values()))
    if variant is not None and CONV2D_PRECISION[variant] != precision:
        raise ValueError(f"{op}: variant {variant} computes in {CONV2D_PRECISION[variant]}, "
                         f"not the precision {precision!r} asked for")
    return precision


def _wgmma(variant, x, w, b, y, g, splits, mode, be, op):
    """Runs a wgmma variant (after its own checks) into y: mode 0 plain, 1
    ReLU, 2 ReLU + max pool; splits > 1 through a workspace."""
    why = wgmma_refusal(tuple(x.shape), (g.sh, g.sw), be)
    if why is not None:
        raise ValueError(f"{op}: variant {variant} cannot run this convolution: {why}")
    if be.ptr(x) % 16:
        raise ValueError(f"{op}: variant {variant} reads x through TMA, which needs a 16-byte aligned address; "
                         f"x starts at {be.ptr(x):#x} (pass a copy)")
    stages = g.R * g.S * -(-g.C // WGMMA_CHANNELS)
    if splits > min(stages, 65535):
        raise ValueError(f"splits must be at most {min(stages, 65535)} for {variant} (its stages: R*S = "
                         f"{g.R * g.S} taps x {-(-g.C // WGMMA_CHANNELS)} chunks of {WGMMA_CHANNELS} channels), "
                         f"got {splits}")
    cp = be.ext.conv2d_wgmma_channels(g)
    V.fits_int32(g.R * g.S * g.K * cp + 255, f"{variant}'s reordered filters (R*S x K x C padded to {cp})")
    wr = be.empty((g.R * g.S * g.K * cp,), np.float32 if variant == "wgmma_tf32" else np.uint16)
    ws = be.empty((splits * g.N * g.K * g.P * g.Q,)) if splits > 1 else None
    be.ext.conv2d_wgmma(variant, g, splits, mode, be.ptr(x), be.ptr(w), be.ptr(b) if b is not None else 0,
                        be.ptr(y), be.ptr(wr), be.ptr(ws) if ws is not None else 0, be.stream())
    return y


def conv2d(x, w, b=None, stride=1, padding=0, relu=False, variant=None, splits=None, precision=None):
    """``F.relu?(F.conv2d(x, w, b, stride, padding))`` (csrc/kernels/conv2d.cuh).

    x: N x C x H x W, w: K x C x R x S, b: K or None; stride (>= 1) and
    padding (>= 0) are an int or an (h, w) pair. Returns N x K x P x Q with
    P = (H + 2*padding[0] - R) // stride[0] + 1, Q likewise.
    variant: one of CONV2D_VARIANTS, or None for the fastest for the backend
    and shape (igemm, but direct on the host when igemm's tiles are mostly
    padding, e.g. a handful of output pixels or channels).
    precision: None (fp32), "fp32", "tf32" or "bf16" (CONV2D_PRECISION):
    with variant=None, the default variant of that precision
    (conv2d_default_variant: mma_tf32 / mma_bf16 on the GPU, wgmma_tf32 /
    wgmma_bf16 instead on an sm_90 GPU where conv2d_wgmma_wins); with a
    variant, it must be the variant's own.
    The wgmma variants (WGMMA_VARIANTS) take stride 1 and a width that is a
    multiple of 4 only, and on the cuda backend an sm_90 GPU; elsewhere they
    raise ValueError saying why (wgmma_refusal). They split in whole stages
    of one tap x 32 channels (at most R*S*ceil(C/32) splits), never
    automatically.
    w may be a Bf16Weights (to_bf16_weights): filters already rounded to
    bf16, read by igemm_bf16 and mma_bf16 (the default then is
    precision='bf16''s: mma_bf16 on the GPU, igemm_bf16 on the host; any other
    variant is a ValueError), bit for bit the variant's result on the
    float32 filters, splits included, for half the weight bytes.
    splits: split-K for the igemm variants (CONV2D_SPLIT_VARIANTS): the
    depth C*R*S is cut into `splits` ranges of whole 16-tap stages, computed
    by separate blocks into a workspace (splits x N x K x P x Q floats) and
    summed in a fixed order, so the bits depend on the shape and `splits`
    only. None: automatic (conv2d_auto_splits: > 1 only for few output tiles
    over a deep filter, fc6 / fc7 at batch 1); 1: no split; an int up to
    ceil(C*R*S / 16) forces it (with variant None, the default variant if it
    is an igemm one, else igemm).
    """
    be = _backend.active()
    if variant is not None:
        V.choice(variant, "variant", CONV2D_VARIANTS)
    if isinstance(w, Bf16Weights):
        variant = _bf16_variant(w, variant, "conv2d")
    precision = _precision(precision, variant, "conv2d")
    if splits is not None:
        splits = V.integer(splits, "splits", minimum=1)
        if splits > 1 and variant is not None and variant not in CONV2D_SPLIT_VARIANTS:
            raise ValueError(f"splits = {splits} needs one of the variants {list(CONV2D_SPLIT_VARIANTS)}; "
                             f"{variant} does not split its depth")
    x, w, wt, b, g = _conv_args(x, w, b, stride, padding, "conv2d", be)
    n, c, k, r, s, p, q = g.N, g.C, g.K, g.R, g.S, g.P, g.Q
    if variant == "small_c" and c * r * s > SMALL_C_MAX_TAPS:
        raise ValueError(f"w has C*R*S = {c * r * s} taps (shape {tuple(w.shape)}); variant small_c "
                         f"supports at most 64")
    relu = V.flag(relu, "relu")
    # The launchers round the output up to whole 256-thread blocks in int arithmetic.
    limit = V.INT32_LIMIT - 255
    if n * k * p * q > limit:
        raise ValueError(f"the output (N x K x P x Q = {n} x {k} x {p} x {q}) would have {n * k * p * q} "
                         f"elements; the kernels index with 32-bit ints (at most {limit} here)")
    stages = -(-(c * r * s) // 16)
    if splits is not None and variant not in WGMMA_VARIANTS and splits > min(stages, 65535):  # grid.z holds them
        raise ValueError(f"splits must be at most {min(stages, 65535)} (the 16-tap stages of C*R*S = "
                         f"{c * r * s}), got {splits}")
    if variant is None:
        variant = conv2d_default_variant(n * p * q, k, c * r * s, be.name, precision or "fp32")
        if variant.startswith("mma_") and splits in (None, 1) and conv2d_wgmma_wins(
                tuple(x.shape), tuple(w.shape), (g.sh, g.sw), (g.ph, g.pw), be):
            variant = "w" + variant  # a forced split stays with mma, which splits in 16-tap stages
        if splits is not None and splits > 1 and variant not in CONV2D_SPLIT_VARIANTS:
            variant = "igemm"
    if splits is None:
        auto = variant in CONV2D_SPLIT_VARIANTS and variant not in WGMMA_VARIANTS
        splits = conv2d_auto_splits(n * p * q, k, c * r * s) if auto else 1
    V.fits_int32(splits * n * k * p * q + 255, f"the workspace of splits = {splits} partial outputs")
    y = be.empty((n, k, p, q))
    if variant in WGMMA_VARIANTS:
        return _wgmma(variant, x, w, b, y, g, splits, int(relu), be, "conv2d")
    b_ptr = be.ptr(b) if b is not None else 0
    if splits == 1:
        be.ext.conv2d(variant, g, be.ptr(x), be.ptr(w), wt, b_ptr, be.ptr(y), relu, be.stream())
    else:
        ws = be.empty((splits * n * k * p * q,))
        be.ext.conv2d_split(variant, g, splits, be.ptr(x), be.ptr(w), wt, b_ptr, be.ptr(y), be.ptr(ws), relu,
                            be.stream())
    return y


def conv2d_relu_maxpool(x, w, b=None, stride=1, padding=0, variant=None, precision=None):
    """``F.max_pool2d(F.relu(F.conv2d(x, w, b, stride, padding)), 2, 2, ceil_mode=True)``
    without storing the convolution's output (csrc/kernels/conv2d.cuh, ConvOut).

    Arguments as conv2d's; returns N x K x ceil(P/2) x ceil(Q/2). variant: one
    of CONV2D_RELU_MAXPOOL_VARIANTS (the igemm pipelines, with conv2d's
    precision for the same name), default igemm, or with precision "tf32" /
    "bf16" conv2d's default variant of it. The result equals
    ``max_pool2d(conv2d(x, w, b, stride, padding, relu=True, variant=variant))``
    bit for bit, on every run. Like conv2d's ReLU (fmaxf), a NaN in the
    convolution becomes 0, where F.relu would propagate it. w may be a
    Bf16Weights, as in conv2d (igemm_bf16 or mma_bf16, precision='bf16''s
    default by default).
    """
    be = _backend.active()
    if variant is not None:
        V.choice(variant, "variant", CONV2D_RELU_MAXPOOL_VARIANTS)
    bf16w = isinstance(w, Bf16Weights)
    if bf16w:
        variant = _bf16_variant(w, variant, "conv2d_relu_maxpool")
    precision = _precision(precision, variant, "conv2d_relu_maxpool")
    x, w, wt, b, g = _conv_args(x, w, b, stride, padding, "conv2d_relu_maxpool", be)
    if variant is None:
        variant = ("igemm" if precision in (None, "fp32")
                   else conv2d_default_variant(0, 0, 0, be.name, precision))  # the shape does not matter here
        if variant.startswith("mma_") and conv2d_wgmma_wins(tuple(x.shape), tuple(w.shape), (g.sh, g.sw),
                                                            (g.ph, g.pw), be):
            variant = "w" + variant
    n, k, p, q = g.N, g.K, g.P, g.Q
    po, qo = (p + 1) // 2, (q + 1) // 2
    # The kernels round pixels and outputs up to whole blocks in int arithmetic.
    V.fits_int32(n * p * q + 255, "the convolution's pixels (N x P x Q, plus a block)")
    V.fits_int32(n * k * po * qo + 255, "the output (N x K x ceil(P/2) x ceil(Q/2), plus a block)")
    y = be.empty((n, k, po, qo))
    if variant in WGMMA_VARIANTS:
        return _wgmma(variant, x, w, b, y, g, 1, 2, be, "conv2d_relu_maxpool")
    be.ext.conv2d_relu_maxpool(variant, g, be.ptr(x), be.ptr(w), wt, be.ptr(b) if b is not None else 0, be.ptr(y),
                               be.stream())
    return y
