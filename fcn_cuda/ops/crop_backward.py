"""The gradients of crop_add and of the fused score head (csrc/kernels/crop_backward.cuh).
"""

from .. import _backend
from .. import _validate as V
from .conv2d_backward import launch_bias_grad, launch_grad_weight
from .crop import crop_offset

__all__ = ["crop_backward", "score_crop_add_backward"]

def crop_backward(grad, b_shape, offset):
    """The gradient of ``crop_add(a, b, offset)`` with respect to b: grad
    (N x C x H x W, a's shape) placed at offset in zeros of b_shape
    (N, C, Hb, Wb). (The gradient for a is grad itself.)"""
    be = _backend.active()
    grad = V.array(grad, "grad", ndim=4, shape_hint="N x C x H x W", be=be)
    n, c, hb, wb = V.shape4(b_shape, "b_shape")
    if grad.shape[:2] != (n, c):
        raise ValueError(f"grad must have b_shape's N x C {(n, c)}, got shape {tuple(grad.shape)}")
    h, w = grad.shape[2:]
    oy, ox = crop_offset(offset, h, w, hb, wb, "grad", "b_shape")
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
    scale = V.real(scale, "scale")
    oy, ox = crop_offset(offset, h, wd, hf, wf, "grad_out", "feat")
    V.fits_int32(feat.size + 255, "grad_feat (rounded up to whole blocks)")
    dfeat = be.empty(feat.shape)
    g = be.ext.ScoreCropShape(grad_out.shape, feat.shape, (oy, ox))
    be.ext.score_feat_grad(g, be.ptr(grad_out), be.ptr(w), be.ptr(dfeat), scale, be.stream())
    dw = launch_grad_weight(be, feat, grad_out, None, k, 1, 1, (1, 1), (-oy, -ox), alpha=scale)
    return dfeat, dw, launch_bias_grad(be, grad_out, None)
