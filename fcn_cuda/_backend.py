"""Which build runs the kernels: ``cuda`` (nvcc, CuPy arrays) or ``host``
(the same kernels under the CUDA emulation, NumPy arrays).

``backend()`` is ``'cuda'`` when ``fcn_cuda._cuda`` imports and CuPy sees a
GPU, else ``'host'``; ``FCN_CUDA_BACKEND=host|cuda`` or ``use_backend()``
override that.

``FCN_CUDA_POISON=1`` (the test suite sets it) fills every array the API
allocates with NaN (all bits set for integer arrays) before a kernel sees
it, so an element a kernel fails to write shows up in its result.
"""

import contextlib
import importlib
import os
import threading

import numpy as np


class Backend:
    """One build of the kernels plus the array module that feeds it."""

    def __init__(self, name, ext, xp):
        self.name = name
        self.ext = ext
        self.xp = xp
        self._wgmma_code = {}  # device -> wgmma_code_loaded()

    def __repr__(self):
        return f"<fcn_cuda backend {self.name!r}>"

    def ptr(self, a):
        return a.ctypes.data if self.name == "host" else a.data.ptr

    def stream(self):
        """The handle launches go to: CuPy's current stream, 0 on the host."""
        if self.name == "host":
            return 0
        return self.xp.cuda.get_current_stream().ptr

    def empty(self, shape, dtype=np.float32):
        """Every output and workspace the API allocates comes from here; poisoned under FCN_CUDA_POISON=1."""
        a = self.xp.empty(shape, dtype=dtype)
        if _POISON:
            if np.dtype(dtype).kind == "f":
                a.fill(np.nan)
            else:
                a.reshape(-1).view(np.uint8).fill(0xFF)
        return a

    def owns(self, a):
        """True when `a` is an array this backend's kernels can read."""
        return isinstance(a, self.xp.ndarray)

    def to_numpy(self, a):
        return a if self.name == "host" else self.xp.asnumpy(a)

    def compute_capability(self):
        """The current device's compute capability as an int (90 for an
        H100, 80 for an A100), or None on the host: the emulator has no
        device and runs every kernel, sm_90a's included. Variant policies
        read it (ops.conv2d's wgmma variants need 90)."""
        if self.name == "host":
            return None
        return int(self.xp.cuda.Device().compute_capability)

    def wgmma_code_loaded(self):
        """Whether the code the driver loaded for the current device is
        sm_90a's, the only code in which the wgmma kernels are not traps (a
        build for FCN_CUDA_ARCH=90 without 90a has plain sm_90 code): a
        one-thread probe, run once per device. Always True on the host."""
        if self.name == "host":
            return True
        device = self.xp.cuda.Device().id
        if device not in self._wgmma_code:
            self._wgmma_code[device] = bool(self.ext.conv2d_wgmma_code_loaded())
        return self._wgmma_code[device]


_host = None
_cuda = None
_cuda_error = None
_active = None


def _poison_from_env():
    value = os.environ.get("FCN_CUDA_POISON", "").strip()
    if value not in ("", "0", "1"):
        raise RuntimeError(f"FCN_CUDA_POISON must be 0 or 1, got {value!r}")
    return value == "1"


_POISON = _poison_from_env()
_local = threading.local()  # .backend: a `using` block's backend, for this thread only


SANITIZED_HOST_MODULES = {"1": "_host_asan", "thread": "_host_tsan"}


def host_module():
    """The emulator build that FCN_CUDA_SANITIZE selects: 1 is the ASan/UBSan
    build, thread the ThreadSanitizer one (each built by `FCN_CUDA_SANITIZE=...
    python setup.py build_ext --inplace` and run with its runtime preloaded;
    see docs/emulator.md), unset the optimized _host."""
    value = os.environ.get("FCN_CUDA_SANITIZE", "").strip()
    if value in ("", "0"):
        return "_host"
    if value not in SANITIZED_HOST_MODULES:
        raise RuntimeError(f"FCN_CUDA_SANITIZE must be 1 (ASan + UBSan) or thread (ThreadSanitizer), got {value!r}")
    return SANITIZED_HOST_MODULES[value]


def _host_backend():
    global _host
    if _host is None:
        _host = Backend("host", importlib.import_module(f"fcn_cuda.{host_module()}"), np)
    return _host


