"""The rows the benchmarks measure, one module per op family (as fcn_cuda/ops
has them): each builder returns Cases, fcn_cuda's callables and PyTorch's on
the same inputs. suite.py builds every FCN-8s layer's; op.py one op's
variants at the shapes it is given.

TOLERANCE is the numerical contract (docs/design.md): the relative L2 error
each precision must stay within against PyTorch in float64.
"""

from dataclasses import dataclass
from typing import Callable, List, Optional

TOLERANCE = {"fp32": 1e-5, "tf32": 2e-3, "bf16": 1e-2}


@dataclass
class Case:
    """One row to measure: fcn_cuda's callables and PyTorch's, one per input set."""

    name: str
    kind: str
    group: str
    config: str
    layer: str
    ours: str
    ref: str
    shape: str
    ours_fns: List[Callable]
    ref_fns: List[Callable]
    ref_precision: str = "fp32"
    flops: Optional[float] = None
    bytes: Optional[float] = None
    note: str = ""
    ref_on_host: bool = False  # the reference is CPU code (pydensecrf): timed on the host clock on any backend
    ref64: Optional[Callable] = None  # PyTorch in float64 on input set 0: what op.py checks each variant against

    @property
    def ours_key(self):
        return (self.config, self.layer, self.ours)

    @property
    def ref_key(self):
        return (self.config, self.layer, self.ref)


def row_name(tag, layer, ours, ref):
    return f"{tag}/{layer}/{ours}/{ref}"


def plain_ref(ctx):
    return "torch-fp32" if ctx.gpu else "torch-cpu"


def fmt(shape):
    return "x".join(str(v) for v in shape)
