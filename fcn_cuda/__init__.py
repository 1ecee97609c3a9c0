"""fcn_cuda: FCN semantic segmentation from handwritten CUDA kernels.

The kernels in csrc/ are built twice: for NVIDIA GPUs (``fcn_cuda._cuda``,
CuPy arrays) and for any CPU under a host emulation of the CUDA execution
model (``fcn_cuda._host``, NumPy arrays). ``backend()`` says which one runs.
"""

from ._backend import (backend, count_bank_conflicts, cuda_unavailable_reason, emulator_counters, emulator_workers,
                       reset_emulator_counters, set_emulator_workers, use_backend)
from .bilinear import bilinear_weights
from . import ops
from .model import FCN
from .weights import load_model, read_caffemodel
from .crf import dense_crf
from .inference import infer
from .backward import loss_and_grads
from .training import TrainConfig, evaluate, train

__version__ = "0.1.0"

__all__ = [
    "backend",
    "use_backend",
    "cuda_unavailable_reason",
    "set_emulator_workers",
    "emulator_workers",
    "count_bank_conflicts",
    "emulator_counters",
    "reset_emulator_counters",
    "bilinear_weights",
    "ops",
    "FCN",
    "load_model",
    "read_caffemodel",
    "infer",
    "dense_crf",
    "loss_and_grads",
    "train",
    "evaluate",
    "TrainConfig",
]
