"""The execution model: barriers, shuffles, atomics, shared memory, indexing,
wmma and the first study kernels, on every backend present.

On the host these prove the emulator gives CUDA's semantics; on a GPU the
same tests check the kernels, and the cross-backend tests at the end compare
the emulator's shuffles, TF32 rounding and wmma results with the hardware's.
"""

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fcn_cuda
from fcn_cuda import _backend
from fcn_cuda.ops import elementwise, gemm, probes, reduce

from _sanitizers import run_sanitized
from _util import FP32, HALF, ROOT, TF32, assert_close, to_numpy

pytestmark = pytest.mark.kernels


def dev(be, a):
    return be.xp.asarray(a)


# ------------------------------------------------------------------ barriers
@pytest.mark.parametrize("threads", [32, 96, 256, 1024])
@pytest.mark.parametrize("rounds", [1, 7])
def test_barrier_really_waits(be, threads, rounds):
    x = np.arange(threads, dtype=np.float32) * 3 + 1
    if be.ext.SANITIZE == "thread" and threads > 256:  # the TSan build refuses what it cannot check
        with pytest.raises(RuntimeError, match=f"a block of {threads} threads; the ThreadSanitizer build runs at most"):
            probes.barrier_rotate(dev(be, x), rounds)
        return
    y = to_numpy(probes.barrier_rotate(dev(be, x), rounds))
    np.testing.assert_array_equal(y, np.roll(x, -rounds))


# A GPU gives no such guarantee (a divergent barrier is undefined behaviour
# there), so the error tests below are the emulator's alone.
def test_divergent_barrier_is_an_error_not_a_hang():
    fcn_cuda.use_backend("host")
    with pytest.raises(RuntimeError, match="kernel divergent_barrier.*divergent __syncthreads"):
        probes.divergent_barrier()
    # The interpreter and the emulator go on working afterwards.
    x = np.arange(64, dtype=np.float32)
    np.testing.assert_array_equal(probes.barrier_rotate(x, 1), np.roll(x, -1))


def _run_isolated(code, timeout=120):
    env = dict(os.environ, FCN_CUDA_BACKEND="host")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_divergent_barrier_in_a_subprocess_reports_the_kernel():
    proc = _run_isolated("""
        from fcn_cuda.ops import probes
        probes.divergent_barrier()
    """)
    assert proc.returncode != 0
    assert "RuntimeError" in proc.stderr
    assert "kernel divergent_barrier" in proc.stderr and "divergent __syncthreads" in proc.stderr


def test_thread_exiting_while_others_wait_is_an_error():
    fcn_cuda.use_backend("host")
    with pytest.raises(RuntimeError, match=r"early_exit_barrier.*thread \(5,0,0\) exited while"):
        probes.early_exit_barrier()


def test_shuffle_with_missing_lanes_is_an_error():
    fcn_cuda.use_backend("host")
    with pytest.raises(RuntimeError, match="missing_lane_shuffle.*exited"):
        probes.missing_lane_shuffle()


def test_deadlock_is_an_error_not_a_hang():
    fcn_cuda.use_backend("host")
    with pytest.raises(RuntimeError, match=r"kernel deadlock_probe, block \(0,0,0\): deadlock: thread \(0,0,0\) "
                                           r"waits at a warp operation"):
        probes.deadlock()


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
        y = to_numpy(reduce.warp_shuffle(dev(be, x), kind, arg, width))
        np.testing.assert_array_equal(y, ptx_shuffle_reference(x, kind, arg, width), err_msg=f"{kind} {arg}")


def test_shuffle_out_of_segment_lanes_keep_their_value(be):
    x = np.arange(32, dtype=np.float32)
    # down by 4 in segments of 8: the last 4 lanes of each segment keep their own value
    y = to_numpy(reduce.warp_shuffle(dev(be, x), "down", 4, 8))
    assert y[4] == 4 and y[7] == 7 and y[0] == 4 and y[3] == 7


