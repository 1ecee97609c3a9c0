"""fcn_cuda's kernels as PyTorch operators, with autograd through the
hand-written backward kernels, and an nn.Module FCN built from them.

    import fcn_cuda.torch as fct
    y = fct.conv2d(x, weight, bias, padding=1, relu=True)   # x: a CPU or CUDA torch tensor
    net = fct.FCN.from_model(fcn_cuda.load_model(path))    # an nn.Module: torch.optim, torch.compile

Every operator is a torch.library.custom_op in the namespace ``fcn_cuda``
(torch.ops.fcn_cuda.<name>; OPS maps names to them). Its kernel hands the
tensors to fcn_cuda.ops without a copy — CPU tensors as NumPy arrays, run by
the host emulation; CUDA tensors through DLPack as CuPy arrays, launched on
torch's current stream — and fcn_cuda.ops validates them (docs/design.md,
'Bad input') before anything runs. Each has a fake (meta) implementation that gives
the output shapes, so it traces under torch.compile. The differentiable
ones have a backward made of fcn_cuda's own backward kernels, registered as
operators too (conv2d_grad_input, ...), so the backward traces as well.
Torch computes none of the math: its part is dispatch, autograd's
bookkeeping, .contiguous() on incoming gradients and, for the loss, the
chain rule's product with the incoming scalar gradient (1.0 when the loss
itself is backpropagated).

The package: dispatch.py hands tensors to the kernels and registers the
operators (OPS); library.py holds the operators, their fakes and autograd;
functional.py the wrappers above, with PyTorch's conventions; module.py the
nn.Module. A new operator is one `op` registration in library.py plus its
fake, its autograd (if any) and its wrapper in functional.py.
"""

try:
    import torch
except ImportError as e:
    raise ImportError("fcn_cuda.torch needs PyTorch >= 2.4 (torch.library.custom_op): pip install torch, "
                      "or a CPU-only build: pip install torch --index-url https://download.pytorch.org/whl/cpu"
                      ) from e

if torch.__version__ < "2.4":
    raise ImportError(f"fcn_cuda.torch needs PyTorch >= 2.4 (torch.library.custom_op), found {torch.__version__}")

from .dispatch import OPS  # noqa: E402
from .functional import (argmax, conv2d, conv2d_relu_maxpool, conv_transpose2d, conv_transpose2d_window,  # noqa: E402
                         crop_add, dense_crf, dropout, max_pool2d, score_crop_add, softmax, softmax_cross_entropy,
                         upsample_argmax)
from .module import FCN  # noqa: E402
# The model's geometry and shapes, reachable here as they always were (fct.HEADS, fct.param_shapes, ...).
from ..geometry import AT_ONCE_SCALE, CONV1_PAD, HEADS, SKIPS, VARIANTS, VGG16_BLOCKS, head_geometry  # noqa: E402,F401
from ..model import DROPOUT_P, dropout_key  # noqa: E402,F401
from ..weights.state_dict import param_shapes, trunk_widths  # noqa: E402,F401

__all__ = ["OPS", "FCN", "conv2d", "conv2d_relu_maxpool", "conv_transpose2d", "conv_transpose2d_window", "max_pool2d",
           "crop_add", "score_crop_add", "softmax", "argmax", "upsample_argmax", "softmax_cross_entropy", "dropout",
           "dense_crf"]
