"""The Tensor Memory Accelerator wrappers of csrc/kernels/ptx_sm90.cuh
(cp.async.bulk.tensor in tiled mode, completed on an mbarrier) and the host
side of csrc/ops/tensor_map.h, on every backend present. Each expected box is
worked out here from the definitions: cuTensorMapEncodeTiled's (dimensions
innermost first, strides in bytes, a box of boxDim elements at signed
coordinates, elements outside the tensor read as zero, the box stored densely
innermost first) and the CUDA programming guide's 128-byte swizzle (the
16-byte chunk j of the i-th 128-byte line of a 1024-byte span is stored at
chunk j ^ (i % 8)). The emulator's faults and its race checks are host-only;
on a GPU the same probes check the hardware and test_emulator_matches_hardware
compares the two.
"""

import numpy as np
import pytest

import fcn_cuda
from fcn_cuda import _backend
from fcn_cuda.ops import probes

from _sanitizers import run_sanitized
from _util import to_numpy

pytestmark = pytest.mark.kernels

FILL = 0xAB  # the probe's shared memory before the load


def _floats(out):
    return to_numpy(out).view(np.float32)


def _grid_2d():
    """5 rows of 6 floats at a 32-byte pitch, G[r][c] = 100 + 10 r + c; the 2 floats past each row are 999."""
    g = np.full((5, 8), 999, np.float32)
    g[:, :6] = 100 + 10 * np.arange(5)[:, None] + np.arange(6)
    return g


def _by_definition(t, coords, box):
    """The box of the contiguous tensor t (numpy order: outermost first) at coords (innermost first), from the
    definition: element i (innermost first) reads t at coords + i where inside every dimension, else 0."""
    rank = t.ndim
    out = np.zeros(tuple(reversed(box)), t.dtype)
    for idx in np.ndindex(*out.shape):  # idx outermost first
        pos = [coords[d] + idx[rank - 1 - d] for d in range(rank)]
        if all(0 <= pos[d] < t.shape[rank - 1 - d] for d in range(rank)):
            out[idx] = t[tuple(reversed(pos))]
    return out.ravel()


# ------------------------------------------------------------------ the loads
def test_tma_load_2d_zero_fills_before_and_past_the_tensor(be):
    # Box 8 x 3 at (-2, 3): columns -2 .. 5 of rows 3 .. 5. Columns -2, -1 are
    # before globalDim[0]'s range and row 5 past globalDim[1] = 5: zeros. The
    # row pitch (8 floats) does not bound the tensor; the dimensions do, so
    # the 999s are never read. 96 bytes land; the next 32 keep the fill.
    g = be.xp.asarray(_grid_2d())
    out = probes.tma_load(g, [6, 5], [32], [8, 3], [-2, 3], nbytes=128)
    f = _floats(out)
    assert f[:24].tolist() == [0, 0, 130, 131, 132, 133, 134, 135,
                               0, 0, 140, 141, 142, 143, 144, 145,
                               0, 0, 0, 0, 0, 0, 0, 0]
    assert (to_numpy(out)[96:] == FILL).all()


def test_tma_load_3d(be):
    # T[d][r][c] = 1 + c + 10 r + 100 d, dims (4, 3, 2) contiguous: strides
    # 16 and 48 bytes. Box 4 x 2 x 2 at (0, 2, -1): d = -1 is outside (8
    # zeros); d = 0: row 2 = 21 .. 24, row 3 outside (4 zeros).
    t = (1 + np.arange(4) + 10 * np.arange(3)[:, None] + 100 * np.arange(2)[:, None, None]).astype(np.float32)
    out = probes.tma_load(be.xp.asarray(t), [4, 3, 2], [16, 48], [4, 2, 2], [0, 2, -1])
    assert _floats(out).tolist() == [0] * 8 + [21, 22, 23, 24] + [0] * 4


def test_tma_load_4d(be):
    # dims (4, 2, 3, 2), contiguous; box 4 x 2 x 2 x 2 at (0, -1, 2, 0): i1 = 0
    # reads row -1 (zeros), i2 = 1 reads plane 3 (past 3: zeros), so only
    # (i1, i2) = (1, 0) holds data: t[i3][2][0][:] for i3 = 0, 1.
    t = np.arange(4 * 2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2, 4) + 1
    out = _floats(probes.tma_load(be.xp.asarray(t), [4, 2, 3, 2], [16, 32, 96], [4, 2, 2, 2], [0, -1, 2, 0]))
    want = np.zeros((2, 2, 2, 4), np.float32)
    want[:, 0, 1, :] = t[:, 2, 0, :]
    np.testing.assert_array_equal(out, want.ravel())
    np.testing.assert_array_equal(out, _by_definition(t, [0, -1, 2, 0], [4, 2, 2, 2]))