@pytest.mark.parametrize("width", [32, 16, 8])
@pytest.mark.parametrize("kind", ["xor", "down", "up", "idx"])
def test_warp_reductions(be, rng, kind, width):
    x = rng.standard_normal(32 * 37).astype(np.float32)
    sums = reduce.warp_segment_sum(dev(be, x), kind, width)
    assert_close(sums, x.astype(np.float64).reshape(-1, width).sum(1), FP32)


@pytest.mark.parametrize("n", [1, 255, 256, 257, 100_003])
def test_block_reduction(be, rng, n):
    x = rng.standard_normal(n).astype(np.float32)
    assert_close(reduce.block_sum(dev(be, x)), np.array([x.astype(np.float64).sum()]), FP32 * 10)


# ------------------------------------------------------------------ atomics
# The CAS loop of k threads costs a GPU about k^2 / 2 attempts: there 2,049
# threads (17 blocks) contend, about 2e6 attempts, well under a second even
# under compute-sanitizer; the emulator runs a block's threads in turn and
# takes all 50,001.
CAS_THREADS = {"host": 50_001, "cuda": 2_049}


def test_atomics_from_many_blocks(be, rng):
    v = rng.integers(0, 1_000_000, size=50_001).astype(np.int32)
    counts, maximum, cas, fsum = probes.atomics(dev(be, v), 13, CAS_THREADS[be.name])
    np.testing.assert_array_equal(to_numpy(counts), np.bincount(v % 13, minlength=13))
    assert maximum == v.max()
    assert cas == CAS_THREADS[be.name]
    assert fsum == 0.5 * v.size


def test_float_atomic_sum(be, rng):
    x = rng.standard_normal(20_000).astype(np.float32)
    out = probes.atomic_sum(dev(be, x))
    assert_close(out, np.array([x.astype(np.float64).sum()]), 1e-4)


def test_single_worker_runs_are_bit_identical(rng):
    fcn_cuda.use_backend("host")
    x = rng.standard_normal(20_000).astype(np.float32)
    a = rng.standard_normal((70, 90)).astype(np.float32)
    b = rng.standard_normal((90, 33)).astype(np.float32)
    try:
        fcn_cuda.set_emulator_workers(1)
        first = [probes.atomic_sum(x).tobytes(), gemm.gemm(a, b, "tiled").tobytes()]
        for _ in range(3):
            again = [probes.atomic_sum(x).tobytes(), gemm.gemm(a, b, "tiled").tobytes()]
            assert again == first
    finally:
        fcn_cuda.set_emulator_workers(0)  # back to the default (FCN_CUDA_EMU_WORKERS or one per core)


# ------------------------------------------------------------ shared memory
@pytest.mark.parametrize("threads", [32, 64, 256])
def test_dynamic_shared_memory(be, rng, threads):
    blocks = 5
    x = rng.standard_normal(4 * threads * blocks).astype(np.float32)
    y, misalignment = probes.dynamic_smem(dev(be, x), threads)
    assert misalignment == 0, "dynamic shared memory must be 16-byte aligned for float4"
    expect = x.reshape(blocks, threads, 4)[:, ::-1, :].reshape(-1)
    np.testing.assert_array_equal(to_numpy(y), expect)


# ------------------------------------------------------------------ indexing
@pytest.mark.parametrize("grid,block", [((1, 1, 1), (1, 1, 1)), ((3, 2, 2), (4, 3, 2)), ((5, 1, 3), (32, 2, 1)),
                                        ((2, 3, 1), (8, 8, 4))])
def test_3d_grids_and_blocks(be, grid, block):
    out = to_numpy(probes.index(grid, block))
    bz, by, bx, tz, ty, tx = np.meshgrid(*[np.arange(n) for n in (grid[2], grid[1], grid[0], block[2], block[1],
                                                                   block[0])], indexing="ij")
    expect = np.stack([tx, ty, tz, bx, by, bz], axis=-1).reshape(-1, 6)
    np.testing.assert_array_equal(out, expect)


