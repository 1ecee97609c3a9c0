"""The Hopper instructions of csrc/kernels/ptx_sm90.cuh, on every backend
present: each probe's expected values are worked out here by hand from the PTX
ISA's definitions (the rule each follows is in a comment beside it), never
from the emulator. On a GPU the same probes check the hardware, and so compare
the two. The tensor map's model (csrc/emu/tma.h) is host code, tested on the
host: its GPU counterpart is the driver's cuTensorMapEncodeTiled and a TMA
load, which tests/kernels/test_tma.py issues.
"""

import numpy as np
import pytest

import fcn_cuda
from fcn_cuda import _backend

from _sanitizers import run_sanitized
from fcn_cuda.ops import probes

from _util import to_numpy

pytestmark = pytest.mark.kernels


# ------------------------------------------------------------------ mbarrier
def test_mbarrier_phases_by_hand(be):
    # mbarrier.init(count 2): phase 0, pending arrivals 2 (= expected), tx-count 0.
    # A phase completes when pending == 0 and tx-count == 0; the phase then
    # advances and pending is reset to the expected count, tx-count to 0.
    # test_wait.parity p is true when the phase of parity p has completed: p is
    # the parity of the phase before the current one (at init, phase "-1",
    # parity 1, counts as completed).
    expected = [
        0, 1,  # init: current phase 0 (parity 0) incomplete, its predecessor (parity 1) complete
        0, 1,  # arrive: pending 1
        0, 1,  # arrive.expect_tx 64: tx-count 64, then arrive: pending 0, yet bytes outstanding
        0, 1,  # complete_tx 32: tx-count 32
        1, 0,  # complete_tx 32: tx-count 0 and pending 0: phase 0 completes, phase 1 (parity 1) current
        1, 0,  # complete_tx 16 before any expect_tx: tx-count -16 (the ISA's range is signed)
        1, 0,  # arrive: pending 1
        0, 1,  # arrive.expect_tx 16: tx-count 0, pending 0: phase 1 completes, phase 2 (parity 0) current
        1, 0,  # arrive with count 2: pending 0: phase 2 completes, phase 3 (parity 1) current
        1,     # try_wait.parity 0 returns: phase 2, of parity 0, has completed
    ]
    assert to_numpy(probes.mbarrier_trace()).tolist() == expected


@pytest.mark.parametrize("rounds", [1, 2, 7])
def test_mbarrier_pipeline_waits_for_its_phase(be, rounds):
    # Warp 0 writes round r into stage r % 2 once the consumers have released
    # it (empty barrier, phase parity (r // 2 + 1) % 2); warp 1 reads it once all
    # 32 producers arrived (full barrier, parity (r // 2) % 2). A wait that did
    # not wait, or a parity off by one, reads another round's values.
    x = (np.arange(32 * rounds, dtype=np.float32) % 97) - 40
    want = np.zeros(32, np.float64)
    for r in range(rounds):
        want += (r + 1) * x[32 * r + (np.arange(32) + 1) % 32]
    y = probes.mbarrier_pipeline(be.xp.asarray(x))
    np.testing.assert_array_equal(to_numpy(y), want.astype(np.float32))


def test_tsan_build_orders_reads_by_the_mbarrier_wait():
    # An arrive releases and a wait that sees the phase complete acquires, as
    # on a GPU: with the consumers' wait the ring is clean under TSan; without
    # it, their reads race with the producers' writes and must be reported.
    proc = run_sanitized("thread", """
        import numpy as np
        from fcn_cuda.ops import probes
        x = np.arange(32 * 5, dtype=np.float32)
        probes.mbarrier_pipeline(x)
        print("ordered: no report")
        probes.mbarrier_pipeline(x, consumer_waits=False)
        print("unordered: no report")
    """)
    assert "ordered: no report" in proc.stdout, proc.stderr[-3000:]
    assert proc.returncode == 66, "the TSan build did not report the race\n" + proc.stderr[-3000:]
    assert "WARNING: ThreadSanitizer: data race" in proc.stderr and "mbarrier_pipeline_probe" in proc.stderr
    assert "unordered: no report" not in proc.stdout


def test_mbarrier_pipeline_validates():
    with pytest.raises(ValueError, match="x must hold 32 floats per round"):
        probes.mbarrier_pipeline(np.zeros(33, np.float32))
    with pytest.raises(ValueError, match="kind must be one of"):
        probes.mbarrier_fault("sometimes")


