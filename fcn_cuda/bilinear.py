"""The bilinear upsampling filter of the FCN reference (surgery.upsample_filt)."""

import numpy as np

from . import _validate as V

__all__ = ["bilinear_weights"]


def bilinear_weights(channels, kernel_size):
    """channels x channels x k x k float32 weights for conv_transpose2d that
    upsample each channel bilinearly by (k + 1) // 2, exactly as the reference:

        factor = (k + 1) // 2
        center = factor - 1 if k is odd else factor - 0.5
        filt[i, j] = (1 - |i - center| / factor) * (1 - |j - center| / factor)
        W[c, c] = filt, all off-diagonal filters zero

    (k = 4 gives taps .25 .75 .75 .25). The weights are per-channel, so
    ops.conv_transpose2d picks its 'bilinear' variant for them.
    """
    channels = V.integer(channels, "channels", minimum=1)
    k = V.integer(kernel_size, "kernel_size", minimum=1)
    V.fits_int32(channels * channels * k * k, "the weights")
    factor = (k + 1) // 2
    center = factor - 1 if k % 2 == 1 else factor - 0.5
    taps = 1 - np.abs(np.arange(k) - center) / factor  # float64, as the reference computes it
    w = np.zeros((channels, channels, k, k), dtype=np.float32)
    w[np.arange(channels), np.arange(channels)] = np.outer(taps, taps)
    return w
