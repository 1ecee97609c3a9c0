"""Python side of csrc/kernels/probes.cuh: kernels that test the execution
model itself (tests/kernels/test_emulator.py). Not re-exported by fcn_cuda.ops: they
exist to fault, race and hang on purpose."""

import numpy as np

from .. import _backend


def _be():
    return _backend.active()


def barrier_rotate(x, rounds):
    be = _be()
    y = be.empty(x.size)
    be.ext.barrier_rotate(be.ptr(x), be.ptr(y), x.size, rounds, be.stream())
    return y


def _one_warp(kernel):
    """Launches a one-warp probe that only writes y (32 floats)."""
    be = _be()
    y = be.empty(32)
    getattr(be.ext, kernel)(be.ptr(y), be.stream())
    return y


def divergent_barrier():
    return _one_warp("divergent_barrier")


def early_exit_barrier():
    return _one_warp("early_exit_barrier")


def missing_lane_shuffle():
    return _one_warp("missing_lane_shuffle")


def deadlock():
    return _one_warp("deadlock_probe")


def atomics(v, bins, cas_threads):
    """atomics_probe over the int32 values v: every thread adds, maxes and
    float-adds; the first cas_threads (0 .. v.size) also run a CAS loop, whose
    cost on a GPU grows as cas_threads squared. Returns (counts, maximum, the
    CAS count, the float sum)."""
    if not 0 <= cas_threads <= v.size:
        raise ValueError(f"cas_threads must be in 0 .. {v.size}, got {cas_threads}")
    be = _be()
    counts = be.xp.zeros(bins, dtype=np.int32)
    maximum = be.xp.full(1, -(2**31), dtype=np.int32)
    cas = be.xp.zeros(1, dtype=np.int32)
    fsum = be.xp.zeros(1, dtype=np.float32)
    be.ext.atomics_probe(be.ptr(v), v.size, bins, cas_threads, be.ptr(counts), be.ptr(maximum), be.ptr(cas), be.ptr(fsum),
                         be.stream())
    return counts, int(maximum[0]), int(cas[0]), float(fsum[0])


def atomic_sum(x):
    be = _be()
    out = be.xp.zeros(1, dtype=np.float32)
    be.ext.atomic_sum(be.ptr(x), x.size, be.ptr(out), be.stream())
    return out


def tf32_round(x):
    be = _be()
    y = be.empty(x.size)
    be.ext.tf32_round(be.ptr(x), be.ptr(y), x.size, be.stream())
    return y


def index(grid, block):
    be = _be()
    total = int(np.prod(grid)) * int(np.prod(block))
    out = be.xp.full(6 * total, -1, dtype=np.int32)
    be.ext.index_probe(be.ptr(out), *grid, *block, be.stream())
    return out.reshape(total, 6)


def dynamic_smem(x, threads):
    be = _be()
    y = be.empty(x.size)
    misalignment = be.xp.full(1, 99, dtype=np.uint32)
    be.ext.dynamic_smem_probe(be.ptr(x), be.ptr(y), be.ptr(misalignment), x.size // (4 * threads), threads,
                              be.stream())
    return y, int(misalignment[0])


OUT_OF_BOUNDS = {"global": 0, "static_shared": 1, "dynamic_shared": 2, "misaligned_float4": 3, "misaligned_wmma": 4}


def out_of_bounds(kind, n=1000):
    be = _be()
    x = be.xp.arange(n, dtype=np.float32)
    y = be.empty(64)
    be.ext.out_of_bounds_probe(be.ptr(x), be.ptr(y), n, OUT_OF_BOUNDS[kind], be.stream())
    return y


def crf_math(x, fn):
    """The dense CRF's own exp or log (fn 'exp' or 'log', csrc/kernels/crf.cuh) of the float32 array x."""
    if fn not in ("exp", "log"):
        raise ValueError(f"fn must be 'exp' or 'log', got {fn!r}")
    be = _be()
    y = be.empty(x.size)
    be.ext.crf_math_probe(be.ptr(x), be.ptr(y), x.size, fn == "log", be.stream())
    return y


RACES = {"shared": 0, "global": 1, "warp": 2}