def test_invalid_launch_configuration_is_an_error():
    fcn_cuda.use_backend("host")
    with pytest.raises(RuntimeError, match="invalid configuration"):
        probes.index((1, 1, 1), (32, 32, 2))  # 2048 threads per block


# -------------------------------------------------------------------- GEMMs
GEMM_TOL = {"naive": FP32, "tiled": FP32, "wmma_tf32": TF32, "wmma_f16": HALF, "wmma_bf16": HALF}


@pytest.mark.parametrize("variant", gemm.GEMM_VARIANTS)
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (37, 29, 53), (64, 64, 16), (65, 63, 17), (130, 70, 45)])
def test_gemm_against_float64(be, rng, variant, m, n, k):
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    c = gemm.gemm(dev(be, a), dev(be, b), variant)
    assert_close(c, a.astype(np.float64) @ b.astype(np.float64), GEMM_TOL[variant], what=variant)


def test_tf32_rounding_is_nearest_ties_away(be, rng):
    x = np.concatenate([rng.standard_normal(1000).astype(np.float32) * 1e3,
                        np.array([1 + 2**-11, 1 + 3 * 2**-11, -(1 + 2**-11), 0.0, -0.0, np.inf, -np.inf],
                                 dtype=np.float32)])
    y = to_numpy(probes.tf32_round(dev(be, x)))
    bits = x.view(np.uint32)
    finite = (bits & 0x7F800000) != 0x7F800000
    expect_bits = np.where(finite, (bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000), bits)
    np.testing.assert_array_equal(y.view(np.uint32), expect_bits)
    assert y[1000] == 1 + 2**-10 and y[1001] == 1 + 2**-9 and y[1002] == -(1 + 2**-10)


# ------------------------------------------------------------- elementwise
@pytest.mark.parametrize("variant", ("auto",) + elementwise.AXPY_VARIANTS)
@pytest.mark.parametrize("n", [1, 3, 4, 1001, 65_536 + 3])
def test_axpy(be, rng, n, variant):
    x = rng.standard_normal(n).astype(np.float32)
    y = rng.standard_normal(n).astype(np.float32)
    out = elementwise.axpy(1.5, dev(be, x), dev(be, y), variant)
    assert_close(out, 1.5 * x.astype(np.float64) + y, FP32)


@pytest.mark.parametrize("offset", [1, 2, 3])
def test_axpy_on_a_view_off_the_16_byte_grid(be, rng, offset):
    # x[offset:] is contiguous but starts 4 * offset bytes past an aligned
    # allocation: float4 loads from it fault on a GPU, so 'auto' runs scalar.
    n = 1001
    base = dev(be, rng.standard_normal(n + offset).astype(np.float32))
    x = base[offset:]
    y = rng.standard_normal(n).astype(np.float32)
    assert be.ptr(x) % 16 == 4 * offset
    out = elementwise.axpy(-0.5, x, dev(be, y))
    assert_close(out, -0.5 * to_numpy(x).astype(np.float64) + y, FP32)
    with pytest.raises(ValueError, match="variant 'float4' needs x to start on a 16-byte boundary"):
        elementwise.axpy(-0.5, x, dev(be, y), "float4")