def test_tma_load_5d(be):
    # dims (4, 3, 2, 2, 3) contiguous; box 4 x 2 x 2 x 1 x 2 at (0, 2, 1, -1, 2):
    # coordinate 3 is -1 for the box's only i3: every element is outside.
    # At (0, 2, -1, 1, 2): i1 = 0 reads row 2, i1 = 1 row 3 (outside); i2 = 0
    # reads plane -1 (outside), i2 = 1 plane 0; i4 = 0 reads block 2, i4 = 1
    # block 3 (outside). One row of data: t[2][1][0][2][:] at box element
    # (i4, i3, i2, i1) = (0, 0, 1, 0), float offset ((0 * 1 + 0) * 2 + 1) * 2 * 4 = 8.
    t = np.arange(4 * 3 * 2 * 2 * 3, dtype=np.float32).reshape(3, 2, 2, 3, 4) + 1
    strides = [16, 48, 96, 192]
    box = [4, 2, 2, 1, 2]
    out = _floats(probes.tma_load(be.xp.asarray(t), [4, 3, 2, 2, 3], strides, box, [0, 2, 1, -1, 2]))
    assert (out == 0).all() and out.size == 32
    out = _floats(probes.tma_load(be.xp.asarray(t), [4, 3, 2, 2, 3], strides, box, [0, 2, -1, 1, 2]))
    want = np.zeros(32, np.float32)
    want[8:12] = t[2, 1, 0, 2, :]
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(out, _by_definition(t, [0, 2, -1, 1, 2], box))
    # And a box all inside: the dense copy.
    out = _floats(probes.tma_load(be.xp.asarray(t), [4, 3, 2, 2, 3], strides, [4, 3, 2, 2, 1], [0, 0, 0, 0, 1]))
    np.testing.assert_array_equal(out, t[1].ravel())


