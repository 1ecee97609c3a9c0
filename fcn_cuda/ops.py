"""The kernels as functions: validated arguments, one launch each.

Arrays are NCHW float32, C-contiguous, of the active backend (NumPy on
'host', CuPy on 'cuda'); anything ``xp.asarray`` takes is accepted, arrays of
the other backend are refused. Each function checks its arguments here
(fcn_cuda/_validate.py), allocates the output and calls the matching
launcher in csrc/ops through csrc/bindings.cpp. Semantics are PyTorch's
(see each docstring), checked in tests/ against torch in float64.
"""

import math

import numpy as np

from . import _backend
from . import _validate as V

__all__ = []

# ---- conv2d

CONV2D_VARIANTS = ("direct", "igemm", "small_c", "igemm_tf32", "igemm_bf16")
# The math each variant does (DESIGN.md section 3 gives each its tolerance).
CONV2D_PRECISION = {"direct": "fp32", "igemm": "fp32", "small_c": "fp32", "igemm_tf32": "tf32", "igemm_bf16": "bf16"}
SMALL_C_MAX_TAPS = 64  # small_c keeps a pixel's C*R*S taps in registers
# The variants that can split their depth (split-K, conv2d's `splits`).
CONV2D_SPLIT_VARIANTS = ("igemm", "igemm_tf32", "igemm_bf16")
__all__ += ["conv2d", "CONV2D_VARIANTS", "CONV2D_PRECISION", "CONV2D_SPLIT_VARIANTS", "conv2d_variants"]


def conv2d_variants(w_shape, precision=None):
    """The variants that take filters of shape K x C x R x S (of one precision, if given)."""
    _, c, r, s = w_shape
    return tuple(v for v in CONV2D_VARIANTS if (v != "small_c" or c * r * s <= SMALL_C_MAX_TAPS)
                 and precision in (None, CONV2D_PRECISION[v]))