# ------------------------------------------------------------- bad input
def test_the_ladder_rungs_validate_their_arguments():
    fcn_cuda.use_backend("host")
    a = np.ones((4, 5), np.float32)
    with pytest.raises(ValueError, match="variant"):
        gemm.gemm(a, a.T.copy(), "fastest")
    with pytest.raises(ValueError, match="inner dimensions"):
        gemm.gemm(a, a, "tiled")
    with pytest.raises(TypeError, match="a must be float32"):
        gemm.gemm(a.astype(np.float64), a.T.copy())
    with pytest.raises(ValueError, match="C-contiguous"):
        gemm.gemm(a, a.T)
    with pytest.raises(ValueError, match="whole warps"):
        reduce.warp_shuffle(np.ones(33, np.float32), "xor", 1)
    with pytest.raises(ValueError, match="width must be a power of two"):
        reduce.warp_segment_sum(np.ones(64, np.float32), "xor", 12)
    with pytest.raises(ValueError, match="kind"):
        reduce.warp_segment_sum(np.ones(64, np.float32), "rotate", 8)
    with pytest.raises(ValueError, match="empty"):
        reduce.block_sum(np.ones(0, np.float32))
    with pytest.raises(ValueError, match="variant"):
        elementwise.axpy(1.0, np.ones(4, np.float32), np.ones(4, np.float32), "float8")


# ------------------------------------------------------ misaligned access
# A GPU faults on a vector load or store whose address is not a multiple of
# its size (cudaErrorMisalignedAddress), and on a wmma tile pointer that is
# not 32-byte aligned; x86 would run both, so the emulator tests the address
# in every build.
@pytest.mark.parametrize("kind,what", [pytest.param("misaligned_float4", "vector access", id="float4"),
                                       pytest.param("misaligned_wmma", "wmma::load_matrix_sync", id="wmma")])
def test_misaligned_access_faults_in_every_build(kind, what):
    fcn_cuda.use_backend("host")
    with pytest.raises(RuntimeError, match=rf"kernel out_of_bounds_probe, block \(0,0,0\): thread \(0,0,0\): "
                                           rf"misaligned address: {re.escape(what)}"):
        probes.out_of_bounds(kind)
    x = np.arange(64, dtype=np.float32)
    np.testing.assert_array_equal(probes.barrier_rotate(x, 1), np.roll(x, -1))


# The alignment test lives in one helper (fcn::as_vector, and wmma's loads
# and stores): a vector type reached any other way would skip it.
VECTOR_TYPE = r"(?:\b(?:u?(?:char|short|int|long|longlong)|float|double)[1-4]|\b__half2|\b__nv_bfloat162)\b"
VECTOR_POINTER = re.compile(rf"{VECTOR_TYPE}\s*\*|reinterpret_cast<\s*(?:const\s+)?{VECTOR_TYPE}"
                            rf"|FCN_DYNAMIC_SMEM\(\s*{VECTOR_TYPE}")
CSRC = ROOT / "csrc"


def test_kernels_reach_vector_types_only_through_as_vector():
    sources = sorted((CSRC / "kernels").glob("*.cuh")) + sorted((CSRC / "ops").glob("*.cu"))
    assert len(sources) > 20
    offenders = []
    for path in sources:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("//", 1)[0]
            if VECTOR_POINTER.search(code) and "as_vector<" not in code:
                offenders.append(f"{path.relative_to(CSRC)}:{number}: {line.strip()}")
    assert not offenders, "vector pointers that bypass fcn::as_vector:\n" + "\n".join(offenders)
    assert VECTOR_POINTER.search("*reinterpret_cast<const float4*>(p)")  # the check itself can fail


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
            f = lambda v: reduce.warp_shuffle(v, kind, arg, width)  # noqa: E731
            np.testing.assert_array_equal(_on("host", f, x), _on("cuda", f, x))
    big = rng.standard_normal(4096).astype(np.float32) * 1e4
    np.testing.assert_array_equal(_on("host", probes.tf32_round, big), _on("cuda", probes.tf32_round, big))
    a = rng.standard_normal((45, 37)).astype(np.float32)
    b = rng.standard_normal((37, 51)).astype(np.float32)
    for variant in ("wmma_tf32", "wmma_f16", "wmma_bf16"):
        f = lambda p, q: gemm.gemm(p, q, variant)  # noqa: E731
        host, gpu = _on("host", f, a, b), _on("cuda", f, a, b)
        # Products of TF32/bf16 inputs are exact; only the accumulation order differs.
        assert_close(host, gpu, 1e-5, what=f"{variant}: emulator vs hardware")