# A wait that can never complete must be an error naming the kernel and the
# waiter, never a hang; what the ISA leaves undefined is an error. Host only:
# a GPU would hang or do anything.
@pytest.mark.parametrize("kind, message", [
    ("never_arrives", r"deadlock: thread \(0,0,0\) waits on the mbarrier at 0x[0-9a-f]+ for its phase of parity 0 "
                      r"to complete \(pending arrivals 1 of 2, tx-count 0\)"),
    ("spins_forever", r"deadlock: thread \(0,0,0\) spins on the mbarrier at 0x[0-9a-f]+ for its phase of parity 0 "
                      r"to complete \(pending arrivals 1 of 2, tx-count 0\)"),
    ("bytes_never_arrive", r"deadlock: thread \(0,0,0\) waits on the mbarrier .* \(pending arrivals 0 of 2, "
                           r"tx-count 128\)"),
    ("init_count_0", r"mbarrier.init: count must be in 1 \.\. 2\^20 - 1"),
    ("not_initialized", r"mbarrier.arrive on an mbarrier that was never initialized"),
    ("too_many_arrivals", r"mbarrier.arrive: 3 arrivals where the phase awaits only 2"),
    ("misaligned", r"misaligned address: mbarrier.init at 0x[0-9a-f]+, 4 bytes past a 8-byte boundary"),
    ("tx_count_overflow", r"mbarrier.expect_tx: the tx-count would pass 2\^20 - 1"),
])
def test_mbarrier_faults_are_errors(kind, message):
    fcn_cuda.use_backend("host")
    with pytest.raises(RuntimeError, match=r"kernel mbarrier_fault_probe, block \(0,0,0\): thread \(0,0,0\): " + message
                       if not message.startswith("deadlock") else
                       r"kernel mbarrier_fault_probe, block \(0,0,0\): " + message):
        probes.mbarrier_fault(kind)


# ---------------------------------------------------- the tensor map (host model)
def _aligned(values, offset_bytes=0):
    """A float32 copy of values whose data starts offset_bytes past a 64-byte boundary."""
    flat = np.ascontiguousarray(values, dtype=np.float32).ravel()
    raw = np.zeros(flat.size + 32, np.float32)
    start = ((-raw.ctypes.data) % 64 + offset_bytes) // 4
    out = raw[start:start + flat.size]
    out[:] = flat
    return out


def _box(g, dim, stride, box, estride, coords, swizzle=0, nan_fill=False, words=256):
    fcn_cuda.use_backend("host")
    out = np.full(words, -7.0, np.float32)
    n = _backend.active().ext.tensor_map_box(g.ctypes.data, 4, dim, stride, box, estride, swizzle, nan_fill, coords,
                                             out.ctypes.data)
    return out, n


def test_tensor_map_box_reads_inside_the_dimensions_and_zero_fills_outside():
    # 5 rows of 6 floats at a 32-byte pitch (G[r][c] = 100 + 10 r + c; the two
    # floats past each row's 6 are 999). cuTensorMapEncodeTiled: dims
    # innermost first, strides in bytes for dims 1.. only. A box of 4 x 3 at
    # (3, 3): columns 3..6 of rows 3..5; column 6 is past globalDim[0] = 6 and
    # row 5 past globalDim[1] = 5, so they read as zero (the pitch does not
    # bound the tensor, the dimensions do).
    g = np.full((5, 8), 999, np.float32)
    g[:, :6] = 100 + 10 * np.arange(5)[:, None] + np.arange(6)
    out, n = _box(_aligned(g), [6, 5], [32], [4, 3], [1, 1], [3, 3])
    assert n == 4 * 3 * 4
    assert out[:12].tolist() == [133, 134, 135, 0, 143, 144, 145, 0, 0, 0, 0, 0]
    assert (out[12:] == -7).all()  # nothing past the box's 48 bytes
    # Negative coordinates are legal and out of bounds: a 4 x 2 box at (-2, -1).
    out, _ = _box(_aligned(g), [6, 5], [32], [4, 2], [1, 1], [-2, -1])
    assert out[:8].tolist() == [0, 0, 0, 0, 0, 0, 100, 101]