def _cuda_backend():
    """The CUDA backend, or None with the reason recorded in _cuda_error."""
    global _cuda, _cuda_error
    if _cuda is not None or _cuda_error is not None:
        return _cuda
    try:
        ext = importlib.import_module("fcn_cuda._cuda")
    except ImportError as e:
        _cuda_error = (f"fcn_cuda._cuda is not built ({e}); it is built when nvcc is found at "
                       "install time (set CUDA_HOME or put nvcc on PATH, then reinstall)")
        return None
    try:
        import cupy
    except ImportError:
        _cuda_error = "CuPy is not installed (pip install 'fcn_cuda[cuda13]' or cupy-cuda12x)"
        return None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CuPy raises its own CUDARuntimeError when no driver is present
        _cuda_error = f"CuPy finds no usable GPU ({e})"
        return None
    if count == 0:
        _cuda_error = "CuPy finds no GPU on this machine"
        return None
    local_rank = os.environ.get("LOCAL_RANK", "")
    if local_rank.isdigit():  # a torchrun rank: a GPU per local rank (more ranks than GPUs share them)
        cupy.cuda.Device(int(local_rank) % count).use()
    _cuda = Backend("cuda", ext, cupy)
    return _cuda


def cuda_unavailable_reason():
    """Why the CUDA backend cannot be used, or None when it can."""
    _cuda_backend()
    return _cuda_error


def by_name(name):
    """The Backend for a name as use_backend and using take it: a str, any case, blanks around it ignored."""
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a str, got {type(name).__name__}")
    name = name.strip().lower()
    if name == "host":
        return _host_backend()
    if name == "cuda":
        b = _cuda_backend()
        if b is None:
            raise RuntimeError(f"the 'cuda' backend is not available: {_cuda_error}")
        return b
    raise ValueError(f"backend must be 'host' or 'cuda', got {name!r}")


def active():
    """The Backend object in use (chosen on first use); inside a `using`
    block, that block's, in its thread only."""
    global _active
    scoped = getattr(_local, "backend", None)
    if scoped is not None:
        return scoped
    if _active is None:
        env = os.environ.get("FCN_CUDA_BACKEND", "").strip().lower()
        if env:
            _active = by_name(env)
        else:
            _active = _cuda_backend() or _host_backend()
    return _active


def backend():
    """The active backend's name: ``'cuda'`` or ``'host'``."""
    return active().name


def use_backend(name):
    """Switch the active backend to ``'host'`` or ``'cuda'``; returns the previous name.

    Asking for ``'cuda'`` where it cannot run raises RuntimeError saying why.
    """
    global _active
    previous = _active.name if _active is not None else None
    _active = by_name(name)
    return previous


@contextlib.contextmanager
def using(name):
    """Makes backend `name` the active one inside the block, for the calling
    thread only (other threads keep theirs): fcn_cuda.torch runs each op on
    the backend of its tensors' device, also from autograd's worker threads."""
    previous = getattr(_local, "backend", None)
    _local.backend = by_name(name)
    try:
        yield _local.backend
    finally:
        _local.backend = previous


def set_emulator_workers(n):
    """Worker threads of the host emulation: 0 = one per core, 1 = deterministic order."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    _host_backend().ext.set_workers(n)


def emulator_workers():
    return _host_backend().ext.workers()


def count_bank_conflicts(on):
    """Switches the emulator's shared-memory bank-conflict counter on or off
    (off at start: it logs every counted access). What it counts, and its
    model of a warp-wide access, are described in csrc/emu/smem.h."""
    if not isinstance(on, bool):
        raise TypeError(f"on must be a bool, got {on!r}")
    _host_backend().ext.set_counting(on)


def emulator_counters():
    """The emulator's bank-conflict counts since the last reset, as
    {kernel: {kind: {"accesses", "wavefronts", "ideal", "conflicts", "max_way", "worst_at"}}}:
    per kernel (its launch name) and kind of access ("shared" for
    fcn::smem_load/smem_store, "ldmatrix", "cp.async", "wmma" a lower bound),
    the warp-wide accesses counted, the shared-memory wavefronts they took,
    the wavefronts they would take without conflicts, the difference, the
    worst n-way conflict of any one access, and where it was made: "file:line"
    (file from csrc/ on) of the first such access by file and line, or None
    where there is no conflict or the instruction carries no call site
    (ldmatrix, wmma)."""
    out = {}
    for kernel, kind, accesses, wavefronts, ideal, max_way, file, line in _host_backend().ext.counters():
        where = None
        if file is not None and max_way > 1:
            where = f"{file[file.rfind('csrc/'):] if 'csrc/' in file else file.rsplit('/', 1)[-1]}:{line}"
        out.setdefault(kernel, {})[kind] = {"accesses": accesses, "wavefronts": wavefronts, "ideal": ideal,
                                            "conflicts": wavefronts - ideal, "max_way": max_way,
                                            "worst_at": where}
    return out


def reset_emulator_counters():
    """Sets every bank-conflict count of emulator_counters() back to zero."""
    _host_backend().ext.reset_counters()
