"""Segmentation metrics, as the FCN reference computes them.

One confusion matrix is accumulated over a whole set (the kernel in
csrc/kernels/metrics.cuh); the four scores come from it:
pixel accuracy, mean accuracy, mean IU and frequency-weighted IU.
"""

import numpy as np

from . import _backend
from . import _validate as V

MAX_CLASSES = 64  # the kernel's shared-memory histogram holds C x C ints


def confusion_matrix(gt, pred, num_classes, hist=None):
    """hist[gt, pred] over pixels with 0 <= gt < num_classes (255 is ignored).

    gt and pred: int32 label arrays of one shape, on the active backend.
    `hist` (C x C uint64, same backend) is accumulated into when given,
    so a whole set is summed without leaving the device. Returns hist.
    """
    be = _backend.active()
    num_classes = V.integer(num_classes, "num_classes", minimum=1, maximum=MAX_CLASSES)
    gt = V.array(gt, "gt", dtype=np.int32, be=be)
    pred = V.array(pred, "pred", dtype=np.int32, be=be)
    if gt.shape != pred.shape:
        raise ValueError(f"gt {tuple(gt.shape)} and pred {tuple(pred.shape)} must have the same shape")
    if hist is None:
        hist = be.xp.zeros((num_classes, num_classes), dtype=np.uint64)
    else:
        hist = V.array(hist, "hist", ndim=2, dtype=np.uint64, be=be)
        if hist.shape != (num_classes, num_classes):
            raise ValueError(f"hist must be {num_classes} x {num_classes}, got {tuple(hist.shape)}")
    be.ext.confusion_matrix(be.ptr(gt), be.ptr(pred), gt.size, num_classes, be.ptr(hist), be.stream())
    return hist


def scores(hist):
    """{'pixel_acc', 'mean_acc', 'mean_iu', 'fw_iu'} from a confusion matrix (NumPy float64 math)."""
    hist = np.asarray(hist.get() if hasattr(hist, "get") else hist, dtype=np.float64)
    if hist.ndim != 2 or hist.shape[0] != hist.shape[1]:
        raise ValueError(f"hist must be a square matrix, got shape {hist.shape}")
    total = hist.sum()
    diag = np.diag(hist)
    gt_count, pred_count = hist.sum(1), hist.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = diag / gt_count
        iu = diag / (gt_count + pred_count - diag)
        freq = gt_count / total
        return {
            "pixel_acc": float(diag.sum() / total),
            "mean_acc": float(np.nanmean(acc)),
            "mean_iu": float(np.nanmean(iu)),
            "fw_iu": float((freq[freq > 0] * iu[freq > 0]).sum()),
        }