def test_tma_load_128_byte_swizzle(be):
    # 10 rows of 32 floats (128 B, the swizzle's span), box 32 x 8 at (0, 4):
    # rows 4 .. 11, rows 10 and 11 past the tensor (zeros). Box row i is the
    # i-th 128-byte line of a 1024-byte-aligned destination, and its 16-byte
    # chunk j (floats 4j .. 4j + 3) is stored at chunk j ^ (i % 8).
    g = np.arange(320, dtype=np.float32).reshape(10, 32) + 1
    out = _floats(probes.tma_load(be.xp.asarray(g), [32, 10], [128], [32, 8], [0, 4], swizzle=128))
    want = np.zeros(256, np.float32)
    for i in range(8):
        for c in range(32):
            if 4 + i < 10:
                want[32 * i + 4 * ((c // 4) ^ i) + c % 4] = g[4 + i, c]
    np.testing.assert_array_equal(out, want)
    assert out[:4].tolist() == [129, 130, 131, 132]   # row 0: chunk 0 stays
    assert out[32:36].tolist() == [165, 166, 167, 168]  # row 1 (g row 5, from 161): chunk 1 ^ 1 = 0 holds floats 4..7
    assert (out[6 * 32:] == 0).all()


def test_tma_load_bf16(be):
    # A bf16 tensor of 2 rows of 16 (a 32-byte pitch), box 8 x 2 at (12, 0):
    # elements 12 .. 15, then 4 past globalDim[0] = 16 (zeros), per row.
    g = (np.arange(32, dtype=np.uint16) + 0x3F80).reshape(2, 16)
    out = to_numpy(probes.tma_load(be.xp.asarray(g), [16, 2], [32], [8, 2], [12, 0], bf16=True)).view(np.uint16)
    assert out.tolist() == [g[0, 12], g[0, 13], g[0, 14], g[0, 15], 0, 0, 0, 0,
                            g[1, 12], g[1, 13], g[1, 14], g[1, 15], 0, 0, 0, 0]


def test_tma_load_destination_alignment(be):
    # 128-byte aligned destinations are legal without a swizzle.
    g = be.xp.asarray(_grid_2d())
    out = probes.tma_load(g, [6, 5], [32], [4, 2], [0, 0], dst_offset=128)
    assert _floats(out).tolist() == [100, 101, 102, 103, 110, 111, 112, 113]


# ----------------------------------------------------------------- the ring
@pytest.mark.parametrize("rounds", [1, 3, 8])
def test_tma_ring_waits_for_its_bytes(be, rounds):
    # Round r's row lands in stage r % 3 once the consumers released it (empty
    # barrier, parity (r // 3 + 1) % 2); they read it once its 128 bytes
    # arrived (full barrier, parity (r // 3) % 2). A wait that did not wait,
    # a parity off by one or a tx-count not counted reads another round's row.
    x = ((np.arange(32 * rounds, dtype=np.float32) % 89) - 30).reshape(rounds, 32)
    want = np.zeros(32, np.float64)
    for r in range(rounds):
        want += (r + 1) * x[r, (np.arange(32) + 1) % 32]
    y = probes.tma_ring(be.xp.asarray(x))
    np.testing.assert_array_equal(to_numpy(y), want.astype(np.float32))


def test_tsan_build_orders_tma_bytes_by_the_mbarrier_wait():
    # The load's writes come before its complete_tx's release and the
    # consumers' wait acquires: clean under TSan. Without the wait the
    # consumers' reads race with the load and must be reported.
    proc = run_sanitized("thread", """
        import numpy as np
        from fcn_cuda.ops import probes
        x = np.arange(32 * 7, dtype=np.float32).reshape(7, 32)
        probes.tma_ring(x)
        print("ordered: no report")
        try:
            probes.tma_ring(x[:3], consumer_waits=False)
        except RuntimeError as e:
            print("error:", e)
        print("unordered: done")
    """)
    assert "ordered: no report" in proc.stdout, proc.stderr[-3000:]
    assert proc.returncode == 66, "the TSan build did not report the race\n" + proc.stderr[-3000:]
    assert "WARNING: ThreadSanitizer: data race" in proc.stderr and "tma_ring_probe" in proc.stderr


def test_asan_build_poisons_bytes_in_flight():
    # Until a wait observes their phase the loaded bytes are poisoned: a plain
    # read of them (the consumers without their wait) is use-after-poison.
    proc = run_sanitized("address", """
        import numpy as np
        from fcn_cuda.ops import probes
        x = np.arange(32 * 7, dtype=np.float32).reshape(7, 32)
        probes.tma_ring(x)
        print("ordered: no report")
        probes.tma_ring(x[:3], consumer_waits=False)
        print("unordered: no report")
    """)
    assert "ordered: no report" in proc.stdout, proc.stderr[-3000:]
    assert "use-after-poison" in proc.stderr, proc.stderr[-3000:]
    assert "unordered: no report" not in proc.stdout


# ---------------------------------------------------------------- rejections
def test_encode_tensor_map_refuses_with_the_reason(be):
    g = be.xp.asarray(_grid_2d())
    with pytest.raises(ValueError, match=r"cuTensorMapEncodeTiled: globalStrides\[0\] must be a multiple of 16"):
        probes.tma_load(g, [6, 5], [24], [4, 2], [0, 0])
    with pytest.raises(ValueError, match=r"cuTensorMapEncodeTiled: boxDim\[0\] \* elementSize must not exceed "
                                         r"the swizzle's span"):
        probes.tma_load(g, [6, 5], [32], [64, 2], [0, 0], swizzle=128)
    with pytest.raises(ValueError, match="cuTensorMapEncodeTiled: swizzle must be none, 32, 64 or 128 B"):
        probes.tma_load(g, [6, 5], [32], [4, 2], [0, 0], swizzle=16)
    with pytest.raises(ValueError, match="fault must be one of"):
        probes.tma_load(g, [6, 5], [32], [4, 2], [0, 0], fault="sometimes")
    with pytest.raises(ValueError, match="x must be rounds x 32 floats"):
        probes.tma_ring(be.xp.zeros((2, 31), dtype=np.float32))


KERNEL = r"kernel tma_load_probe, block \(0,0,0\): "
IN_FLIGHT = (r"touches shared memory at 0x[0-9a-f]+ that a cp.async.bulk.tensor of thread 0 \(linear threadIdx\) "
             r"still has in flight: no wait has yet observed the phase of parity 0 of the mbarrier at 0x[0-9a-f]+")


# Host only: on a GPU these read stale bytes, hang or fault.
@pytest.mark.parametrize("kwargs, message", [
    pytest.param(dict(fault="read_early"), r"thread \(0,0,0\): a shared-memory access " + IN_FLIGHT, id="read_early"),
    pytest.param(dict(fault="write_early"), r"thread \(0,0,0\): a shared-memory access " + IN_FLIGHT,
                 id="write_early"),
    # Thread 1 waits on another mbarrier (whose phase of parity 1 counts as
    # complete from its init), then reads: whether or not thread 0 has
    # waited by then, no wait of thread 1 observed the load's phase.
    pytest.param(dict(fault="wrong_barrier"), r"thread \(1,0,0\): a shared-memory access touches shared memory at "
                 r"0x[0-9a-f]+ that a cp.async.bulk.tensor of thread 0 \(linear threadIdx\) still has in flight: no "
                 r"wait (has yet|of this thread has) observed the phase of parity 0", id="wrong_barrier"),
    pytest.param(dict(fault="reload_early"), r"thread \(0,0,0\): cp.async.bulk.tensor.2d " + IN_FLIGHT,
                 id="reload_early"),
    pytest.param(dict(fault="misaligned_map"), r"thread \(0,0,0\): misaligned address: cp.async.bulk.tensor.2d "
                 r"tensor map at 0x[0-9a-f]+, 16 bytes past a 64-byte boundary", id="misaligned_map"),
    pytest.param(dict(fault="unencoded_map"), r"thread \(0,0,0\): cp.async.bulk.tensor.2d: the tensor map is not "
                 r"one cuTensorMapEncodeTiled encoded", id="unencoded_map"),
    pytest.param(dict(rank=3), r"thread \(0,0,0\): cp.async.bulk.tensor.3d on a tensor map of rank 2: the "
                 r"coordinates must be one per dimension", id="rank_mismatch"),
    pytest.param(dict(dst_offset=16), r"thread \(0,0,0\): misaligned address: cp.async.bulk.tensor.2d shared-memory "
                 r"destination at 0x[0-9a-f]+, 16 bytes past a 128-byte boundary", id="misaligned_destination"),
    # With the 128-byte swizzle the destination must sit on its 1024-byte repeat.
    pytest.param(dict(dst_offset=512, swizzle=128, box=[32, 2], dims=[32, 5], strides=[128]),
                 r"thread \(0,0,0\): misaligned address: cp.async.bulk.tensor.2d shared-memory destination at "
                 r"0x[0-9a-f]+, 512 bytes past a 1024-byte boundary", id="misaligned_swizzled_destination"),
    # The phase completes when pending arrivals and tx-count are both 0: 48
    # bytes expected and the box's 64 completed leave the tx-count at -16,
    # 80 expected leave it at 16: neither phase ever completes.
    pytest.param(dict(expect_bytes=48), r"deadlock: thread \(0,0,0\) waits on the mbarrier at 0x[0-9a-f]+ for its "
                 r"phase of parity 0 to complete \(pending arrivals 0 of 1, tx-count -16\)", id="too_few_bytes_expected"),
    pytest.param(dict(expect_bytes=80), r"deadlock: thread \(0,0,0\) waits on the mbarrier .* \(pending arrivals 0 "
                 r"of 1, tx-count 16\)", id="too_many_bytes_expected"),
])
def test_tma_faults_are_errors_naming_the_kernel(kwargs, message):
    fcn_cuda.use_backend("host")
    g = _grid_2d()
    args = dict(dims=[6, 5], strides=[32], box=[8, 2])
    args.update(kwargs)
    with pytest.raises(RuntimeError, match=KERNEL + message):
        probes.tma_load(g, args.pop("dims"), args.pop("strides"), args.pop("box"), [0, 0], **args)


# ------------------------------------------ the emulator against the hardware
def _sm90_gpu_reason():
    reason = _backend.cuda_unavailable_reason()
    if reason is not None:
        return f"no GPU: {reason}"
    import cupy

    major = cupy.cuda.Device().compute_capability
    return None if int(major) >= 90 else f"the GPU (sm_{major}) has no TMA"


@pytest.mark.skipif(_backend.cuda_unavailable_reason() is not None, reason="no GPU")
def test_emulator_matches_hardware(rng):
    reason = _sm90_gpu_reason()
    if reason:
        pytest.skip(reason)
    cases = [
        (rng.standard_normal((5, 8)).astype(np.float32), [6, 5], [32], [8, 3], [-2, 3], 0),
        (rng.standard_normal((2, 3, 4)).astype(np.float32), [4, 3, 2], [16, 48], [4, 2, 2], [0, 2, -1], 0),
        (rng.standard_normal((3, 2, 2, 3, 4)).astype(np.float32), [4, 3, 2, 2, 3], [16, 48, 96, 192],
         [4, 2, 2, 1, 2], [0, 2, -1, 1, 2], 0),
        (rng.standard_normal((10, 32)).astype(np.float32), [32, 10], [128], [32, 8], [0, 4], 128),
        (rng.standard_normal((16, 16)).astype(np.float32), [16, 16], [64], [16, 8], [0, 3], 64),
        (rng.standard_normal((16, 8)).astype(np.float32), [8, 16], [32], [8, 8], [0, -3], 32),
    ]
    for g, dims, strides, box, coords, swizzle in cases:
        got = {}
        for name in ("host", "cuda"):
            fcn_cuda.use_backend(name)
            be = _backend.active()
            got[name] = to_numpy(probes.tma_load(be.xp.asarray(g), dims, strides, box, coords, swizzle=swizzle,
                                                 nbytes=int(np.prod(box)) * 4 + 64))
        np.testing.assert_array_equal(got["host"], got["cuda"], err_msg=f"box {box} at {coords}, swizzle {swizzle}")
    x = rng.standard_normal((9, 32)).astype(np.float32)
    ys = {}
    for name in ("host", "cuda"):
        fcn_cuda.use_backend(name)
        ys[name] = to_numpy(probes.tma_ring(_backend.active().xp.asarray(x)))
    np.testing.assert_array_equal(ys["host"], ys["cuda"])
