"""Argument checks shared by every public entry point (docs/design.md).

Everything is checked here, in Python, before a launch; the C++ launchers
trust their arguments. Errors name the argument and what was expected.
"""

import math
import numbers

import numpy as np

from . import _backend

INT32_LIMIT = 2**31 - 1


def _is_gpu_object(x):
    if hasattr(x, "__cuda_array_interface__"):
        return True
    device = getattr(x, "device", None)  # torch tensors
    return getattr(device, "type", None) == "cuda"


def _is_host_object(x):
    if isinstance(x, np.ndarray) or hasattr(x, "__array_interface__"):
        return True
    device = getattr(x, "device", None)
    return getattr(device, "type", None) == "cpu"


def array(x, name, *, ndim=None, dtype=np.float32, shape_hint=None, be=None):
    """`x` as an array of the active backend, or TypeError / ValueError.

    Accepts the backend's own arrays and anything its ``asarray`` takes
    (DLPack, a torch tensor on the same device); rejects arrays of the other
    backend rather than copying them silently.
    """
    be = be or _backend.active()
    if be.name == "host" and _is_gpu_object(x):
        raise TypeError(f"{name}: got an array in GPU memory, but the active backend is 'host'; "
                        "pass a NumPy array or call fcn_cuda.use_backend('cuda')")
    if be.name == "cuda" and not isinstance(x, be.xp.ndarray) and _is_host_object(x):
        raise TypeError(f"{name}: got an array in host memory, but the active backend is 'cuda'; "
                        "pass a CuPy array (cupy.asarray(x)) or call fcn_cuda.use_backend('host')")
    try:
        a = x if isinstance(x, be.xp.ndarray) else be.xp.asarray(x)
    except Exception as e:
        raise TypeError(f"{name}: cannot be read as an array ({e})") from None
    if dtype is not None and a.dtype != np.dtype(dtype):
        raise TypeError(f"{name} must be {np.dtype(dtype).name}, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        hint = f" ({shape_hint})" if shape_hint else ""
        raise ValueError(f"{name} must be {ndim}-D{hint}, got shape {tuple(a.shape)}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use ascontiguousarray), got strides {a.strides}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {tuple(a.shape)})")
    if a.size > INT32_LIMIT:
        raise ValueError(f"{name} has {a.size} elements; the kernels index with 32-bit ints "
                         f"(at most {INT32_LIMIT})")
    return a


def integer(v, name, *, minimum=None, maximum=None):
    """`v` as a Python int within [minimum, maximum]; bools are refused."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    v = int(v)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


def flag(v, name):
    """`v` as a Python bool; a bool or NumPy bool only (1, "yes", None are refused, not read as truthy)."""
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    return bool(v)


def pair(v, name, *, minimum=None):
    """An int or a pair of ints as a (vertical, horizontal) tuple."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
        return (integer(v[0], f"{name}[0]", minimum=minimum), integer(v[1], f"{name}[1]", minimum=minimum))
    v = integer(v, name, minimum=minimum)
    return (v, v)


def fits_int32(count, what):
    """Refuses an output or intermediate whose element count overflows 32-bit indexing."""
    if count > INT32_LIMIT:
        raise ValueError(f"{what} would have {count} elements; the kernels index with 32-bit ints "
                         f"(at most {INT32_LIMIT})")


def choice(v, name, options):
    if v not in options:
        raise ValueError(f"{name} must be one of {sorted(options)}, got {v!r}")
    return v


def real(v, name):
    """A finite real number (not a bool) as a Python float, or TypeError / ValueError."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):  # math, not NumPy: torch.compile traces this check in fcn_cuda.torch's wrappers
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def shape4(shape, name, layout="(N, C, H, W)"):
    """A 4-tuple of positive ints (an array shape the caller describes)."""
    if not isinstance(shape, (tuple, list)) or len(shape) != 4:
        raise ValueError(f"{name} must be a 4-tuple {layout}, got {shape!r}")
    return tuple(integer(v, f"{name}[{i}]", minimum=1) for i, v in enumerate(shape))
