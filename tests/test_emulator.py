"""The execution model: barriers, shuffles, atomics, shared memory, indexing,
wmma and the first study kernels, on every backend present.

On the host these prove the emulator gives CUDA's semantics; on a GPU the
same tests check the kernels, and the cross-backend tests at the end compare
the emulator's shuffles, TF32 rounding and wmma results with the hardware's.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fcn_cuda
from fcn_cuda import _backend, _probes, basics

from _util import FP32, HALF, TF32, assert_close, to_numpy

pytestmark = pytest.mark.kernels


def dev(be, a):
    return be.xp.asarray(a)


# ------------------------------------------------------------------ barriers
@pytest.mark.parametrize("threads", [32, 96, 256, 1024])
@pytest.mark.parametrize("rounds", [1, 7])
def test_barrier_really_waits(be, threads, rounds):
    x = np.arange(threads, dtype=np.float32) * 3 + 1
    y = to_numpy(_probes.barrier_rotate(dev(be, x), rounds))
    np.testing.assert_array_equal(y, np.roll(x, -rounds))


# A GPU gives no such guarantee (a divergent barrier is undefined behaviour
# there), so the error tests below are the emulator's alone.
def test_divergent_barrier_is_an_error_not_a_hang():
    fcn_cuda.use_backend("host")
    with pytest.raises(RuntimeError, match="kernel divergent_barrier.*divergent __syncthreads"):
        _probes.divergent_barrier()
    # The interpreter and the emulator go on working afterwards.
    x = np.arange(64, dtype=np.float32)
    np.testing.assert_array_equal(_probes.barrier_rotate(x, 1), np.roll(x, -1))


def _run_isolated(code, timeout=120):
    env = dict(os.environ, FCN_CUDA_BACKEND="host")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_divergent_barrier_in_a_subprocess_reports_the_kernel():
    proc = _run_isolated("""
        from fcn_cuda import _probes
        _probes.divergent_barrier()
    """)
    assert proc.returncode != 0
    assert "RuntimeError" in proc.stderr
    assert "kernel divergent_barrier" in proc.stderr and "divergent __syncthreads" in proc.stderr


def test_thread_exiting_while_others_wait_is_an_error():
    fcn_cuda.use_backend("host")
    with pytest.raises(RuntimeError, match=r"early_exit_barrier.*thread \(5,0,0\) exited while"):
        _probes.early_exit_barrier()


def test_shuffle_with_missing_lanes_is_an_error():
    fcn_cuda.use_backend("host")
    with pytest.raises(RuntimeError, match="missing_lane_shuffle.*exited"):
        _probes.missing_lane_shuffle()


# ------------------------------------------------------------------ shuffles
def ptx_shuffle_reference(x, kind, arg, width):
    """shfl.sync's source-lane rule from the PTX ISA, applied per warp."""
    out = np.empty_like(x)
    segmask = (32 - width) & 31
    for base in range(0, x.size, 32):
        for lane in range(32):
            clamp = 0 if kind == "up" else 31
            max_lane = (lane & segmask) | (clamp & ~segmask)
            min_lane = lane & segmask
            if kind == "up":
                j = lane - arg
                ok = j >= max_lane
            elif kind == "down":
                j = lane + arg
                ok = j <= max_lane
            elif kind == "xor":
                j = lane ^ (arg & 31)
                ok = j <= max_lane
            else:
                j = min_lane | (arg & 31 & ~segmask)
                ok = j <= max_lane
            out[base + lane] = x[base + (j if ok else lane)]
    return out


@pytest.mark.parametrize("width", [32, 16, 8])
@pytest.mark.parametrize("kind,args", [("idx", [0, 5, 17, 31, 40]), ("up", [1, 3, 8, 16]),
                                       ("down", [1, 3, 8, 16]), ("xor", [1, 2, 4, 8, 16, 31])])
def test_shuffle_lane_semantics(be, kind, args, width):
    x = np.arange(64, dtype=np.float32) + 100
    for arg in args:
        y = to_numpy(basics.warp_shuffle(dev(be, x), kind, arg, width))
        np.testing.assert_array_equal(y, ptx_shuffle_reference(x, kind, arg, width), err_msg=f"{kind} {arg}")


def test_shuffle_out_of_segment_lanes_keep_their_value(be):
    x = np.arange(32, dtype=np.float32)
    # down by 4 in segments of 8: the last 4 lanes of each segment keep their own value
    y = to_numpy(basics.warp_shuffle(dev(be, x), "down", 4, 8))
    assert y[4] == 4 and y[7] == 7 and y[0] == 4 and y[3] == 7


