"""Segmentation metrics, as the FCN reference computes them.

One confusion matrix is accumulated over a whole set (the kernel in
csrc/kernels/metrics.cuh, fcn_cuda.ops.metrics); the four scores come from it:
pixel accuracy, mean accuracy, mean IU and frequency-weighted IU.
"""

import numpy as np

from .ops.metrics import MAX_CLASSES, confusion_matrix

__all__ = ["confusion_matrix", "scores", "MAX_CLASSES"]


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
