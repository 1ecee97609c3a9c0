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

# ---- max_pool2d

# ---- conv_transpose2d and bilinear upsampling

# ---- crop_add and the fused score head

# ---- softmax / argmax

# ---- preprocessing