def _conv2d_tile_use(m, k, crs):
    """The useful fraction of the work igemm does in its tiles (GEMM rows
    m = N*P*Q, columns k = K, depth crs = C*R*S): 64 x 64 x 16, or for
    K <= 32 and K <= 16 the narrower 128 x 32 and 256 x 16 its launcher picks."""
    padded = lambda v, tile: -(-v // tile) * tile
    tile_n = 16 if k <= 16 else 32 if k <= 32 else 64
    return m * k * crs / (padded(m, 4096 // tile_n) * padded(k, tile_n) * padded(crs, 16))


def _conv2d_default_variant(be, m, k, crs):
    """small_c for shallow filters (conv1_1's 27 taps: 2.8x faster than igemm
    in the emulator on a 100 x 100 image); else igemm; on the host, direct
    where most of igemm's tile work would be zero-fill: the emulator runs
    direct faster below about 20% tile use (`python benchmarks/emu_conv2d.py
    --sweep`). Not yet measured on a GPU."""
    if crs <= SMALL_C_MAX_TAPS // 2:
        return "small_c"
    if be.name == "host" and _conv2d_tile_use(m, k, crs) < 0.2:
        return "direct"
    return "igemm"


def _conv2d_auto_splits(m, k, crs):
    """splits=None's depth split for an igemm variant (GEMM rows m = N*P*Q,
    columns k = K, depth crs = C*R*S). A prediction for an H100 (132 SMs),
    not a measurement: no GPU has run it. An SM holds 4 conv2d_igemm blocks
    (64 registers x 256 threads), so fewer than 2 x 132 64 x 64 tiles leave
    it at half occupancy or less (fc6 at batch 1 on a 500 x 500 image:
    4 x 64 = 256 tiles, each 1568 stages deep). Then a deep enough depth
    (>= 4096) is split until about 1024 blocks run, as conv2d_grad_weight's
    split rule does, keeping >= 64 stages (1024 taps) per split so the
    workspace round trip (8 bytes per output per split) stays small next to
    the dot products. At 500 x 500, batch 1: fc6, fc7 and conv5_x get 4
    splits, conv1-conv4 none. The rule reads the shape only, never the
    machine or backend, so the bits of a result never depend on where it ran."""
    tiles = -(-m // 64) * -(-k // 64)
    if tiles >= 2 * 132 or crs < 4096:
        return 1
    return min(-(-1024 // tiles), -(-crs // 16) // 64)


__all__ += ["Bf16Weights", "to_bf16_weights"]


class Bf16Weights:
    """Convolution filters stored in bfloat16, half the bytes of float32, for
    conv2d / conv2d_relu_maxpool's igemm_bf16 (its bf16-weights mode).

    NumPy and CuPy have no bfloat16 dtype, so ``bits`` holds each weight's
    bf16 bit pattern (the upper 16 bits of the float32 it stands for) as a
    K x C x R x S uint16 array of the active backend; ``shape`` is the
    filters' logical shape. Made by to_bf16_weights(w). The values are w
    rounded to nearest even, the rounding igemm_bf16 applies to float32
    weights as it loads them, so igemm_bf16 gives the same bits on either.
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


def _bf16_variant(w, variant, op):
    """The variant for bf16 weights: igemm_bf16, the only one that reads them."""
    if variant not in (None, "igemm_bf16"):
        raise ValueError(f"w holds bf16 weights ({w!r}), which only variant igemm_bf16 of {op} reads; "
                         f"got variant {variant!r} (pass float32 weights for it)")
    return "igemm_bf16"


def _conv_args(x, w, b, stride, padding, op, be):
    """The checks every convolution entry point makes: (x, w, b, (N, C, H, W,
    K, R, S, sh, sw, ph, pw, P, Q)). w: float32 filters, or a Bf16Weights,
    whose bits come back as w."""
    x = V.array(x, "x", ndim=4, shape_hint="N x C x H x W", be=be)
    if isinstance(w, Bf16Weights):
        w = V.array(w.bits, "w.bits", ndim=4, dtype=np.uint16, shape_hint="K x C x R x S", be=be)
    else:
        w = V.array(w, "w", ndim=4, shape_hint="K x C x R x S", be=be)
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
    p = (h + 2 * ph - r) // sh + 1
    q = (wd + 2 * pw - s) // sw + 1
    if p <= 0 or q <= 0:
        raise ValueError(f"output size would be {p} x {q}: the {r} x {s} kernel of w is larger than x's "
                         f"{h} x {wd} image with padding {(ph, pw)}")
    return x, w, b, (n, c, h, wd, k, r, s, sh, sw, ph, pw, p, q)


def conv2d(x, w, b=None, stride=1, padding=0, relu=False, variant=None, splits=None):
    """``F.relu?(F.conv2d(x, w, b, stride, padding))`` (csrc/kernels/conv2d.cuh).

    x: N x C x H x W, w: K x C x R x S, b: K or None; stride (>= 1) and
    padding (>= 0) are an int or an (h, w) pair. Returns N x K x P x Q with
    P = (H + 2*padding[0] - R) // stride[0] + 1, Q likewise.
    variant: one of CONV2D_VARIANTS, or None for the fastest for the backend
    and shape (igemm, but direct on the host when igemm's tiles are mostly
    padding, e.g. a handful of output pixels or channels).
    w may be a Bf16Weights (to_bf16_weights): filters already rounded to
    bf16, read by igemm_bf16 only (the default then; any other variant is a
    ValueError), bit for bit its result on the float32 filters, splits
    included, for half the weight bytes.
    splits: split-K for the igemm variants (CONV2D_SPLIT_VARIANTS): the
    depth C*R*S is cut into `splits` ranges of whole 16-tap stages, computed
    by separate blocks into a workspace (splits x N x K x P x Q floats) and
    summed in a fixed order, so the bits depend on the shape and `splits`
    only. None: automatic (_conv2d_auto_splits: > 1 only for few output tiles
    over a deep filter, fc6 / fc7 at batch 1); 1: no split; an int up to
    ceil(C*R*S / 16) forces it (with variant None, the default variant if it
    is an igemm one, else igemm).
    """
    be = _backend.active()
    if variant is not None:
        V.choice(variant, "variant", CONV2D_VARIANTS)
    bf16w = isinstance(w, Bf16Weights)
    if bf16w:
        variant = _bf16_variant(w, variant, "conv2d")
    if splits is not None:
        splits = V.integer(splits, "splits", minimum=1)
        if splits > 1 and variant is not None and variant not in CONV2D_SPLIT_VARIANTS:
            raise ValueError(f"splits = {splits} needs one of the variants {list(CONV2D_SPLIT_VARIANTS)}; "
                             f"{variant} does not split its depth")
    x, w, b, (n, c, h, wd, k, r, s, sh, sw, ph, pw, p, q) = _conv_args(x, w, b, stride, padding, "conv2d", be)
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
    if splits is not None and splits > min(stages, 65535):  # grid.z holds the splits
        raise ValueError(f"splits must be at most {min(stages, 65535)} (the 16-tap stages of C*R*S = "
                         f"{c * r * s}), got {splits}")
    if variant is None:
        variant = _conv2d_default_variant(be, n * p * q, k, c * r * s)
        if splits is not None and splits > 1 and variant not in CONV2D_SPLIT_VARIANTS:
            variant = "igemm"
    if splits is None:
        splits = _conv2d_auto_splits(n * p * q, k, c * r * s) if variant in CONV2D_SPLIT_VARIANTS else 1
    V.fits_int32(splits * n * k * p * q + 255, f"the workspace of splits = {splits} partial outputs")
    y = be.empty((n, k, p, q))
    plain, split = ((be.ext.conv2d_bf16w, be.ext.conv2d_split_bf16w) if bf16w
                    else (be.ext.conv2d, be.ext.conv2d_split))
    if splits == 1:
        plain(variant, be.ptr(x), be.ptr(w), be.ptr(b) if b is not None else 0, be.ptr(y),
              n, c, h, wd, k, r, s, sh, sw, ph, pw, relu, be.stream())
    else:
        ws = be.empty((splits * n * k * p * q,))
        split(variant, be.ptr(x), be.ptr(w), be.ptr(b) if b is not None else 0, be.ptr(y),
              be.ptr(ws), splits, n, c, h, wd, k, r, s, sh, sw, ph, pw, relu, be.stream())
    return y

# ---- conv2d_relu_maxpool (the end of a VGG block: conv, ReLU, pool in one pass)

CONV2D_RELU_MAXPOOL_VARIANTS = ("igemm", "igemm_tf32", "igemm_bf16")
__all__ += ["conv2d_relu_maxpool", "CONV2D_RELU_MAXPOOL_VARIANTS"]


def conv2d_relu_maxpool(x, w, b=None, stride=1, padding=0, variant=None):
    """``F.max_pool2d(F.relu(F.conv2d(x, w, b, stride, padding)), 2, 2, ceil_mode=True)``
    without storing the convolution's output (csrc/kernels/conv2d.cuh, ConvOut).

    Arguments as conv2d's; returns N x K x ceil(P/2) x ceil(Q/2). variant: one
    of CONV2D_RELU_MAXPOOL_VARIANTS (the igemm pipelines, with conv2d's
    precision for the same name), default igemm. The result equals
    ``max_pool2d(conv2d(x, w, b, stride, padding, relu=True, variant=variant))``
    bit for bit, on every run. Like conv2d's ReLU (fmaxf), a NaN in the
    convolution becomes 0, where F.relu would propagate it. w may be a
    Bf16Weights, as in conv2d (igemm_bf16 only, the default then).
    """
    be = _backend.active()
    if variant is not None:
        V.choice(variant, "variant", CONV2D_RELU_MAXPOOL_VARIANTS)
    bf16w = isinstance(w, Bf16Weights)
    variant = _bf16_variant(w, variant, "conv2d_relu_maxpool") if bf16w else variant or "igemm"
    x, w, b, (n, c, h, wd, k, r, s, sh, sw, ph, pw, p, q) = _conv_args(x, w, b, stride, padding,
                                                                     "conv2d_relu_maxpool", be)
    po, qo = (p + 1) // 2, (q + 1) // 2
    # The kernels round pixels and outputs up to whole blocks in int arithmetic.
    V.fits_int32(n * p * q + 255, "the convolution's pixels (N x P x Q, plus a block)")
    V.fits_int32(n * k * po * qo + 255, "the output (N x K x ceil(P/2) x ceil(Q/2), plus a block)")
    y = be.empty((n, k, po, qo))
    launch = be.ext.conv2d_relu_maxpool_bf16w if bf16w else be.ext.conv2d_relu_maxpool
    launch(variant, be.ptr(x), be.ptr(w), be.ptr(b) if b is not None else 0, be.ptr(y),
           n, c, h, wd, k, r, s, sh, sw, ph, pw, be.stream())
    return y


def _conv2d_relu_maxpool_variant(x_shape, w_shape, padding):
    """The variant conv2d picks by default for this stride-1 layer when
    conv2d_relu_maxpool has it and conv2d would not split its depth, else
    None: FCN's forward fuses exactly then, so its output stays that of
    conv2d + max_pool2d bit for bit (a split sums in another order)."""
    n, _, h, wd = x_shape
    k, c, r, s = w_shape
    m = n * (h + 2 * padding - r + 1) * (wd + 2 * padding - s + 1)
    variant = _conv2d_default_variant(_backend.active(), m, k, c * r * s)
    if variant not in CONV2D_RELU_MAXPOOL_VARIANTS or _conv2d_auto_splits(m, k, c * r * s) > 1:
        return None
    return variant

# ---- fused final upsample + crop + softmax/argmax

__all__ += ["upsample_argmax"]


def upsample_argmax(x, w, stride, out_h, out_w, offset, probs=False, *, trusted=False):
    """FCN's last stage in one kernel (csrc/kernels/head.cuh): the labels
    ``argmax(softmax(conv_transpose2d_window(x, w, stride, out_h, out_w, offset)))``,
    an N x out_h x out_w int32 map, computed without ever storing the
    N x C x out_h x out_w upsampled scores. probs=True returns (labels,
    probabilities), the softmax over channels (N x C x out_h x out_w).

    x: N x C x H x W coarse scores; w: C x C x R x S per-channel weights
    (w[i, j] == 0 for i != j: FCN's bilinear upsampling); stride and offset:
    int or (vertical, horizontal); the window must lie within the full
    (H - 1) * s + R output. w is checked on the device (a host sync on a GPU)
    unless trusted=True, as for conv_transpose2d's 'bilinear' variant. The
    upsampled values are those of conv_transpose2d_window bit for bit, so the
    labels equal ops.argmax of the unfused sequence exactly: ties go to the
    lowest channel, the first NaN wins.
    """
    be = _backend.active()
    x, w, _, stride, full = _transpose_args(x, w, None, stride, None, be)
    out_h, out_w, (oy, ox) = _window_args(out_h, out_w, offset, full)
    probs, trusted = V.flag(probs, "probs"), V.flag(trusted, "trusted")
    n, c, h, wd = x.shape
    V.fits_int32(n * out_h * out_w, "the labels")
    if probs:
        V.fits_int32(n * c * out_h * out_w, "probs")
    if not (trusted or _is_diagonal(be, w)):
        raise ValueError(f"w must be per-channel for upsample_argmax (C_in == C_out and w[i, j] == 0 for "
                         f"i != j), got w of shape {tuple(w.shape)} that is not; use conv_transpose2d_window "
                         f"and argmax")
    labels = be.empty((n, out_h, out_w), dtype=np.int32)
    p = be.empty((n, c, out_h, out_w)) if probs else None
    be.ext.upsample_argmax(be.ptr(x), be.ptr(w), be.ptr(labels), be.ptr(p) if probs else 0, n, c, h, wd,
                           w.shape[2], w.shape[3], stride[0], stride[1], oy, ox, out_h, out_w, be.stream())
    return (labels, p) if probs else labels

# ---- max_pool2d

__all__ += ["max_pool2d"]


def _pool_size(size, k, s, ceil_mode):
    """PyTorch's pooling output size with padding 0; in ceil mode the last
    window must still start inside the input."""
    out = (size - k + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size:
        out -= 1
    return out


def max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True, return_indices=False):
    """== F.max_pool2d(x, kernel_size, stride, padding=0, ceil_mode=ceil_mode).

    kernel_size and stride: int or (vertical, horizontal); stride None means
    kernel_size, as in torch. With return_indices, also returns the argmax of
    each window as int32 flat indices h * W + w within each (n, c) plane (the
    values torch returns, as int32). Ties pick the first maximum in row-major
    order; NaN propagates, with the index of the window's last NaN, as in torch.
    """
    be = _backend.active()
    x = V.array(x, "x", ndim=4, shape_hint="N x C x H x W", be=be)
    kh, kw = V.pair(kernel_size, "kernel_size", minimum=1)
    sh, sw = (kh, kw) if stride is None else V.pair(stride, "stride", minimum=1)
    ceil_mode, return_indices = V.flag(ceil_mode, "ceil_mode"), V.flag(return_indices, "return_indices")
    n, c, h, w = x.shape
    ho, wo = _pool_size(h, kh, sh, ceil_mode), _pool_size(w, kw, sw, ceil_mode)
    if ho < 1 or wo < 1:
        raise ValueError(f"kernel_size {(kh, kw)} with stride {(sh, sw)} leaves no output for a {h} x {w} input "
                         f"(ceil_mode={ceil_mode})")
    V.fits_int32(n * c * ho * wo, "the output")
    y = be.empty((n, c, ho, wo))
    indices = be.empty((n, c, ho, wo), dtype=np.int32) if return_indices else None
    be.ext.max_pool2d(be.ptr(x), be.ptr(y), be.ptr(indices) if return_indices else 0, n * c, h, w, ho, wo,
                      kh, kw, sh, sw, be.stream())
    return (y, indices) if return_indices else y


# ---- conv_transpose2d and bilinear upsampling

__all__ += ["conv_transpose2d", "conv_transpose2d_window", "CONV_TRANSPOSE2D_VARIANTS"]

CONV_TRANSPOSE2D_VARIANTS = ("gather", "bilinear")


def _is_diagonal(be, w):
    """True when w (C_in x C_out x R x S) is per-channel: C_in == C_out and
    w[i, j] == 0 for i != j. Two reductions on the device and one sync."""
    if w.shape[0] != w.shape[1]:
        return False
    idx = be.xp.arange(w.shape[0])
    return bool(be.xp.count_nonzero(w) == be.xp.count_nonzero(w[idx, idx]))


def _transpose_args(x, w, b, stride, variant, be):
    """Validated (x, w, b, (sy, sx), (full_h, full_w)); full = (H - 1) * s + R."""
    if variant is not None:
        V.choice(variant, "variant", CONV_TRANSPOSE2D_VARIANTS)
    x = V.array(x, "x", ndim=4, shape_hint="N x C_in x H x W", be=be)
    w = V.array(w, "w", ndim=4, shape_hint="C_in x C_out x R x S", be=be)
    if w.shape[0] != x.shape[1]:
        raise ValueError(f"w must be C_in x C_out x R x S with C_in = x.shape[1] = {x.shape[1]}, got shape {w.shape}")
    if b is not None:
        b = V.array(b, "b", ndim=1, be=be)
        if b.shape[0] != w.shape[1]:
            raise ValueError(f"b must have C_out = w.shape[1] = {w.shape[1]} values, got {b.shape[0]}")
    sy, sx = V.pair(stride, "stride", minimum=1)
    full = ((x.shape[2] - 1) * sy + w.shape[2], (x.shape[3] - 1) * sx + w.shape[3])
    if max(full) > V.INT32_LIMIT:
        raise ValueError(f"stride {(sy, sx)} makes the full output {full[0]} x {full[1]}; "
                         f"the kernels index with 32-bit ints (at most {V.INT32_LIMIT})")
    return x, w, b, (sy, sx), full


def _launch_transpose(be, x, w, b, stride, variant, origin, out_h, out_w, trusted):
    """Resolves the variant (last: the diagonal check is the one that reads w) and launches."""
    n, cin, h, wd = x.shape
    cout, r, s = w.shape[1:]
    V.fits_int32(n * cout * out_h * out_w, "the output")
    trusted = V.flag(trusted, "trusted")
    if trusted and variant is None:
        raise ValueError("trusted=True needs an explicit variant")
    diagonal = variant in (None, "bilinear") and (trusted or _is_diagonal(be, w))
    if variant is None:
        variant = "bilinear" if diagonal else "gather"
    elif variant == "bilinear" and not diagonal:
        raise ValueError("variant 'bilinear' needs per-channel weights w (C_in == C_out and w[i, j] == 0 "
                         f"for i != j); got w of shape {w.shape} that is not; use variant 'gather'")
    y = be.empty((n, cout, out_h, out_w))
    be.ext.conv_transpose2d(variant, be.ptr(x), be.ptr(w), be.ptr(b) if b is not None else 0, be.ptr(y),
                            n, cin, h, wd, cout, r, s, stride[0], stride[1], origin[0], origin[1], out_h, out_w,
                            be.stream())
    return y


def conv_transpose2d(x, w, b=None, stride=1, padding=0, variant=None, *, trusted=False):
    """== F.conv_transpose2d(x, w, b, stride, padding) (groups 1, no
    output_padding or dilation); w: C_in x C_out x R x S; stride and padding:
    int or (vertical, horizontal). Output (H - 1) * s - 2p + R.

    Gather form: each output sums its own taps, no atomics. variant:
    'gather' (any weights) or 'bilinear' (per-channel weights, w[i, j] == 0
    for i != j: 1/C of the work; FCN's bilinear upsampling). None picks
    'bilinear' when w is per-channel, else 'gather'. That check (and the one
    that refuses 'bilinear' for weights that are not per-channel) reads w on
    the device, a host sync on a GPU; trusted=True skips it for a caller that
    has verified w already (the FCN model does, once per load). 'bilinear' never reads the zero
    off-diagonal weights, so unlike the dense op an inf/NaN input stays in its
    own channel instead of becoming 0 * inf = NaN in the others.
    """
    be = _backend.active()
    x, w, b, stride, full = _transpose_args(x, w, b, stride, variant, be)
    py, px = V.pair(padding, "padding", minimum=0)
    out_h, out_w = full[0] - 2 * py, full[1] - 2 * px
    if out_h < 1 or out_w < 1:
        raise ValueError(f"padding {(py, px)} leaves no output: the full output is {full[0]} x {full[1]}")
    return _launch_transpose(be, x, w, b, stride, variant, (py, px), out_h, out_w, trusted)


def _window_args(out_h, out_w, offset, full):
    """(out_h, out_w, (oy, ox)) of an out_h x out_w window at `offset`, checked to lie within the full output."""
    out_h = V.integer(out_h, "out_h", minimum=1)
    out_w = V.integer(out_w, "out_w", minimum=1)
    oy, ox = V.pair(offset, "offset", minimum=0)
    if oy + out_h > full[0] or ox + out_w > full[1]:
        raise ValueError(f"offset {(oy, ox)} with out_h x out_w = {out_h} x {out_w} leaves the full output "
                         f"{full[0]} x {full[1]}")
    return out_h, out_w, (oy, ox)


def conv_transpose2d_window(x, w, stride, out_h, out_w, offset, variant=None, b=None, *, trusted=False):
    """== F.conv_transpose2d(x, w, b, stride)[:, :, oy:oy+out_h, ox:ox+out_w],
    computing only that window (FCN's final upsample computes only what the
    final crop keeps). offset: int or (oy, ox); the window must lie within the
    full (H - 1) * s + R output. Variants and `trusted` as conv_transpose2d.
    """
    be = _backend.active()
    x, w, b, stride, full = _transpose_args(x, w, b, stride, variant, be)
    out_h, out_w, (oy, ox) = _window_args(out_h, out_w, offset, full)
    return _launch_transpose(be, x, w, b, stride, variant, (oy, ox), out_h, out_w, trusted)


# ---- crop_add and the fused score head

__all__ += ["crop_add", "score_crop_add"]


def _crop_offset(offset, h, w, hb, wb, name_small, name_big):
    oy, ox = V.pair(offset, "offset", minimum=0)
    if oy + h > hb or ox + w > wb:
        raise ValueError(f"offset {(oy, ox)} puts the {h} x {w} window of {name_small} outside "
                         f"{name_big} ({hb} x {wb})")
    return oy, ox


def crop_add(a, b, offset):
    """a + b[:, :, oy:oy+Ha, ox:ox+Wa] as a new array; offset int or (oy, ox).
    N and C of a and b must match and the window must fit in b."""
    be = _backend.active()
    a = V.array(a, "a", ndim=4, shape_hint="N x C x H x W", be=be)
    b = V.array(b, "b", ndim=4, shape_hint="N x C x H x W", be=be)
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"b must have the N x C of a {a.shape[:2]}, got {b.shape[:2]}")
    n, c, h, w = a.shape
    oy, ox = _crop_offset(offset, h, w, b.shape[2], b.shape[3], "a", "b")
    out = be.empty(a.shape)
    be.ext.crop_add(be.ptr(a), be.ptr(b), be.ptr(out), n * c, h, w, b.shape[2], b.shape[3], oy, ox, be.stream())
    return out


def score_crop_add(up, feat, w, b, offset, scale=1.0):
    """up + F.conv2d(scale * feat, w, b)[:, :, oy:oy+H, ox:ox+W] in one kernel.

    FCN's score_pool4 / score_pool3 + crop + sum: the 1x1 convolution (w:
    K x C x 1 x 1, b: K or None) runs only on the window of feat (N x C x Hf
    x Wf) that the crop keeps and is added to up (N x K x H x W). scale
    multiplies feat first (FCN-8s at-once: 0.01 for pool4, 1e-4 for pool3).
    """
    be = _backend.active()
    up = V.array(up, "up", ndim=4, shape_hint="N x K x H x W", be=be)
    feat = V.array(feat, "feat", ndim=4, shape_hint="N x C x Hf x Wf", be=be)
    w = V.array(w, "w", ndim=4, shape_hint="K x C x 1 x 1", be=be)
    n, k, h, wd = up.shape
    c = feat.shape[1]
    if n > 65535 or -(-k // 8) > 65535:  # the launch grid's y (8 classes each) and z (images) limits
        raise ValueError(f"up: at most 65535 images and 524280 classes, got N = {n}, K = {k}")
    if feat.shape[0] != n:
        raise ValueError(f"feat must have the batch size of up ({n}), got {feat.shape[0]}")
    if w.shape != (k, c, 1, 1):
        raise ValueError(f"w must be K x C x 1 x 1 = {(k, c, 1, 1)} (K from up, C from feat), got {w.shape}")
    if b is not None:
        b = V.array(b, "b", ndim=1, be=be)
        if b.shape[0] != k:
            raise ValueError(f"b must have K = {k} values, got {b.shape[0]}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"scale must be a real number, got {type(scale).__name__}")
    oy, ox = _crop_offset(offset, h, wd, feat.shape[2], feat.shape[3], "up", "feat")
    out = be.empty(up.shape)
    be.ext.score_crop_add(be.ptr(up), be.ptr(feat), be.ptr(w), be.ptr(b) if b is not None else 0, be.ptr(out),
                          n, k, c, h, wd, feat.shape[2], feat.shape[3], oy, ox, float(scale), be.stream())
    return out


# ---- softmax / argmax

SOFTMAX_VARIANTS = ("scalar", "float4")


def _score_map(x, variant, be):
    """Validated N x C x H x W scores and the variant that will run them."""
    V.choice(variant, "variant", ("auto",) + SOFTMAX_VARIANTS)
    # V.array refuses an x beyond 32-bit indexing; no output is larger than x.
    x = V.array(x, "x", ndim=4, shape_hint="N x C x H x W", be=be)
    h, w = x.shape[2:]
    # float4 moves four pixels per load: H*W must split into whole groups
    # and x must start on a 16-byte boundary (outputs are fresh, aligned
    # allocations of NumPy / CuPy).
    vectorizable = (h * w) % 4 == 0 and be.ptr(x) % 16 == 0
    if variant == "auto":
        variant = "float4" if vectorizable else "scalar"
    elif variant == "float4" and not vectorizable:
        raise ValueError(f"variant 'float4' needs x with H*W a multiple of 4 and a 16-byte aligned start, "
                         f"got H x W = {h} x {w} at address offset {be.ptr(x) % 16}")
    return x, variant


def _softmax_argmax(x, variant, probs, labels):
    be = _backend.active()
    x, variant = _score_map(x, variant, be)
    n, c, h, w = x.shape
    p = be.empty(x.shape) if probs else None
    lab = be.empty((n, h, w), dtype=np.int32) if labels else None
    be.ext.softmax_argmax(variant, be.ptr(x), be.ptr(p) if probs else 0, be.ptr(lab) if labels else 0,
                          n, c, h * w, be.stream())
    return p, lab


def softmax(x, variant="auto"):
    """Softmax over the channels (dim 1) of N x C x H x W float32 scores,
    == torch.softmax(x, 1). variant: 'auto' (float4 where H*W % 4 == 0
    and x is 16-byte aligned, else scalar), 'scalar' or 'float4'. A NaN or +inf logit makes its
    pixel's probabilities NaN, -inf logits get probability 0 (as torch)."""
    return _softmax_argmax(x, variant, True, False)[0]


def argmax(x, variant="auto"):
    """Channel index of the maximum of N x C x H x W float32 scores: an
    N x H x W int32 label map, == torch.argmax(x, 1). Ties go to the lowest
    channel; NaN counts as the maximum (the first NaN wins), as in torch."""
    return _softmax_argmax(x, variant, False, True)[1]


def softmax_argmax(x, variant="auto"):
    """(softmax(x), argmax(x)) from one launch: the labels come out of the
    pass that finds each pixel's max and sum (see those functions)."""
    return _softmax_argmax(x, variant, True, True)


__all__ += ["softmax", "argmax", "softmax_argmax", "SOFTMAX_VARIANTS"]

# ---- preprocessing

# The reference's per-channel mean in BGR order (Caffe FCN / pytorch-fcn).
MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)


def preprocess(img):
    """The reference's input transform: an H x W x 3 uint8 RGB image (or a
    batch N x H x W x 3) -> float32 1 x 3 x H x W (N x 3 x H x W), channels
    in BGR order minus MEAN_BGR, values in 0..255 minus the mean."""
    be = _backend.active()
    img = V.array(img, "img", dtype=np.uint8, be=be)  # also refuses > 2**31 - 1 bytes: out has as many floats
    if img.ndim not in (3, 4) or img.shape[-1] != 3:
        raise ValueError(f"img must be H x W x 3 or N x H x W x 3 (RGB, channels last), got shape {tuple(img.shape)}")
    batch = img if img.ndim == 4 else img[None]
    n, h, w, _ = batch.shape
    out = be.empty((n, 3, h, w))
    be.ext.preprocess(be.ptr(batch), be.ptr(out), n, h * w, *MEAN_BGR, be.stream())
    return out


__all__ += ["preprocess", "MEAN_BGR"]

# ---- backward

__all__ += ["relu_backward", "conv2d_grad_input", "conv2d_grad_weight", "bias_grad", "conv_transpose2d_grad_input",
            "conv_transpose2d_grad_weight", "max_pool2d_backward", "crop_backward", "score_crop_add_backward",
            "softmax_cross_entropy", "class_pixel_counts", "loss_divisor", "dropout", "dropout_backward", "philox4x32_10", "sgd_step"]

_UINT32 = 2**32


def _shape4(shape, name):
    """A 4-tuple of positive ints (an array shape the caller describes)."""
    if not isinstance(shape, (tuple, list)) or len(shape) != 4:
        raise ValueError(f"{name} must be a 4-tuple (N, C, H, W), got {shape!r}")
    return tuple(V.integer(v, f"{name}[{i}]", minimum=1) for i, v in enumerate(shape))


def _real(v, name):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):  # math, not NumPy: torch.compile traces this check in fcn_cuda.torch's wrappers
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _relu_mask(relu_y, grad_y, be):
    """The forward ReLU output whose (y > 0) masks grad_y, validated; None passes through."""
    if relu_y is None:
        return None
    relu_y = V.array(relu_y, "relu_y", ndim=4, be=be)
    if relu_y.shape != grad_y.shape:
        raise ValueError(f"relu_y must have grad_y's shape {tuple(grad_y.shape)}, got {tuple(relu_y.shape)}")
    return relu_y


def _conv_out(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def relu_backward(grad_y, y):
    """grad_y * (y > 0): the gradient through y = relu(...), from its output y."""
    be = _backend.active()
    grad_y = V.array(grad_y, "grad_y", be=be)
    y = V.array(y, "y", be=be)
    if y.shape != grad_y.shape:
        raise ValueError(f"y must have grad_y's shape {tuple(grad_y.shape)}, got {tuple(y.shape)}")
    V.fits_int32(grad_y.size + 255, "grad_x (rounded up to whole blocks)")
    out = be.empty(grad_y.shape)
    be.ext.relu_backward(be.ptr(grad_y), be.ptr(y), be.ptr(out), grad_y.size, be.stream())
    return out


def conv2d_grad_input(grad_y, w, x_shape, stride=1, padding=0, relu_y=None):
    """The gradient of ``conv2d(x, w, b, stride, padding)`` with respect to x:
    == torch.nn.grad.conv2d_input(x_shape, w, grad_y, stride, padding).

    grad_y: N x K x P x Q, w: K x C x R x S, x_shape: (N, C, H, W); P, Q must
    be conv2d's output size for x_shape. It is a transposed convolution of
    grad_y: at stride 1 with padding < R, S (every FCN layer but conv1_1,
    whose input gradient training never needs), the convolution of grad_y by
    the flipped filters on conv2d's igemm kernel; otherwise the gather kernel
    of ops.conv_transpose2d. No atomics either way. Rows and columns of x
    that no window covered ((H + 2p - R) % s != 0) get 0.
    relu_y: the output y of the forward conv2d(..., relu=True) (grad_y's
    shape): grad_y is then masked by (y > 0) as it is read, i.e. the result
    is conv2d_grad_input(relu_backward(grad_y, relu_y), ...) in one pass.
    """
    be = _backend.active()
    grad_y = V.array(grad_y, "grad_y", ndim=4, shape_hint="N x K x P x Q", be=be)
    w = V.array(w, "w", ndim=4, shape_hint="K x C x R x S", be=be)
    n, c, h, wd = _shape4(x_shape, "x_shape")
    k, cw, r, s = w.shape
    if grad_y.shape[0] != n or grad_y.shape[1] != k:
        raise ValueError(f"grad_y must be N x K x P x Q with N = {n} (x_shape) and K = {k} (w), "
                         f"got shape {tuple(grad_y.shape)}")
    if cw != c:
        raise ValueError(f"w has {cw} input channels (shape {tuple(w.shape)}) but x_shape has {c}")
    sh, sw = V.pair(stride, "stride", minimum=1)
    ph, pw = V.pair(padding, "padding", minimum=0)
    if max(h + 2 * ph, wd + 2 * pw, sh, sw) > V.INT32_LIMIT:
        raise ValueError(f"padding {(ph, pw)} / stride {(sh, sw)} exceed 32-bit indexing")
    p, q = _conv_out(h, r, sh, ph), _conv_out(wd, s, sw, pw)
    if (p, q) != tuple(grad_y.shape[2:]):
        raise ValueError(f"grad_y is {tuple(grad_y.shape[2:])} but conv2d of an x of shape {(n, c, h, wd)} with "
                         f"a {r} x {s} kernel, stride {(sh, sw)}, padding {(ph, pw)} gives {(p, q)}")
    mask = _relu_mask(relu_y, grad_y, be)
    V.fits_int32(n * c * h * wd, "grad_x")
    dx = be.empty((n, c, h, wd))
    # Stride 1 with padding below the filter size: the convolution of grad_y
    # by the flipped filters (conv2d_igemm, w flipped into wf first).
    wf = be.empty((c, k, r, s)) if (sh, sw) == (1, 1) and ph < r and pw < s else None
    be.ext.conv2d_grad_input(be.ptr(grad_y), be.ptr(w), be.ptr(mask) if mask is not None else 0, be.ptr(dx),
                             be.ptr(wf) if wf is not None else 0, n, k, p, q, c, h, wd, r, s, sh, sw, ph, pw,
                             be.stream())
    return dx


def _grad_weight(be, x, dy, mask, k, r, s, stride, padding, alpha=1.0):
    """dw (K x C x R x S) = alpha * sum over n, p, q of dy x im2col(x): the
    split-depth kernel plus, when it splits, its workspace."""
    n, c, h, wd = x.shape
    p, q = dy.shape[2:]
    if -(-k // 64) > 65535:
        raise ValueError(f"at most {65535 * 64} output channels, got {k}")
    crs = c * r * s
    V.fits_int32(k * crs + 255, "the weight gradient (rounded up to whole blocks)")
    splits = be.ext.conv2d_grad_weight_splits(n * p * q, k, crs)
    V.fits_int32(splits * k * crs + 255, "the weight gradient's split workspace")
    ws = be.empty((splits * k * crs,)) if splits > 1 else None
    dw = be.empty((k, c, r, s))
    be.ext.conv2d_grad_weight(be.ptr(x), be.ptr(dy), be.ptr(mask) if mask is not None else 0, be.ptr(dw),
                              be.ptr(ws) if ws is not None else 0, n, c, h, wd, k, r, s, p, q,
                              stride[0], stride[1], padding[0], padding[1], float(alpha), be.stream())
    return dw


def _bias_grad(be, dy, mask):
    n, k, p, q = dy.shape
    db = be.empty((k,))
    be.ext.bias_grad(be.ptr(dy), be.ptr(mask) if mask is not None else 0, be.ptr(db), n, k, p * q, be.stream())
    return db


def bias_grad(grad_y):
    """grad_y (N x K x P x Q) summed over n, p, q: the gradient of the bias
    of a convolution or transposed convolution, == grad_y.sum((0, 2, 3)).
    The kernel conv2d_grad_weight runs for its grad_b: one block per
    channel, a fixed order, the same bits every run."""
    be = _backend.active()
    grad_y = V.array(grad_y, "grad_y", ndim=4, shape_hint="N x K x P x Q", be=be)
    return _bias_grad(be, grad_y, None)


def conv2d_grad_weight(x, grad_y, kernel_size, stride=1, padding=0, relu_y=None):
    """The gradients of ``conv2d(x, w, b, stride, padding)`` with respect to
    w and b: (grad_w: K x C x R x S, grad_b: K), == torch.nn.grad.conv2d_weight
    and grad_y.sum((0, 2, 3)).

    x: N x C x H x W, grad_y: N x K x P x Q (conv2d's output size);
    kernel_size: int or (R, S). An implicit GEMM over the N*P*Q pixels, split
    into fixed chunks summed in a fixed order (no atomics): the same inputs
    give the same bits on every run. relu_y: as in conv2d_grad_input, the
    forward ReLU output; grad_y is masked by (relu_y > 0) as it is read.
    """
    be = _backend.active()
    x = V.array(x, "x", ndim=4, shape_hint="N x C x H x W", be=be)
    grad_y = V.array(grad_y, "grad_y", ndim=4, shape_hint="N x K x P x Q", be=be)
    r, s = V.pair(kernel_size, "kernel_size", minimum=1)
    sh, sw = V.pair(stride, "stride", minimum=1)
    ph, pw = V.pair(padding, "padding", minimum=0)
    n, c, h, wd = x.shape
    if grad_y.shape[0] != n:
        raise ValueError(f"grad_y must have x's batch size {n}, got shape {tuple(grad_y.shape)}")
    if max(h + 2 * ph, wd + 2 * pw, sh, sw, r, s) > V.INT32_LIMIT:
        raise ValueError(f"padding {(ph, pw)} / stride {(sh, sw)} / kernel_size {(r, s)} exceed 32-bit indexing")
    p, q = _conv_out(h, r, sh, ph), _conv_out(wd, s, sw, pw)
    if p < 1 or q < 1:
        raise ValueError(f"kernel_size {(r, s)} is larger than x's {h} x {wd} image with padding {(ph, pw)}")
    if (p, q) != tuple(grad_y.shape[2:]):
        raise ValueError(f"grad_y is {tuple(grad_y.shape[2:])} but conv2d of x {tuple(x.shape)} with kernel_size "
                         f"{(r, s)}, stride {(sh, sw)}, padding {(ph, pw)} gives {(p, q)}")
    mask = _relu_mask(relu_y, grad_y, be)
    k = grad_y.shape[1]
    return (_grad_weight(be, x, grad_y, mask, k, r, s, (sh, sw), (ph, pw)), _bias_grad(be, grad_y, mask))


def _transpose_grad_args(x_or_shape, grad_y, r, s, stride, padding):
    """Checks grad_y's size against conv_transpose2d's (H - 1) * s - 2p + R."""
    sy, sx = V.pair(stride, "stride", minimum=1)
    py, px = V.pair(padding, "padding", minimum=0)
    h, wd = x_or_shape[2:]
    if max((h - 1) * sy + r, (wd - 1) * sx + s) > V.INT32_LIMIT:
        raise ValueError(f"stride {(sy, sx)} makes the full output {(h - 1) * sy + r} x {(wd - 1) * sx + s}; "
                         f"the kernels index with 32-bit ints (at most {V.INT32_LIMIT})")
    full = ((h - 1) * sy + r - 2 * py, (wd - 1) * sx + s - 2 * px)
    if full != tuple(grad_y.shape[2:]):
        raise ValueError(f"grad_y is {tuple(grad_y.shape[2:])} but conv_transpose2d of a {h} x {wd} input with a "
                         f"{r} x {s} kernel, stride {(sy, sx)}, padding {(py, px)} gives {full}")
    return (sy, sx), (py, px)


def conv_transpose2d_grad_input(grad_y, w, stride, padding, x_shape):
    """The gradient of ``conv_transpose2d(x, w, b, stride, padding)`` with
    respect to x: == F.conv2d(grad_y, w, None, stride, padding), and it runs
    ops.conv2d's kernels. grad_y: N x C_out x Ho x Wo, w: C_in x C_out x R x S,
    x_shape: (N, C_in, H, W) with Ho = (H - 1) * s - 2p + R.
    """
    be = _backend.active()
    grad_y = V.array(grad_y, "grad_y", ndim=4, shape_hint="N x C_out x Ho x Wo", be=be)
    w = V.array(w, "w", ndim=4, shape_hint="C_in x C_out x R x S", be=be)
    n, cin, h, wd = _shape4(x_shape, "x_shape")
    if w.shape[0] != cin:
        raise ValueError(f"w must be C_in x C_out x R x S with C_in = {cin} (x_shape), got shape {tuple(w.shape)}")
    if grad_y.shape[:2] != (n, w.shape[1]):
        raise ValueError(f"grad_y must be N x C_out x Ho x Wo with N = {n}, C_out = {w.shape[1]}, "
                         f"got shape {tuple(grad_y.shape)}")
    if cin > 65535 * 64:
        raise ValueError(f"w has {cin} input channels; at most {65535 * 64}")
    r, s = w.shape[2:]
    stride, padding = _transpose_grad_args((n, cin, h, wd), grad_y, r, s, stride, padding)
    V.fits_int32(n * cin * h * wd + 255, "grad_x (rounded up to whole blocks)")
    cout, ho, wo = grad_y.shape[1:]
    dx = be.empty((n, cin, h, wd))
    variant = _conv2d_default_variant(be, n * h * wd, cin, cout * r * s)
    be.ext.conv2d(variant, be.ptr(grad_y), be.ptr(w), 0, be.ptr(dx), n, cout, ho, wo, cin, r, s, *stride, *padding,
                  False, be.stream())
    return dx


def conv_transpose2d_grad_weight(x, grad_y, kernel_size, stride, padding):
    """The gradient of ``conv_transpose2d(x, w, b, stride, padding)`` with
    respect to w: C_in x C_out x R x S (the bias gradient, where there is one,
    is grad_y.sum((0, 2, 3)); FCN's deconvolutions have none). x: N x C_in x
    H x W, grad_y: N x C_out x Ho x Wo. conv2d_grad_weight's kernel with x and
    grad_y in each other's place: deterministic, no atomics.
    """
    be = _backend.active()
    x = V.array(x, "x", ndim=4, shape_hint="N x C_in x H x W", be=be)
    grad_y = V.array(grad_y, "grad_y", ndim=4, shape_hint="N x C_out x Ho x Wo", be=be)
    r, s = V.pair(kernel_size, "kernel_size", minimum=1)
    if grad_y.shape[0] != x.shape[0]:
        raise ValueError(f"grad_y must have x's batch size {x.shape[0]}, got shape {tuple(grad_y.shape)}")
    stride, padding = _transpose_grad_args(x.shape, grad_y, r, s, stride, padding)
    return _grad_weight(be, grad_y, x, None, x.shape[1], r, s, stride, padding)


def max_pool2d_backward(grad_y, indices, x_shape, kernel_size=2, stride=2):
    """The gradient of ``max_pool2d(x, kernel_size, stride, ceil_mode)`` with
    respect to x, from the int32 indices it returned (return_indices=True).

    grad_y, indices: N x C x Ho x Wo; x_shape: (N, C, H, W); kernel_size and
    stride as in max_pool2d (the gather form needs them to find the windows
    that contain an input; Ho, Wo must be max_pool2d's size in ceil or floor
    mode). Overlapping windows (kernel > stride) add up, in a fixed order, no
    atomics. An index outside its own window matches nothing and is dropped.
    """
    be = _backend.active()
    grad_y = V.array(grad_y, "grad_y", ndim=4, shape_hint="N x C x Ho x Wo", be=be)
    indices = V.array(indices, "indices", ndim=4, dtype=np.int32, shape_hint="N x C x Ho x Wo", be=be)
    n, c, h, w = _shape4(x_shape, "x_shape")
    kh, kw = V.pair(kernel_size, "kernel_size", minimum=1)
    sh, sw = (kh, kw) if stride is None else V.pair(stride, "stride", minimum=1)
    if indices.shape != grad_y.shape:
        raise ValueError(f"indices must have grad_y's shape {tuple(grad_y.shape)}, got {tuple(indices.shape)}")
    ho, wo = grad_y.shape[2:]
    sizes = {(_pool_size(h, kh, sh, m), _pool_size(w, kw, sw, m)) for m in (True, False)}
    if grad_y.shape[:2] != (n, c) or (ho, wo) not in sizes:
        raise ValueError(f"grad_y is {tuple(grad_y.shape)} but max_pool2d of x_shape {(n, c, h, w)} with "
                         f"kernel_size {(kh, kw)}, stride {(sh, sw)} gives N x C x {' or '.join(map(str, sizes))}")
    V.fits_int32(n * c * h * w + 255, "grad_x (rounded up to whole blocks)")
    dx = be.empty((n, c, h, w))
    be.ext.max_pool2d_backward(be.ptr(grad_y), be.ptr(indices), be.ptr(dx), n * c, h, w, ho, wo, kh, kw, sh, sw,
                               be.stream())
    return dx


def crop_backward(grad, b_shape, offset):
    """The gradient of ``crop_add(a, b, offset)`` with respect to b: grad
    (N x C x H x W, a's shape) placed at offset in zeros of b_shape
    (N, C, Hb, Wb). (The gradient for a is grad itself.)"""
    be = _backend.active()
    grad = V.array(grad, "grad", ndim=4, shape_hint="N x C x H x W", be=be)
    n, c, hb, wb = _shape4(b_shape, "b_shape")
    if grad.shape[:2] != (n, c):
        raise ValueError(f"grad must have b_shape's N x C {(n, c)}, got shape {tuple(grad.shape)}")
    h, w = grad.shape[2:]
    oy, ox = _crop_offset(offset, h, w, hb, wb, "grad", "b_shape")
    V.fits_int32(n * c * hb * wb + 255, "grad_b (rounded up to whole blocks)")
    db = be.empty((n, c, hb, wb))
    be.ext.crop_backward(be.ptr(grad), be.ptr(db), n * c, h, w, hb, wb, oy, ox, be.stream())
    return db


def score_crop_add_backward(grad_out, feat, w, offset, scale=1.0):
    """The gradients of ``score_crop_add(up, feat, w, b, offset, scale)`` with
    respect to feat, w and b: (grad_feat: feat's shape, grad_w: K x C x 1 x 1,
    grad_b: K). The gradient for up is grad_out itself.

    grad_feat = scale * w^T grad_out inside the window, 0 outside (one
    kernel); grad_w = scale * sum over pixels of grad_out x feat's window
    (conv2d_grad_weight's deterministic kernel, the offset as negative
    padding); grad_b = grad_out summed over n, y, x.
    """
    be = _backend.active()
    grad_out = V.array(grad_out, "grad_out", ndim=4, shape_hint="N x K x H x W", be=be)
    feat = V.array(feat, "feat", ndim=4, shape_hint="N x C x Hf x Wf", be=be)
    w = V.array(w, "w", ndim=4, shape_hint="K x C x 1 x 1", be=be)
    n, k, h, wd = grad_out.shape
    c, hf, wf = feat.shape[1:]
    if feat.shape[0] != n:
        raise ValueError(f"feat must have grad_out's batch size {n}, got {feat.shape[0]}")
    if w.shape != (k, c, 1, 1):
        raise ValueError(f"w must be K x C x 1 x 1 = {(k, c, 1, 1)} (K from grad_out, C from feat), got {w.shape}")
    scale = _real(scale, "scale")
    oy, ox = _crop_offset(offset, h, wd, hf, wf, "grad_out", "feat")
    V.fits_int32(feat.size + 255, "grad_feat (rounded up to whole blocks)")
    dfeat = be.empty(feat.shape)
    be.ext.score_feat_grad(be.ptr(grad_out), be.ptr(w), be.ptr(dfeat), n, k, c, h, wd, hf, wf, oy, ox, scale,
                           be.stream())
    dw = _grad_weight(be, feat, grad_out, None, k, 1, 1, (1, 1), (-oy, -ox), alpha=scale)
    return dfeat, dw, _bias_grad(be, grad_out, None)


def softmax_cross_entropy(scores, labels, ignore_index=255, normalize=False, weight=None, divisor=None):
    """FCN's loss and its gradient: (loss: float, grad: scores' shape).

    scores: N x C x H x W float32, labels: N x H x W int32 with 0 <= l < C or
    l == ignore_index (anything else: ValueError). Per-pixel softmax
    cross-entropy, SUMMED over the pixels whose label is not ignore_index and
    divided by N (the reference's normalization), or, with normalize=True,
    by the number of those pixels (0 pixels: loss 0.0 and a zero gradient).
    weight (C finite numbers >= 0, as torch's F.cross_entropy(weight=)) scales
    each pixel's term by its class's weight; normalize=True then divides by
    the valid pixels' summed weight. None: every class 1, the reference.
    divisor (a number >= 0) replaces that divisor (loss_divisor): a
    data-parallel rank holding part of a batch passes the whole batch's, so
    that its loss and gradient are its share of the whole batch's.
    grad is the gradient of that loss (0 at ignored pixels). One kernel (the
    per-pixel pass, stable for logits of any magnitude) plus a fixed-order
    sum of its per-block partials: the same bits every run.
    """
    total, divisor, grad = _softmax_xent(scores, labels, ignore_index, normalize, weight, divisor)
    return (float(_backend.active().to_numpy(total)[0]) / divisor if divisor else 0.0), grad


def _softmax_cross_entropy_on_device(scores, labels, ignore_index=255, normalize=False, weight=None, divisor=None):
    """softmax_cross_entropy with the loss left on the device: (loss, grad),
    loss a 0-d float32 array of the active backend holding softmax_cross_entropy's
    float loss rounded to float32, the same bits, but never brought to the
    host (fcn_cuda.torch's op returns it as a tensor: no sync, no upload)."""
    total, divisor, grad = _softmax_xent(scores, labels, ignore_index, normalize, weight, divisor)
    xp = _backend.active().xp
    if not divisor:
        return xp.zeros((), np.float32), grad
    return (total.astype(np.float64) / divisor).astype(np.float32).reshape(()), grad


def _softmax_xent(scores, labels, ignore_index, normalize, weight, divisor):
    """The loss kernel: (its summed loss, a float32 array of one element on
    the device; the divisor; grad), the arguments checked."""
    be = _backend.active()
    scores = V.array(scores, "scores", ndim=4, shape_hint="N x C x H x W", be=be)
    labels = V.array(labels, "labels", ndim=3, dtype=np.int32, shape_hint="N x H x W", be=be)
    n, c, h, w = scores.shape
    if labels.shape != (n, h, w):
        raise ValueError(f"labels must be N x H x W = {(n, h, w)} (from scores), got {tuple(labels.shape)}")
    normalize = V.flag(normalize, "normalize")
    if divisor is not None and not _real(divisor, "divisor") >= 0:
        raise ValueError(f"divisor must be a finite number >= 0, got {divisor!r}")
    V.fits_int32(scores.size + 255, "scores (rounded up to whole blocks)")
    xp = be.xp
    ignored = _check_labels(labels, c, ignore_index, xp)
    weight = _class_weights(weight, c)
    if divisor is None:
        divisor = loss_divisor(_class_counts(labels, ignored, c, be) if normalize else None, n, normalize, weight)
    grad = be.empty(scores.shape)
    ws = be.empty((be.ext.softmax_xent_workspace(n * h * w),))
    total = be.empty((1,))
    dev_weight = None if weight is None else xp.asarray(weight)
    be.ext.softmax_xent(be.ptr(scores), be.ptr(labels), 0 if weight is None else be.ptr(dev_weight), be.ptr(grad),
                        be.ptr(ws), be.ptr(total), n, c, h * w, ignore_index, 1.0 / divisor if divisor else 0.0,
                        be.stream())
    return total, divisor, grad


def _check_labels(labels, c, ignore_index, xp):
    """ValueError unless every label is in [0, c) or equal to ignore_index; returns the ignored mask."""
    ignore_index = V.integer(ignore_index, "ignore_index", minimum=-2**31, maximum=2**31 - 1)
    ignored = labels == ignore_index
    bad = ~ignored & ((labels < 0) | (labels >= c))
    if bool(bad.any()):
        first = int(labels.ravel()[int(xp.argmax(bad.ravel()))])
        raise ValueError(f"labels must lie in [0, {c}) (C of scores) or equal ignore_index {ignore_index}, "
                         f"found {first}")
    return ignored


def class_pixel_counts(labels, num_classes, ignore_index=255):
    """How many pixels of `labels` (int32, any shape, active backend) carry
    each class: num_classes int64s (NumPy); ignore_index is not counted, any
    other label outside [0, num_classes) is a ValueError."""
    be = _backend.active()
    labels = V.array(labels, "labels", dtype=np.int32, be=be)
    num_classes = V.integer(num_classes, "num_classes", minimum=1)
    return _class_counts(labels, _check_labels(labels, num_classes, ignore_index, be.xp), num_classes, be)


def _class_counts(labels, ignored, c, be):
    """class_pixel_counts of labels already checked (`ignored`: _check_labels' mask). The ignored pixels are
    counted as class c and dropped, rather than masked out first, which would wait on the device for the
    masked size."""
    counts = be.xp.bincount(be.xp.where(ignored, c, labels).ravel(), minlength=c + 1)[:c]
    return be.to_numpy(counts).astype(np.int64)


def loss_divisor(counts, n, normalize=False, weight=None):
    """What softmax_cross_entropy divides its summed loss by: the batch's
    image count n (the reference), or with normalize the batch's valid pixels
    (counts: class_pixel_counts of its labels), weighted by class with
    `weight`. Summing counts over the shares of a batch gives the whole
    batch's divisor, bit for bit."""
    if not normalize:
        return n
    counts = np.asarray(counts, np.int64)
    if weight is None:
        return int(counts.sum())
    return float(counts.astype(np.float64) @ _class_weights(weight, len(counts)).astype(np.float64))


def _class_weights(weight, c):
    """None, or C finite weights >= 0 as a float32 NumPy array."""
    if weight is None:
        return None
    try:
        w = np.asarray(weight.get() if hasattr(weight, "get") else weight, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"weight must be C numbers, got {type(weight).__name__}") from None
    if w.shape != (c,):
        raise ValueError(f"weight must hold C = {c} class weights (C of scores), got shape {w.shape}")
    if not (np.isfinite(w).all() and (w >= 0).all()):
        raise ValueError(f"weight must be finite and >= 0, got {w.tolist()}")
    return w.astype(np.float32)


def _dropout_args(p, seed, step):
    p = _real(p, "p")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p must be in [0, 1), got {p}")
    seed = V.integer(seed, "seed", minimum=0, maximum=_UINT32 - 1)
    step = V.integer(step, "step", minimum=0, maximum=_UINT32 - 1)
    return p, seed, step


def _dropout(x, name, p, seed, step, offset):
    be = _backend.active()
    x = V.array(x, name, be=be)
    p, seed, step = _dropout_args(p, seed, step)
    offset = V.integer(offset, "offset", minimum=0, maximum=2**62)
    V.fits_int32(x.size + 4 * 256, f"{name} (rounded up to whole blocks)")
    y = be.empty(x.shape)
    threshold = int(p * _UINT32)  # P(word >= threshold) = 1 - p, to 2^-32
    be.ext.dropout(be.ptr(x), be.ptr(y), x.size, offset, seed, step, threshold, float(np.float32(1.0 / (1.0 - p))),
                   be.stream())
    return y


def dropout(x, p, seed, step, offset=0):
    """Training-mode dropout: x / (1 - p) where kept, 0 where dropped, any
    shape. The mask is Philox4x32-10 (philox4x32_10) keyed by (seed, step)
    with counter (g // 4 mod 2^32, g // 4 // 2^32, 0, 0) for element i at
    g = offset + i (flat index), word g % 4; element i is kept when that word
    >= floor(p * 2^32). `offset` (default 0) places x within a larger batch:
    dropout(x[k:], ..., offset=k * x[0].size) draws dropout(x)[k:]'s mask, as
    a data-parallel rank holding images k.. of the batch needs. Nothing is
    stored: dropout_backward recomputes the mask from (p, seed, step, offset).
    seed and step: ints in [0, 2^32); p in [0, 1); offset in [0, 2^62]."""
    return _dropout(x, "x", p, seed, step, offset)


def dropout_backward(grad_y, p, seed, step, offset=0):
    """The gradient of dropout(x, p, seed, step, offset): grad_y masked and
    scaled by the same mask (recomputed, not stored)."""
    return _dropout(grad_y, "grad_y", p, seed, step, offset)


def philox4x32_10(counters, keys):
    """Random123's Philox4x32-10 as dropout computes it on the device:
    counters: n x 4 uint32, keys: n x 2 uint32 -> n x 4 uint32."""
    be = _backend.active()
    counters = V.array(counters, "counters", ndim=2, dtype=np.uint32, be=be)
    keys = V.array(keys, "keys", ndim=2, dtype=np.uint32, be=be)
    if counters.shape[1] != 4 or keys.shape != (counters.shape[0], 2):
        raise ValueError(f"counters must be n x 4 and keys n x 2, got {tuple(counters.shape)} and "
                         f"{tuple(keys.shape)}")
    V.fits_int32(counters.shape[0] * 6 + 255, "counters")
    packed = be.xp.ascontiguousarray(be.xp.concatenate([counters, keys], axis=1))
    out = be.empty(counters.shape, dtype=np.uint32)
    be.ext.philox_probe(be.ptr(packed), be.ptr(out), counters.shape[0], be.stream())
    return out


def sgd_step(w, g, v, lr, momentum, weight_decay):
    """The reference's SGD update, in place on w and v (same shape as g):
    v = momentum * v + lr * (g + weight_decay * w); w -= v. Pass each
    parameter's effective lr and weight_decay (FCN: biases 2x lr, no decay).
    w and v must be arrays of the active backend (they are written); returns None."""
    be = _backend.active()
    for a, name in ((w, "w"), (v, "v")):
        if not be.owns(a):
            raise TypeError(f"{name} is updated in place, so it must be a {be.xp.__name__} array of the "
                            f"'{be.name}' backend, got {type(a).__name__}")
    w = V.array(w, "w", be=be)
    v = V.array(v, "v", be=be)
    g = V.array(g, "g", be=be)
    if g.shape != w.shape or v.shape != w.shape:
        raise ValueError(f"g and v must have w's shape {tuple(w.shape)}, got {tuple(g.shape)} and {tuple(v.shape)}")
    # Both are C-contiguous, so each is one address range, and comparing the
    # two is exact and free (xp.shares_memory builds and sorts an address per
    # element on a GPU, gigabytes for fc6, and older CuPy does not have it).
    if be.ptr(w) < be.ptr(v) + v.nbytes and be.ptr(v) < be.ptr(w) + w.nbytes:
        raise ValueError("w and v must not overlap")
    lr, momentum, weight_decay = _real(lr, "lr"), _real(momentum, "momentum"), _real(weight_decay, "weight_decay")
    V.fits_int32(w.size + 255, "w (rounded up to whole blocks)")
    be.ext.sgd_step(be.ptr(w), be.ptr(g), be.ptr(v), w.size, lr, momentum, weight_decay, be.stream())