# ---------------------------------------------------- the sanitizer builds
@pytest.mark.parametrize("kind,report", [pytest.param("global", "heap-buffer-overflow", id="global"),
                                         pytest.param("static_shared", "out of bounds for type 'float [64]'",
                                                      id="static_shared"),
                                         pytest.param("dynamic_shared", "AddressSanitizer", id="dynamic_shared")])
def test_asan_build_reports_out_of_bounds(kind, report):
    proc = run_sanitized("address", f"""
        from fcn_cuda.ops import probes
        probes.out_of_bounds({kind!r})
        print("no report")
    """)
    assert proc.returncode != 0, f"{kind}: the ASan build did not stop the out-of-bounds access"
    assert report in proc.stderr, proc.stderr[-3000:]
    assert "out_of_bounds_probe" in proc.stderr or "probes.cuh" in proc.stderr


@pytest.mark.parametrize("kind", ["shared", "warp", "global"])
def test_tsan_build_reports_data_races(kind):
    proc = run_sanitized("thread", f"""
        from fcn_cuda.ops import probes
        probes.race({kind!r})
        print("no report")
    """)
    assert proc.returncode == 66, f"{kind}: the TSan build did not report the race\n" + proc.stderr[-3000:]
    assert "WARNING: ThreadSanitizer: data race" in proc.stderr, proc.stderr[-3000:]
    assert "race_probe" in proc.stderr, proc.stderr[-3000:]  # the kernel is in the report's stacks
    assert "no report" not in proc.stdout


def test_tsan_build_reports_nothing_for_correct_kernels():
    # Barriers, __syncwarp, shuffles, atomics, wmma tiles, dynamic shared
    # memory, blocks on two workers, an error and the launches after it:
    # the happens-before the runtime announces must be exactly CUDA's.
    proc = run_sanitized("thread", """
        import numpy as np
        import pytest
        from fcn_cuda import _backend
        from fcn_cuda.ops import gemm, probes, reduce
        assert _backend.emulator_workers() >= 2
        rng = np.random.default_rng(5)
        assert probes.race("shared", ordered=True) == 1.0
        assert probes.race("warp", ordered=True) == 1.0
        assert probes.race("global", ordered=True) == 2.0
        x = np.arange(256, dtype=np.float32)
        np.testing.assert_array_equal(probes.barrier_rotate(x, 3), np.roll(x, -3))
        v = rng.integers(0, 1000, size=5001).astype(np.int32)
        counts, maximum, cas, fsum = probes.atomics(v, 7, v.size)
        assert cas == v.size and fsum == 0.5 * v.size
        y, misalignment = probes.dynamic_smem(rng.standard_normal(4 * 64 * 3).astype(np.float32), 64)
        a = rng.standard_normal((37, 29)).astype(np.float32)
        b = rng.standard_normal((29, 41)).astype(np.float32)
        for variant in gemm.GEMM_VARIANTS:  # within the half-precision contract, 1e-2
            assert np.linalg.norm(gemm.gemm(a, b, variant) - a @ b) <= 1e-2 * np.linalg.norm(a @ b), variant
        reduce.warp_segment_sum(rng.standard_normal(32 * 9).astype(np.float32), "down", 16)
        reduce.block_sum(rng.standard_normal(3001).astype(np.float32))
        with pytest.raises(RuntimeError, match="divergent"):
            probes.divergent_barrier()
        np.testing.assert_array_equal(probes.barrier_rotate(x, 1), np.roll(x, -1))
        print("clean")
    """)
    assert proc.returncode == 0 and "ThreadSanitizer" not in proc.stderr, proc.stderr[-5000:]
    assert "clean" in proc.stdout


