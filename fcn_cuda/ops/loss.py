"""FCN's loss: softmax cross-entropy and its gradient (csrc/kernels/loss.cuh),
and the per-class pixel counts and divisor it is normalized by.
"""

import numpy as np

from .. import _backend
from .. import _validate as V

__all__ = ["softmax_cross_entropy", "class_pixel_counts", "loss_divisor"]

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


def softmax_cross_entropy_on_device(scores, labels, ignore_index=255, normalize=False, weight=None, divisor=None):
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
    if divisor is not None and not V.real(divisor, "divisor") >= 0:
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
    n = V.integer(n, "n", minimum=1)
    if not V.flag(normalize, "normalize"):
        return n
    counts = np.asarray(counts.get() if hasattr(counts, "get") else counts)
    if counts.ndim != 1 or counts.dtype.kind not in "iu" or (counts < 0).any():
        raise TypeError(f"counts must be a 1-D array of ints >= 0 (class_pixel_counts), got {counts!r}")
    counts = counts.astype(np.int64)
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