def test_tensor_map_box_element_strides():
    # elementStrides (2, 2) over a box of 8 x 3: ceil(8 / 2) = 4 columns
    # (0, 2, 4, 6) by ceil(3 / 2) = 2 rows (0, 2), packed densely; column 6
    # is past globalDim[0] = 6.
    g = np.full((5, 8), 999, np.float32)
    g[:, :6] = 100 + 10 * np.arange(5)[:, None] + np.arange(6)
    out, n = _box(_aligned(g), [6, 5], [32], [8, 3], [2, 2], [0, 0])
    assert n == 4 * 2 * 4
    assert out[:8].tolist() == [100, 102, 104, 0, 120, 122, 124, 0]


def test_tensor_map_box_nan_fill():
    # CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA: out-of-bounds
    # elements read as NaN instead of zero.
    out, _ = _box(_aligned(np.arange(1, 5, dtype=np.float32)), [4], [], [8], [1], [0], nan_fill=True)
    assert out[:4].tolist() == [1, 2, 3, 4] and np.isnan(out[4:8]).all()


def test_tensor_map_box_swizzle_128():
    # 128-byte swizzle, box 32 floats (128 B, the span) x 8 rows: byte address
    # bits [4, 7) (the 16-byte chunk, 4 floats) are XORed with bits [7, 10)
    # (the 128-byte line): element (r, c) lands at float r * 32 + 4 ((c // 4) ^ r) + c % 4.
    g = np.arange(256, dtype=np.float32).reshape(8, 32)  # G[r][c] = 32 r + c
    out, n = _box(_aligned(g), [32, 8], [128], [32, 8], [1, 1], [0, 0], swizzle=128)
    assert n == 1024
    assert out[:32].tolist() == list(range(32))  # line 0: chunk j ^ 0
    assert out[36] == 32 and out[32] == 36       # line 1: chunks 0 and 1 trade places
    assert out[7 * 32 + 6 * 4 + 1] == 7 * 32 + 5  # (7, 5): chunk 1 ^ 7 = 6
    r, c = np.meshgrid(np.arange(8), np.arange(32), indexing="ij")
    want = np.empty(256, np.float32)
    want[r * 32 + 4 * ((c // 4) ^ r) + c % 4] = g[r, c]
    np.testing.assert_array_equal(out, want)


def test_tensor_map_box_swizzle_32():
    # 32-byte swizzle, box 8 floats (32 B) x 8 rows, rows 32 B apart: bit 4
    # (the chunk within a 32-byte span) XORs with bit 7 (the 128-byte line =
    # row // 4): rows 0-3 stay, rows 4-7 swap their two halves.
    g = np.arange(64, dtype=np.float32).reshape(8, 8)
    out, _ = _box(_aligned(g), [8, 8], [32], [8, 8], [1, 1], [0, 0], swizzle=32)
    assert out[:32].tolist() == list(range(32))
    assert out[32:40].tolist() == [36, 37, 38, 39, 32, 33, 34, 35]
    assert out[56:64].tolist() == [60, 61, 62, 63, 56, 57, 58, 59]


@pytest.mark.parametrize("offset, dim, stride, box, estride, swizzle, message", [
    (4, [8, 2], [32], [4, 2], [1, 1], 0, "globalAddress must be 16-byte aligned"),
    (0, [8, 2], [24], [4, 2], [1, 1], 0, r"globalStrides\[0\] must be a multiple of 16 below 2\^40"),
    (0, [8, 2], [32], [4, 257], [1, 1], 0, r"boxDim\[1\] must be in 1 \.\. 256"),
    (0, [8, 2], [32], [2, 2], [1, 1], 0, r"boxDim\[0\] \* elementSize must be a multiple of 16 bytes"),
    (0, [8, 2], [32], [4, 2], [1, 9], 0, r"elementStrides\[1\] must be in 1 \.\. 8"),
    (0, [0, 2], [32], [4, 2], [1, 1], 0, r"globalDim\[0\] must be in 1 \.\. 2\^32"),
    (0, [64, 2], [256], [32, 2], [1, 1], 64, "boxDim\\[0\\] \\* elementSize must not exceed the swizzle's span"),
    (0, [8, 2], [32], [4, 2], [1, 1], 16, "swizzle must be none, 32, 64 or 128 B"),
    (0, [8] * 6, [32] * 5, [4] * 6, [1] * 6, 0, r"tensorRank must be in 1 \.\. 5"),
])
def test_tensor_map_encode_refuses_what_the_driver_refuses(offset, dim, stride, box, estride, swizzle, message):
    g = _aligned(np.zeros(256, np.float32), offset)
    with pytest.raises(ValueError, match="cuTensorMapEncodeTiled: " + message):
        _box(g, dim, stride, box, estride, [0] * len(dim), swizzle=swizzle)