def test_tsan_build_orders_a_failed_launch_before_what_follows():
    # Two workers, blocks dealt round robin: worker 0 (the calling thread)
    # runs block 0, then skips block 2 after block 1 fails on worker 1. What
    # block 0's threads did must still be ordered before the host's next
    # launch, which reuses the stack the launch's arguments lay on and
    # writes the same words of y.
    proc = run_sanitized("thread", """
        import numpy as np
        import pytest
        import fcn_cuda
        from fcn_cuda.ops import probes
        fcn_cuda.set_emulator_workers(2)
        y = np.zeros(4 * 32, np.float32)
        with pytest.raises(RuntimeError, match=r"kernel failing_block_probe, block \\(1,0,0\\): divergent"):
            probes.failing_blocks(y, blocks=4, fail=1)
        assert y[:32].all() and not y[64:].any()  # block 0 ran, blocks 2 and 3 did not
        probes.failing_blocks(y, blocks=1, fail=-1)
        assert y.all()
        print("clean")
    """)
    assert proc.returncode == 0 and "ThreadSanitizer" not in proc.stderr, proc.stderr[-5000:]
    assert "clean" in proc.stdout


def test_tsan_build_refuses_blocks_it_cannot_check():
    # TSan follows 256 threads at once; a larger block would run with races
    # missed, so the TSan build refuses it.
    proc = run_sanitized("thread", """
        import numpy as np
        import pytest
        from fcn_cuda.ops import probes
        x = np.arange(512, dtype=np.float32)
        with pytest.raises(RuntimeError, match="kernel barrier_rotate: a block of 512 threads; the ThreadSanitizer "
                                               "build runs at most 256"):
            probes.barrier_rotate(x, 1)
        np.testing.assert_array_equal(probes.barrier_rotate(x[:256], 1), np.roll(x[:256], -1))
        print("clean")
    """)
    assert proc.returncode == 0 and "ThreadSanitizer" not in proc.stderr, proc.stderr[-5000:]
    assert "clean" in proc.stdout


# A worker that fails outside any block (an allocation, an exception that is
# no std::exception) must end the launch with an error: in the TSan build the
# others wait for its turns, elsewhere an exception leaving a pool thread
# would end the process. The emulator's test hook makes worker `worker`
# throw as it reaches its turn `turn` (0: before its first block).
WORKER_FAULTS = """
    import numpy as np
    import pytest
    import fcn_cuda
    from fcn_cuda import _backend
    from fcn_cuda.ops import probes
    ext = _backend.active().ext
    fcn_cuda.set_emulator_workers(2)
    faults = [(w, t) for w, t in FAULTS if w < _backend.emulator_workers()]  # the ASan build runs one worker
    assert faults
    for worker, turn in faults:
        y = np.zeros(6 * 32, np.float32)
        ext.inject_worker_fault(worker, turn)
        with pytest.raises(RuntimeError, match="kernel failing_block_probe: an exception that is not a std::exception"):
            probes.failing_blocks(y, blocks=6, fail=-1)
        probes.failing_blocks(y, blocks=6, fail=-1)  # the next launch runs, from this thread too
        assert y.all(), (worker, turn)
    print("clean")
"""


@pytest.mark.parametrize("sanitizer", [None, "thread"])
def test_a_worker_failing_between_blocks_ends_the_launch(sanitizer):
    # Blocks go to whichever worker is free, except in the TSan build: there
    # worker 1 surely reaches its second turn.
    faults = [(1, 0), (0, 0)] + ([(1, 1), (0, 2)] if sanitizer else [])
    code = f"FAULTS = {faults!r}\n" + textwrap.dedent(WORKER_FAULTS)
    proc = run_sanitized(sanitizer, code, timeout=300) if sanitizer else _run_isolated(code)
    assert proc.returncode == 0 and "ThreadSanitizer" not in proc.stderr, proc.stderr[-5000:]
    assert "clean" in proc.stdout
