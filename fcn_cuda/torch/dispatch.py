"""Tensors in, tensors out: how fcn_cuda.torch hands torch tensors to fcn_cuda.ops
without a copy (CPU tensors as NumPy arrays, CUDA ones through DLPack as CuPy
arrays on torch's current stream), and registers a function on arrays as a
torch.library.custom_op in the namespace fcn_cuda (OPS)."""

import contextlib
import functools
import inspect

import numpy as np
import torch

from .. import _backend

OPS = {}  # name -> torch.library.CustomOpDef, registered in the namespace fcn_cuda


def device_backend(device):
    """fcn_cuda's backend for a torch device, active in this thread for a
    with-block; on a GPU, CuPy launches go to torch's current stream of that device."""
    return _backend.using("host") if device.type == "cpu" else _on_cuda(device)


@contextlib.contextmanager
def _on_cuda(device):
    with _backend.using("cuda") as be:
        cupy = be.xp
        ptr = torch.cuda.current_stream(device).cuda_stream
        stream = cupy.cuda.Stream.null if ptr == 0 else cupy.cuda.ExternalStream(ptr, device.index)
        with cupy.cuda.Device(device.index), stream:
            yield


def to_array(t, name, device):
    """A CPU tensor as a NumPy array, a CUDA tensor as a CuPy array (DLPack): the same memory."""
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the first tensor argument is on {device}: "
                         "an fcn_cuda op runs on one device")
    t = t.detach()
    try:
        return t.numpy() if device.type == "cpu" else _backend.active().xp.from_dlpack(t)
    except (TypeError, RuntimeError, BufferError) as e:
        raise TypeError(f"{name}: a {t.dtype} tensor cannot be handed to the kernels ({e})") from None


def to_tensor(a):
    return torch.from_numpy(a) if isinstance(a, np.ndarray) else torch.from_dlpack(a)


def on_tensors(fn):
    """fn, written on fcn_cuda arrays, as a kernel on torch tensors: the
    tensors go in and the results come out without a copy."""
    names = tuple(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    def kernel(*args):  # the dispatcher passes every argument positionally (no schema has keyword-only ones)
        device = next(a.device for a in args if isinstance(a, torch.Tensor))
        with device_backend(device):
            out = fn(*(to_array(a, k, device) if isinstance(a, torch.Tensor) else a for k, a in zip(names, args)))
            return tuple(map(to_tensor, out)) if isinstance(out, tuple) else to_tensor(out)

    return kernel


def op(schema):
    """Registers the decorated function (on arrays) as fcn_cuda::<name> with
    this schema, for CPU and CUDA tensors; returns the CustomOpDef."""
    name, args = schema.split("(", 1)

    def register(fn):
        op = torch.library.custom_op(f"fcn_cuda::{name}", on_tensors(fn), mutates_args=(),
                                     device_types=("cpu", "cuda"), schema="(" + args)
        OPS[name] = op
        return op

    return register


def no_backward(what):
    """A backward that refuses: fcn_cuda has no kernel for this gradient."""
    def backward(ctx, *grads):
        raise NotImplementedError(f"fcn_cuda has no backward kernel for {what}")
    return backward


def check_tensors(**tensors):
    """TypeError unless each argument is a torch.Tensor (None where optional)."""
    for name, (t, optional) in tensors.items():
        if not (isinstance(t, torch.Tensor) or (optional and t is None)):
            kind = "a torch.Tensor" + (" or None" if optional else "")
            raise TypeError(f"{name} must be {kind}, got {type(t).__name__}")
