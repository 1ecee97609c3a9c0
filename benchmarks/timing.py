"""Timers for the benchmark suite.

GPU: each timed run is bracketed by two CUDA events recorded on the stream the
code under test launches to (CuPy's current stream for fcn_cuda, torch's
current stream for PyTorch), after the device has gone idle and after a
256 MiB buffer was written on that same stream, which evicts the 50 MB L2 so
no run starts with its inputs or weights cached. Inputs rotate among the
sets the caller passes (run k uses set k mod len(sets)). Warm-up runs first
(module load, cuDNN autotuning, torch.compile), then the median of the
timed runs is reported.

Host: time.perf_counter around each call, warm-up first, a small number of
repeats (the emulator is slow), optionally cut short by a time budget.
"""

import statistics
import time
from dataclasses import dataclass, field

FLUSH_BYTES = 256 << 20


def median_seconds(fn, runs):
    """Wall-clock median of `runs` calls of fn after one warm-up call (the
    standalone emulator scripts beside this package use it)."""
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@dataclass
class Timing:
    """Per-run times in milliseconds and their summary."""

    times_ms: list = field(default_factory=list)

    @property
    def n(self):
        return len(self.times_ms)

    @property
    def median_ms(self):
        return statistics.median(self.times_ms)

    @property
    def min_ms(self):
        return min(self.times_ms)

    @property
    def iqr_ms(self):
        """Spread: the distance between the first and third quartiles (0 for < 2 runs)."""
        if self.n < 2:
            return 0.0
        q = statistics.quantiles(self.times_ms, n=4, method="inclusive")
        return q[2] - q[0]


def time_host(fns, warmup=1, repeats=5, budget_s=None, min_repeats=3):
    """Times fns[k % len(fns)]() with perf_counter. After min_repeats runs,
    stops early once budget_s seconds of timed runs have passed."""
    if not fns:
        raise ValueError("fns must hold at least one callable")
    for k in range(warmup):
        fns[k % len(fns)]()
    times = []
    start = time.perf_counter()
    for k in range(repeats):
        t0 = time.perf_counter()
        fns[k % len(fns)]()
        times.append((time.perf_counter() - t0) * 1e3)
        if budget_s is not None and len(times) >= min_repeats and time.perf_counter() - start > budget_s:
            break
    return Timing(times)


class CupyClock:
    """Events, sync and L2 flush on CuPy's current stream (where fcn_cuda launches)."""

    def __init__(self, flush_bytes=FLUSH_BYTES):
        import cupy

        self.cp = cupy
        self.flush_buffer = cupy.empty(flush_bytes // 4, dtype=cupy.float32)

    def sync(self):
        self.cp.cuda.Device().synchronize()

    def flush(self, k):
        self.flush_buffer.fill(float(k % 7 + 1))

    def record(self):
        e = self.cp.cuda.Event()
        e.record(self.cp.cuda.get_current_stream())
        return e

    @staticmethod
    def elapsed_ms(start, end):
        import cupy

        return float(cupy.cuda.get_elapsed_time(start, end))


class TorchClock:
    """Events, sync and L2 flush on torch's current CUDA stream."""

    def __init__(self, device="cuda", flush_bytes=FLUSH_BYTES):
        import torch

        self.torch = torch
        self.flush_buffer = torch.empty(flush_bytes // 4, dtype=torch.float32, device=device)

    def sync(self):
        self.torch.cuda.synchronize()

    def flush(self, k):
        self.flush_buffer.fill_(float(k % 7 + 1))

    def record(self):
        e = self.torch.cuda.Event(enable_timing=True)
        e.record(self.torch.cuda.current_stream())
        return e

    @staticmethod
    def elapsed_ms(start, end):
        return float(start.elapsed_time(end))


def time_device(clock, fns, warmup=5, repeats=30, flush=True):
    """Times fns[k % len(fns)]() with the clock's events. Before each run the
    device is synchronized (nothing queued hides launch overhead) and, with
    flush, the L2 is evicted on the measured stream before the start event."""
    if not fns:
        raise ValueError("fns must hold at least one callable")
    for k in range(warmup):
        fns[k % len(fns)]()
    events = []
    for k in range(repeats):
        clock.sync()
        if flush:
            clock.flush(k)
        start = clock.record()
        fns[k % len(fns)]()
        events.append((start, clock.record()))
    clock.sync()
    return Timing([clock.elapsed_ms(s, e) for s, e in events])
