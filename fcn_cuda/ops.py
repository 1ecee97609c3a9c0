"""The kernels as functions: validated arguments, one launch each.

Arrays are NCHW float32, C-contiguous, of the active backend (NumPy on
'host', CuPy on 'cuda'); anything ``xp.asarray`` takes is accepted, arrays of
the other backend are refused. Each function checks its arguments here
(fcn_cuda/_validate.py), allocates the output and calls the matching
launcher in csrc/ops through csrc/bindings.cpp. Semantics are PyTorch's
(see each docstring), checked in tests/ against torch in float64.
"""

import numpy as np

from . import _backend
from . import _validate as V

__all__ = []

# ---- conv2d

CONV2D_VARIANTS = ("direct", "igemm")
__all__ += ["conv2d", "CONV2D_VARIANTS"]


def _conv2d_tile_use(m, k, crs):
    """The useful fraction of the work igemm does in its 64 x 64 x 16 tiles
    (GEMM rows m = N*P*Q, columns k = K, depth crs = C*R*S)."""
    padded = lambda v, tile: -(-v // tile) * tile
    return m * k * crs / (padded(m, 64) * padded(k, 64) * padded(crs, 16))


def _conv2d_default_variant(be, m, k, crs):
    """igemm; on the host, direct where most of igemm's tile work would be
    zero-fill: the emulator runs direct faster below about 20% tile use
    (`python benchmarks/emu_conv2d.py --sweep`). Not yet measured on a GPU."""
    if be.name == "host" and _conv2d_tile_use(m, k, crs) < 0.2:
        return "direct"
    return "igemm"


def conv2d(x, w, b=None, stride=1, padding=0, relu=False, variant=None):
    """``F.relu?(F.conv2d(x, w, b, stride, padding))`` (csrc/kernels/conv2d.cuh).

    x: N x C x H x W, w: K x C x R x S, b: K or None; stride (>= 1) and
    padding (>= 0) are an int or an (h, w) pair. Returns N x K x P x Q with
    P = (H + 2*padding[0] - R) // stride[0] + 1, Q likewise.
    variant: one of CONV2D_VARIANTS, or None for the fastest for the backend
    and shape (igemm, but direct on the host when igemm's tiles are mostly
    padding, e.g. a handful of output pixels or channels).
    """
    be = _backend.active()
    if variant is not None:
        V.choice(variant, "variant", CONV2D_VARIANTS)
    x = V.array(x, "x", ndim=4, shape_hint="N x C x H x W", be=be)
    w = V.array(w, "w", ndim=4, shape_hint="K x C x R x S", be=be)
    n, c, h, wd = x.shape
    k, cw, r, s = w.shape
    if cw != c:
        raise ValueError(f"w has {cw} input channels (shape {tuple(w.shape)}) but x has {c} "
                         f"(shape {tuple(x.shape)})")
    if k > 65535 * 64:  # igemm puts 64-channel tiles on grid.y
        raise ValueError(f"w has {k} output channels; conv2d supports at most {65535 * 64}")
    if b is not None:
        b = V.array(b, "b", ndim=1, be=be)
        if b.shape[0] != k:
            raise ValueError(f"b must hold one value per output channel of w ({k}), got {b.shape[0]}")
    sh, sw = V.pair(stride, "stride", minimum=1)
    ph, pw = V.pair(padding, "padding", minimum=0)
    if not isinstance(relu, (bool, np.bool_)):
        raise TypeError(f"relu must be a bool, got {type(relu).__name__}")
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
    # The launchers round the output up to whole 256-thread blocks in int arithmetic.
    limit = V.INT32_LIMIT - 255
    if n * k * p * q > limit:
        raise ValueError(f"the output (N x K x P x Q = {n} x {k} x {p} x {q}) would have {n * k * p * q} "
                         f"elements; the kernels index with 32-bit ints (at most {limit} here)")
    variant = variant or _conv2d_default_variant(be, n * p * q, k, c * r * s)
    y = be.empty((n, k, p, q))
    be.ext.conv2d(variant, be.ptr(x), be.ptr(w), be.ptr(b) if b is not None else 0, be.ptr(y),
                  n, c, h, wd, k, r, s, sh, sw, ph, pw, bool(relu), be.stream())
    return y

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
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"ceil_mode must be a bool, got {type(ceil_mode).__name__}")
    if not isinstance(return_indices, bool):
        raise TypeError(f"return_indices must be a bool, got {type(return_indices).__name__}")
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


def _launch_transpose(be, x, w, b, stride, variant, origin, out_h, out_w):
    """Resolves the variant (last: the diagonal check is the one that reads w) and launches."""
    n, cin, h, wd = x.shape
    cout, r, s = w.shape[1:]
    V.fits_int32(n * cout * out_h * out_w, "the output")
    diagonal = variant in (None, "bilinear") and _is_diagonal(be, w)
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


def conv_transpose2d(x, w, b=None, stride=1, padding=0, variant=None):
    """== F.conv_transpose2d(x, w, b, stride, padding) (groups 1, no
    output_padding or dilation); w: C_in x C_out x R x S; stride and padding:
    int or (vertical, horizontal). Output (H - 1) * s - 2p + R.

    Gather form: each output sums its own taps, no atomics. variant:
    'gather' (any weights) or 'bilinear' (per-channel weights, w[i, j] == 0
    for i != j: 1/C of the work; FCN's bilinear upsampling). None picks
    'bilinear' when w is per-channel (one check on the device), else 'gather';
    pass the variant to skip that check. 'bilinear' never reads the zero
    off-diagonal weights, so unlike the dense op an inf/NaN input stays in its
    own channel instead of becoming 0 * inf = NaN in the others.
    """
    be = _backend.active()
    x, w, b, stride, full = _transpose_args(x, w, b, stride, variant, be)
    py, px = V.pair(padding, "padding", minimum=0)
    out_h, out_w = full[0] - 2 * py, full[1] - 2 * px
    if out_h < 1 or out_w < 1:
        raise ValueError(f"padding {(py, px)} leaves no output: the full output is {full[0]} x {full[1]}")
    return _launch_transpose(be, x, w, b, stride, variant, (py, px), out_h, out_w)


def conv_transpose2d_window(x, w, stride, out_h, out_w, offset, variant=None, b=None):
    """== F.conv_transpose2d(x, w, b, stride)[:, :, oy:oy+out_h, ox:ox+out_w],
    computing only that window (FCN's final upsample computes only what the
    final crop keeps). offset: int or (oy, ox); the window must lie within the
    full (H - 1) * s + R output. Variants as conv_transpose2d.
    """
    be = _backend.active()
    x, w, b, stride, full = _transpose_args(x, w, b, stride, variant, be)
    out_h = V.integer(out_h, "out_h", minimum=1)
    out_w = V.integer(out_w, "out_w", minimum=1)
    oy, ox = V.pair(offset, "offset", minimum=0)
    if oy + out_h > full[0] or ox + out_w > full[1]:
        raise ValueError(f"offset {(oy, ox)} with out_h x out_w = {out_h} x {out_w} leaves the full output "
                         f"{full[0]} x {full[1]}")
    return _launch_transpose(be, x, w, b, stride, variant, (oy, ox), out_h, out_w)


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
