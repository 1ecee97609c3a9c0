"""The benchmarks' context: the backend, both frameworks' arrays and clocks,
and the row filter, for the suite (suite.py) and the one-op runner (op.py)."""

import contextlib

import numpy as np

import fcn_cuda
from fcn_cuda import _backend

from .timing import CupyClock, TorchClock, time_device, time_host


class Context:
    """The backend, both frameworks' arrays and clocks, and the row filter."""

    def __init__(self, backend, cfg, only=(), log=print, threads=1):
        import torch

        self._previous_backend = fcn_cuda.use_backend(backend)
        self.be = _backend.active()
        self.gpu = self.be.name == "cuda"
        self.cfg = cfg
        self.only = tuple(only or ())
        self.log = log
        self.torch = torch
        self.skipped = []
        self.failed = []
        self.rng = np.random.default_rng(2024)
        if self.gpu:
            if not torch.cuda.is_available():
                raise RuntimeError("the cuda backend is active but this PyTorch has no CUDA: the reference cannot run")
            self.device = torch.device("cuda")
            torch.backends.cudnn.benchmark = True
            self.ours_clock = CupyClock()
            self.ref_clock = TorchClock()
        else:
            # Both sides get the same number of CPU threads; one by default: on
            # a shared CPU, a multi-threaded op waits for its slowest thread's
            # time slice (seen here: a 10 us torch conv took 24 ms with 2 threads).
            self.device = torch.device("cpu")
            self._restore = (fcn_cuda.emulator_workers(), torch.get_num_threads())
            fcn_cuda.set_emulator_workers(threads)
            torch.set_num_threads(threads)

    def close(self):
        """Puts back the backend and the thread settings the run changed."""
        if not self.gpu and getattr(self, "_restore", None):
            fcn_cuda.set_emulator_workers(self._restore[0])
            self.torch.set_num_threads(self._restore[1])
            self._restore = None
        if self._previous_backend is not None:
            fcn_cuda.use_backend(self._previous_backend)
            self._previous_backend = None

    # ---- what runs
    def wants(self, name):
        return not self.only or any(s in name for s in self.only)

    def skip(self, name, reason):
        self.skipped.append({"name": name, "reason": reason})
        self.log(f"  skipped {name}: {reason}")

    # ---- data: random (never zeros), the same values on both sides
    def randn(self, shape, scale=1.0):
        return (self.rng.standard_normal(shape, dtype=np.float32) * np.float32(scale))

    def pair(self, a):
        """(fcn_cuda array, torch tensor) holding the same values."""
        return self.be.xp.asarray(a), self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def input_sets(self, shape, scale=1.0):
        return [self.pair(self.randn(shape, scale)) for _ in range(self.cfg.sets)]

    def f64(self, t):
        """A torch tensor's values in float64 on the CPU, for the float64 reference."""
        return t.detach().to("cpu", self.torch.float64)

    # ---- the reference's numeric mode
    @contextlib.contextmanager
    def ref_mode(self, precision):
        """PyTorch without autograd; on a GPU, TF32 for convolutions and
        matmuls on ('tf32') or off ('fp32'), set through the legacy flags only
        (mixing them with the fp32_precision API makes torch raise)."""
        torch = self.torch
        if precision not in ("fp32", "tf32", "bf16"):
            raise ValueError(f"unknown precision {precision!r}")
        with torch.inference_mode():
            if not self.gpu:
                yield
                return
            saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
            try:
                yield
            finally:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

    # ---- clocks
    def time_ours(self, fns):
        c = self.cfg
        if self.gpu:
            return time_device(self.ours_clock, fns, c.warmup, c.repeats)
        return time_host(fns, c.warmup, c.repeats, c.budget_s)

    def time_ref(self, fns, precision, on_host=False):
        c = self.cfg
        with self.ref_mode(precision):
            if self.gpu and not on_host:
                return time_device(self.ref_clock, fns, c.warmup, c.repeats)
            return time_host(fns, c.warmup, c.repeats, c.budget_s)

    def free(self):
        """Gives cached device memory back between groups of rows."""
        if self.gpu:
            self.be.xp.get_default_memory_pool().free_all_blocks()
            self.torch.cuda.empty_cache()

    def ours_numpy(self, out):
        if isinstance(out, tuple):
            return tuple(self.ours_numpy(o) for o in out)
        return np.asarray(self.be.to_numpy(out)) if not isinstance(out, np.ndarray) else out

    def ref_numpy(self, out):
        if isinstance(out, tuple):
            return tuple(self.ref_numpy(o) for o in out)
        if isinstance(out, np.ndarray):
            return out
        if hasattr(out, "detach"):
            return out.detach().cpu().numpy()
        return np.asarray(self.be.to_numpy(out))  # fcn_cuda's arrays or a number (the dispatch rows' direct calls)
