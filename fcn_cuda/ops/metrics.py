"""The confusion matrix of a segmentation (csrc/kernels/metrics.cuh), summed
on the device over a whole set; fcn_cuda.metrics scores it."""

import numpy as np

from .. import _backend
from .. import _validate as V

__all__ = ["confusion_matrix", "MAX_CLASSES"]

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