def race(kind, ordered=False):
    """A data race on a __shared__ word between two warps of a block
    ('shared') or two lanes of a warp ('warp'), or on a global word between
    two blocks ('global'); ordered=True puts __syncthreads / __syncwarp
    between the shared accesses, or makes the global ones atomicAdd: no race.
    Returns y[0]: 1.0 ('shared', 'warp') or 2.0 ('global') unless the race
    went the other way."""
    be = _be()
    y = be.xp.zeros(1, dtype=np.float32)
    be.ext.race_probe(be.ptr(y), RACES[kind], bool(ordered), be.stream())
    return float(y[0])


def failing_blocks(y, blocks, fail):
    """failing_block_probe: `blocks` blocks of y.size // blocks threads, each
    thread writing y[its index] = 1; block `fail` (-1: none) meets a divergent
    barrier, so the launch raises RuntimeError. Returns nothing: y is written."""
    be = _be()
    be.ext.failing_block_probe(be.ptr(y), blocks, y.size // blocks, fail, be.stream())


CP_ASYNC = {"copy": 0, "groups": 1, "read_early": 2, "group_early": 3, "ldmatrix_early": 4, "plain_read_early": 5,
            "unwaited": 6, "ordered": 7, "overwrite": 8}


def cp_async(src, mode, bytes=16, src_bytes=None, cg=False):
    """cp_async_probe (probes.cuh) on 64 threads with `src` (at least 512
    floats); returns its 512-float output, -1 where nothing was written."""
    be = _be()
    out = be.xp.full(512, -1, dtype=np.float32)
    be.ext.cp_async_probe(be.ptr(src), be.ptr(out), bytes, bytes if src_bytes is None else src_bytes, bool(cg),
                          CP_ASYNC[mode], be.stream())
    return out


def ldmatrix(m, rows, num, trans=False):
    """ldmatrix_probe: m is 128 rows x 8 uint16, rows[l] the row whose address
    lane l gives. Returns the 32 x 4 uint32 registers (past num: 0)."""
    be = _be()
    out = be.xp.zeros((32, 4), dtype=np.uint32)
    be.ext.ldmatrix_probe(be.ptr(m), be.ptr(rows), be.ptr(out), num, bool(trans), be.stream())
    return out


MMA = {"tf32": 0, "bf16": 1}


def mma(a, b, c, kind):
    """mma_probe: a (32 x 4 uint32), b (32 x 2 uint32), c (32 x 4 float32)
    are each lane's fragment registers; returns D's (32 x 4 float32)."""
    be = _be()
    d = be.xp.zeros((32, 4), dtype=np.float32)
    be.ext.mma_probe(be.ptr(a), be.ptr(b), be.ptr(c), be.ptr(d), MMA[kind], be.stream())
    return d


def smem_bank(stride, width=1, store=False, repeat=1):
    """smem_bank_probe: lane l of one warp loads (or stores) the width-float
    vector at float index l * stride * width, `repeat` times."""
    be = _be()
    out = be.empty(32)
    be.ext.smem_bank_probe(be.ptr(out), stride, width, bool(store), repeat, be.stream())
    return out


# ---- the Hopper instructions (csrc/kernels/probes_sm90.cuh)
def mbarrier_trace():
    """mbarrier_trace_probe: test_wait's answers (parity 0, then 1) after each
    step of one thread's walk through three phases, then 1 once a wait for a
    completed phase has returned (int32[19])."""
    be = _be()
    out = be.xp.full(19, -1, dtype=np.int32)
    be.ext.mbarrier_trace_probe(be.ptr(out), be.stream())
    return out


def mbarrier_pipeline(x, consumer_waits=True):
    """mbarrier_pipeline_probe over x (float32, 32 per round): y[l] = sum over
    rounds r of (r + 1) * x[32 r + (l + 1) % 32], through a 2-stage ring.
    consumer_waits=False leaves out the consumers' wait: a data race."""
    if x.ndim != 1 or x.size == 0 or x.size % 32:
        raise ValueError(f"x must hold 32 floats per round, got shape {tuple(x.shape)}")
    be = _be()
    y = be.empty(32)
    be.ext.mbarrier_pipeline_probe(be.ptr(x), be.ptr(y), x.size // 32, bool(consumer_waits), be.stream())
    return y


MBARRIER_FAULTS = {"never_arrives": 0, "spins_forever": 1, "bytes_never_arrive": 2, "init_count_0": 3,
                   "not_initialized": 4, "too_many_arrivals": 5, "misaligned": 6, "tx_count_overflow": 7}


def mbarrier_fault(kind):
    """mbarrier_fault_probe: a deadlock or a use the PTX ISA leaves undefined;
    the emulator must raise. Not for a GPU (it would hang or do anything)."""
    if kind not in MBARRIER_FAULTS:
        raise ValueError(f"kind must be one of {sorted(MBARRIER_FAULTS)}, got {kind!r}")
    be = _be()
    y = be.empty(32)
    be.ext.mbarrier_fault_probe(MBARRIER_FAULTS[kind], be.ptr(y), be.stream())
    return y


TMA_FAULTS = {"none": 0, "read_early": 1, "write_early": 2, "reload_early": 3, "misaligned_map": 4,
              "unencoded_map": 5, "wrong_barrier": 6}


def tma_load(g, dims, strides, box, coords, swizzle=0, rank=None, expect_bytes=None, dst_offset=0, nbytes=None,
             fault="none", bf16=False):
    """tma_load_probe: encodes the tensor map of g (dims innermost first, in
    elements; strides in bytes of dimensions 1..; box innermost first), loads
    the box at coords into shared memory prefilled with 0xab, awaited on an
    mbarrier armed for expect_bytes (default: the box's bytes), and returns
    nbytes (default: the box's) of shared memory from dst_offset (uint8).
    rank: which tma_load_Nd issues it (default: the map's). A fault other
    than "none" is for the host build only."""
    if fault not in TMA_FAULTS:
        raise ValueError(f"fault must be one of {sorted(TMA_FAULTS)}, got {fault!r}")
    box_bytes = int(np.prod(box)) * (2 if bf16 else 4)
    rank = len(dims) if rank is None else rank
    expect_bytes = box_bytes if expect_bytes is None else expect_bytes
    nbytes = box_bytes if nbytes is None else nbytes
    be = _be()
    out = be.xp.zeros(max(nbytes, 1), dtype=np.uint8)
    c = list(coords) + [0] * (5 - len(coords))
    be.ext.tma_load_probe(be.ptr(g), bool(bf16), list(dims), list(strides), list(box), swizzle, rank, c,
                          expect_bytes, dst_offset, nbytes, TMA_FAULTS[fault], be.ptr(out), be.stream())
    return out[:nbytes]


def tma_ring(x, consumer_waits=True):
    """tma_ring_probe over x (float32, rounds x 32): y[l] = sum over rounds r
    of (r + 1) * x[r, (l + 1) % 32], through a 3-stage ring of TMA loads.
    consumer_waits=False leaves out the consumers' wait: a data race."""
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != 32:
        raise ValueError(f"x must be rounds x 32 floats, got shape {tuple(x.shape)}")
    be = _be()
    y = be.empty(32)
    be.ext.tma_ring_probe(be.ptr(x), be.ptr(y), x.shape[0], bool(consumer_waits), be.stream())
    return y


# ---- the warpgroup MMA (csrc/kernels/probes_wgmma.cuh)
WGMMA_MODES = {"once": 0, "twice": 1, "stale": 2, "groups": 3, "store_early": 4, "plain_early": 5,
               "cp_async_early": 6, "no_fence": 7, "warps_1_to_4": 8, "setmaxnreg": 9, "setmaxnreg_3_warps": 10,
               "producer_races": 11, "producer_ordered": 12}
WGMMA_N = (8, 16, 32, 64, 128, 256)
WGMMA_IMAGE_BYTES = 32768


def _wgmma_operand(op, name):
    """(offset, lbo, sbo, swizzle) as four ints."""
    if len(op) != 4 or not all(isinstance(v, (int, np.integer)) for v in op):
        raise ValueError(f"{name} must be (offset, lbo, sbo, swizzle) integers, got {op!r}")
    offset, lbo, sbo, swizzle = (int(v) for v in op)
    if not 0 <= offset < WGMMA_IMAGE_BYTES or not 0 <= lbo < 2**18 or not 0 <= sbo < 2**18 or swizzle not in (0, 1, 2, 3):
        raise ValueError(f"{name}: offset in [0, {WGMMA_IMAGE_BYTES}), LBO and SBO in [0, 2^18), swizzle 0 .. 3; "
                         f"got {op!r}")
    return [offset, lbo, sbo, swizzle]


def wgmma(image, a, b, n, kind, rs=False, a_regs=None, d_init=None, accumulate=False, mode="once", threads=128):
    """wgmma_probe: `image` (uint8, at most 32 KiB) copied to a 1024-byte-aligned
    base in shared memory; a and b are (offset, LBO, SBO, swizzle) of the
    descriptors of A and B (a is unused with rs=True, where a_regs, uint32
    128 x 4, are the threads' A registers); d_init (float32 threads x n/2)
    the accumulators before. Returns (out, out2), each threads x n/2: the
    accumulators after the wait, and what `mode` reads early (zeros if none)."""
    if n not in WGMMA_N:
        raise ValueError(f"n must be one of {WGMMA_N}, got {n!r}")
    if kind not in ("tf32", "bf16"):
        raise ValueError(f"kind must be 'tf32' or 'bf16', got {kind!r}")
    if mode not in WGMMA_MODES:
        raise ValueError(f"mode must be one of {sorted(WGMMA_MODES)}, got {mode!r}")
    if threads not in (96, 128, 160, 256):
        raise ValueError(f"threads must be 96, 128, 160 or 256, got {threads!r}")
    if image.dtype != np.uint8 or image.ndim != 1 or not 0 < image.size <= WGMMA_IMAGE_BYTES:
        raise ValueError(f"image must be 1-D uint8 of at most {WGMMA_IMAGE_BYTES} bytes")
    a, b = _wgmma_operand(a, "a"), _wgmma_operand(b, "b")
    be = _be()
    regs = be.xp.zeros((128, 4), dtype=np.uint32) if a_regs is None else a_regs
    if regs.shape != (128, 4) or regs.dtype != np.uint32:
        raise ValueError("a_regs must be uint32 of shape (128, 4)")
    init = be.xp.zeros((threads, n // 2), dtype=np.float32) if d_init is None else d_init
    if init.shape != (threads, n // 2) or init.dtype != np.float32:
        raise ValueError(f"d_init must be float32 of shape ({threads}, {n // 2})")
    out = be.xp.zeros((threads, n // 2), dtype=np.float32)
    out2 = be.xp.zeros((threads, n // 2), dtype=np.float32)
    be.ext.wgmma_probe(n, kind == "bf16", bool(rs), be.ptr(image), image.size, a, b, be.ptr(regs), be.ptr(init),
                       be.ptr(out), be.ptr(out2), bool(accumulate), WGMMA_MODES[mode], threads, be.stream())
    return out, out2


def wgmma_tma(a, b, tma_early=False):
    """wgmma_tma_probe: A and B (float32 64 x 32 each, B as its K-major rows,
    D = A B^T) loaded by TMA with the 128-byte swizzle, then four m64n64k8
    wgmmas along K. Returns the accumulators (128 x 32). tma_early: host only."""
    for name, x in (("a", a), ("b", b)):
        if x.shape != (64, 32) or x.dtype != np.float32:
            raise ValueError(f"{name} must be float32 of shape (64, 32)")
    be = _be()
    out = be.xp.zeros((128, 32), dtype=np.float32)
    be.ext.wgmma_tma_probe(be.ptr(a), be.ptr(b), be.ptr(out), bool(tma_early), be.stream())
    return out


def wgmma_descriptor(offset, lbo, sbo, swizzle):
    """wgmma_descriptor_probe: the descriptor (as a Python int) of a shared
    array's 1024-byte-aligned start + offset (< 2048)."""
    op = _wgmma_operand((offset, lbo, sbo, swizzle), "descriptor")
    if op[0] >= 2048:
        raise ValueError("offset must be below 2048")
    be = _be()
    out = be.xp.zeros(1, dtype=np.uint64)
    be.ext.wgmma_descriptor_probe(op, be.ptr(out), be.stream())
    return int(out[0])