@pytest.mark.parametrize("width", [32, 16, 8])
@pytest.mark.parametrize("kind", ["xor", "down", "up", "idx"])
def test_warp_reductions(be, rng, kind, width):
    x = rng.standard_normal(32 * 37).astype(np.float32)
    sums = basics.warp_segment_sum(dev(be, x), kind, width)
    assert_close(sums, x.astype(np.float64).reshape(-1, width).sum(1), FP32)


@pytest.mark.parametrize("n", [1, 255, 256, 257, 100_003])
def test_block_reduction(be, rng, n):
    x = rng.standard_normal(n).astype(np.float32)
    assert_close(basics.block_sum(dev(be, x)), np.array([x.astype(np.float64).sum()]), FP32 * 10)


# ------------------------------------------------------------------ atomics
def test_atomics_from_many_blocks(be, rng):
    v = rng.integers(0, 1_000_000, size=50_001).astype(np.int32)
    counts, maximum, cas, fsum = _probes.atomics(dev(be, v), 13)
    np.testing.assert_array_equal(to_numpy(counts), np.bincount(v % 13, minlength=13))
    assert maximum == v.max()
    assert cas == v.size
    assert fsum == 0.5 * v.size


def test_float_atomic_sum(be, rng):
    x = rng.standard_normal(20_000).astype(np.float32)
    out = _probes.atomic_sum(dev(be, x))
    assert_close(out, np.array([x.astype(np.float64).sum()]), 1e-4)


def test_single_worker_runs_are_bit_identical(rng):
    fcn_cuda.use_backend("host")
    x = rng.standard_normal(20_000).astype(np.float32)
    a = rng.standard_normal((70, 90)).astype(np.float32)
    b = rng.standard_normal((90, 33)).astype(np.float32)
    try:
        fcn_cuda.set_emulator_workers(1)
        first = [_probes.atomic_sum(x).tobytes(), basics.gemm(a, b, "tiled").tobytes()]
        for _ in range(3):
            again = [_probes.atomic_sum(x).tobytes(), basics.gemm(a, b, "tiled").tobytes()]
            assert again == first
    finally:
        fcn_cuda.set_emulator_workers(0)  # back to the default (FCN_CUDA_EMU_WORKERS or one per core)


# ------------------------------------------------------------ shared memory
@pytest.mark.parametrize("threads", [32, 64, 256])
def test_dynamic_shared_memory(be, rng, threads):
    blocks = 5
    x = rng.standard_normal(4 * threads * blocks).astype(np.float32)
    y, misalignment = _probes.dynamic_smem(dev(be, x), threads)
    assert misalignment == 0, "dynamic shared memory must be 16-byte aligned for float4"
    expect = x.reshape(blocks, threads, 4)[:, ::-1, :].reshape(-1)
    np.testing.assert_array_equal(to_numpy(y), expect)


# ------------------------------------------------------------------ indexing
@pytest.mark.parametrize("grid,block", [((1, 1, 1), (1, 1, 1)), ((3, 2, 2), (4, 3, 2)), ((5, 1, 3), (32, 2, 1)),
                                        ((2, 3, 1), (8, 8, 4))])
def test_3d_grids_and_blocks(be, grid, block):
    out = to_numpy(_probes.index(grid, block))
    bz, by, bx, tz, ty, tx = np.meshgrid(*[np.arange(n) for n in (grid[2], grid[1], grid[0], block[2], block[1],
                                                                   block[0])], indexing="ij")
    expect = np.stack([tx, ty, tz, bx, by, bz], axis=-1).reshape(-1, 6)
    np.testing.assert_array_equal(out, expect)


def test_invalid_launch_configuration_is_an_error():
    fcn_cuda.use_backend("host")
    with pytest.raises(RuntimeError, match="invalid configuration"):
        _probes.index((1, 1, 1), (32, 32, 2))  # 2048 threads per block


# -------------------------------------------------------------------- GEMMs
GEMM_TOL = {"naive": FP32, "tiled": FP32, "wmma_tf32": TF32, "wmma_f16": HALF, "wmma_bf16": HALF}


@pytest.mark.parametrize("variant", basics.GEMM_VARIANTS)
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (37, 29, 53), (64, 64, 16), (65, 63, 17), (130, 70, 45)])
def test_gemm_against_float64(be, rng, variant, m, n, k):
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    c = basics.gemm(dev(be, a), dev(be, b), variant)
    assert_close(c, a.astype(np.float64) @ b.astype(np.float64), GEMM_TOL[variant], what=variant)


def test_tf32_rounding_is_nearest_ties_away(be, rng):
    x = np.concatenate([rng.standard_normal(1000).astype(np.float32) * 1e3,
                        np.array([1 + 2**-11, 1 + 3 * 2**-11, -(1 + 2**-11), 0.0, -0.0, np.inf, -np.inf],
                                 dtype=np.float32)])
    y = to_numpy(_probes.tf32_round(dev(be, x)))
    bits = x.view(np.uint32)
    finite = (bits & 0x7F800000) != 0x7F800000
    expect_bits = np.where(finite, (bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000), bits)
    np.testing.assert_array_equal(y.view(np.uint32), expect_bits)
    assert y[1000] == 1 + 2**-10 and y[1001] == 1 + 2**-9 and y[1002] == -(1 + 2**-10)


