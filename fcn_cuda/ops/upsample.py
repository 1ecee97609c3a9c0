"""Transposed convolution, FCN's upsampling (csrc/kernels/upsample.cuh): the
dense gather form and the per-channel (bilinear) one, over the whole output
or a window of it.
"""

from .. import _backend
from .. import _validate as V

__all__ = ["conv_transpose2d", "conv_transpose2d_window", "CONV_TRANSPOSE2D_VARIANTS"]

CONV_TRANSPOSE2D_VARIANTS = ("gather", "bilinear")


def is_diagonal(be, w):
    """True when w (C_in x C_out x R x S) is per-channel: C_in == C_out and
    w[i, j] == 0 for i != j. Two reductions on the device and one sync."""
    if w.shape[0] != w.shape[1]:
        return False
    idx = be.xp.arange(w.shape[0])
    return bool(be.xp.count_nonzero(w) == be.xp.count_nonzero(w[idx, idx]))


def transpose_args(x, w, b, stride, variant, be):
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


def window_args(out_h, out_w, offset, full):
    """(out_h, out_w, (oy, ox)) of an out_h x out_w window at `offset`, checked to lie within the full output."""
    out_h = V.integer(out_h, "out_h", minimum=1)
    out_w = V.integer(out_w, "out_w", minimum=1)
    oy, ox = V.pair(offset, "offset", minimum=0)
    if oy + out_h > full[0] or ox + out_w > full[1]:
        raise ValueError(f"offset {(oy, ox)} with out_h x out_w = {out_h} x {out_w} leaves the full output "
                         f"{full[0]} x {full[1]}")
    return out_h, out_w, (oy, ox)


def _launch_transpose(be, x, w, b, stride, variant, origin, out_h, out_w, trusted):
    """Resolves the variant (last: the diagonal check is the one that reads w) and launches."""
    n, cout = x.shape[0], w.shape[1]
    V.fits_int32(n * cout * out_h * out_w, "the output")
    trusted = V.flag(trusted, "trusted")
    if trusted and variant is None:
        raise ValueError("trusted=True needs an explicit variant")
    diagonal = variant in (None, "bilinear") and (trusted or is_diagonal(be, w))
    if variant is None:
        variant = "bilinear" if diagonal else "gather"
    elif variant == "bilinear" and not diagonal:
        raise ValueError("variant 'bilinear' needs per-channel weights w (C_in == C_out and w[i, j] == 0 "
                         f"for i != j); got w of shape {w.shape} that is not; use variant 'gather'")
    y = be.empty((n, cout, out_h, out_w))
    t = be.ext.TransposeShape(x.shape, w.shape, stride, origin, (out_h, out_w))
    be.ext.conv_transpose2d(variant, t, be.ptr(x), be.ptr(w), be.ptr(b) if b is not None else 0, be.ptr(y),
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
    x, w, b, stride, full = transpose_args(x, w, b, stride, variant, be)
    py, px = V.pair(padding, "padding", minimum=0)
    out_h, out_w = full[0] - 2 * py, full[1] - 2 * px
    if out_h < 1 or out_w < 1:
        raise ValueError(f"padding {(py, px)} leaves no output: the full output is {full[0]} x {full[1]}")
    return _launch_transpose(be, x, w, b, stride, variant, (py, px), out_h, out_w, trusted)


def conv_transpose2d_window(x, w, stride, out_h, out_w, offset, variant=None, b=None, *, trusted=False):
    """== F.conv_transpose2d(x, w, b, stride)[:, :, oy:oy+out_h, ox:ox+out_w],
    computing only that window (FCN's final upsample computes only what the
    final crop keeps). offset: int or (oy, ox); the window must lie within the
    full (H - 1) * s + R output. Variants and `trusted` as conv_transpose2d.
    """
    be = _backend.active()
    x, w, b, stride, full = transpose_args(x, w, b, stride, variant, be)
    out_h, out_w, (oy, ox) = window_args(out_h, out_w, offset, full)
    return _launch_transpose(be, x, w, b, stride, variant, (oy, ox), out_h, out_w, trusted)