# ------------------------------------------------------------- elementwise
@pytest.mark.parametrize("n", [1, 3, 4, 1001, 65_536 + 3])
def test_axpy(be, rng, n):
    x = rng.standard_normal(n).astype(np.float32)
    y = rng.standard_normal(n).astype(np.float32)
    out = basics.axpy(1.5, dev(be, x), dev(be, y))
    assert_close(out, 1.5 * x.astype(np.float64) + y, FP32)


# ------------------------------------------------------------- bad input
def test_basics_validate_their_arguments():
    fcn_cuda.use_backend("host")
    a = np.ones((4, 5), np.float32)
    with pytest.raises(ValueError, match="variant"):
        basics.gemm(a, a.T.copy(), "fastest")
    with pytest.raises(ValueError, match="inner dimensions"):
        basics.gemm(a, a, "tiled")
    with pytest.raises(TypeError, match="a must be float32"):
        basics.gemm(a.astype(np.float64), a.T.copy())
    with pytest.raises(ValueError, match="C-contiguous"):
        basics.gemm(a, a.T)
    with pytest.raises(ValueError, match="whole warps"):
        basics.warp_shuffle(np.ones(33, np.float32), "xor", 1)
    with pytest.raises(ValueError, match="width must be a power of two"):
        basics.warp_segment_sum(np.ones(64, np.float32), "xor", 12)
    with pytest.raises(ValueError, match="kind"):
        basics.warp_segment_sum(np.ones(64, np.float32), "rotate", 8)
    with pytest.raises(ValueError, match="empty"):
        basics.block_sum(np.ones(0, np.float32))


# ----------------------------------------- the emulator against the hardware
needs_gpu = pytest.mark.skipif(_backend.cuda_unavailable_reason() is not None,
                               reason=f"no GPU: {_backend.cuda_unavailable_reason()}")


def _on(name, fn, *arrays):
    previous = fcn_cuda.backend()
    fcn_cuda.use_backend(name)
    try:
        b = _backend.active()
        return to_numpy(fn(*[b.xp.asarray(a) for a in arrays]))
    finally:
        fcn_cuda.use_backend(previous)


@needs_gpu
def test_emulator_matches_hardware_shuffles_tf32_and_wmma(rng):
    x = rng.standard_normal(256).astype(np.float32)
    for kind, arg in [("idx", 7), ("up", 3), ("down", 5), ("xor", 9)]:
        for width in (32, 16, 8):
            f = lambda v: basics.warp_shuffle(v, kind, arg, width)  # noqa: E731
            np.testing.assert_array_equal(_on("host", f, x), _on("cuda", f, x))
    big = rng.standard_normal(4096).astype(np.float32) * 1e4
    np.testing.assert_array_equal(_on("host", _probes.tf32_round, big), _on("cuda", _probes.tf32_round, big))
    a = rng.standard_normal((45, 37)).astype(np.float32)
    b = rng.standard_normal((37, 51)).astype(np.float32)
    for variant in ("wmma_tf32", "wmma_f16", "wmma_bf16"):
        f = lambda p, q: basics.gemm(p, q, variant)  # noqa: E731
        host, gpu = _on("host", f, a, b), _on("cuda", f, a, b)
        # Products of TF32/bf16 inputs are exact; only the accumulation order differs.
        assert_close(host, gpu, 1e-5, what=f"{variant}: emulator vs hardware")


# ------------------------------------------------------------ the sanitizer
needs_sanitizer = pytest.mark.skipif(
    os.environ.get("FCN_CUDA_SANITIZE") != "1",
    reason="needs the sanitizer build: FCN_CUDA_SANITIZE=1 with libasan preloaded (.ci/run runs it)")


@needs_sanitizer
@pytest.mark.parametrize("kind,report", [("global", "heap-buffer-overflow"),
                                         ("static_shared", "out of bounds for type 'float [64]'"),
                                         ("dynamic_shared", "AddressSanitizer"),
                                         ("misaligned_float4", "misaligned address")])
def test_sanitizer_reports_out_of_bounds(kind, report):
    proc = _run_isolated(f"""
        from fcn_cuda import _probes
        _probes.out_of_bounds({kind!r})
        print("no report")
    """)
    assert proc.returncode != 0, f"{kind}: the sanitizer build did not stop the out-of-bounds access"
    assert report in proc.stderr, proc.stderr[-3000:]
    assert "out_of_bounds_probe" in proc.stderr or "probes.cuh" in proc.stderr
