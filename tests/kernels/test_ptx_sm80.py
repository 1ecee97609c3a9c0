"""The Ampere instructions of csrc/kernels/ptx_sm80.cuh (cp.async, ldmatrix,
mma.sync) and the emulator's shared-memory bank-conflict counter.

Every expected value is laid out here by hand from the PTX ISA's
definitions (quoted where used), never taken from the emulator: lane l of a
warp has groupID g = l // 4 and threadID_in_group t = l % 4. On a GPU the
same probes run on the hardware, and test_emulator_matches_hardware compares
the two builds on random inputs.
"""

import numpy as np
import pytest

import fcn_cuda
from fcn_cuda.ops import probes as _probes

from _sanitizers import run_sanitized
from _util import to_numpy
from test_emulator import _on, needs_gpu

pytestmark = pytest.mark.kernels


def dev(be, a):
    return be.xp.asarray(a)


# ------------------------------------------------------------------ cp.async
def cp_async_expected(src, bytes, src_bytes):
    """cp.async [dst], [src], cp-size, src-size: the first src-size bytes
    come from src, the remaining cp-size - src-size bytes of dst are zero.
    Thread t copies bytes [t * cp-size, (t + 1) * cp-size) of src into the
    same bytes of the 64 * cp-size-byte destination; the probe's other
    output floats stay -1."""
    out = np.full(512, -1, np.float32)
    raw = out.view(np.uint8)
    s = src.view(np.uint8)
    for t in range(64):
        lo = t * bytes
        raw[lo:lo + bytes] = 0
        raw[lo:lo + src_bytes] = s[lo:lo + src_bytes]
    return out


@pytest.mark.parametrize("bytes,src_bytes,cg", [(4, 4, False), (8, 8, False), (16, 16, False), (16, 16, True),
                                                (4, 0, False), (8, 4, False), (16, 8, True), (16, 6, False)])
def test_cp_async_copies_and_zero_fills(be, bytes, src_bytes, cg):
    src = np.arange(1, 513, dtype=np.float32)
    out = to_numpy(_probes.cp_async(dev(be, src), "copy", bytes, src_bytes, cg))
    np.testing.assert_array_equal(out.view(np.uint32), cp_async_expected(src, bytes, src_bytes).view(np.uint32))
    if bytes == 16 and src_bytes == 8:  # thread 3's floats 12, 13 read, 14, 15 zero-filled
        assert list(out[12:16]) == [13.0, 14.0, 0.0, 0.0]
    if bytes == 4:  # 64 floats written, the rest untouched
        assert (out[64:] == -1).all()


def test_cp_async_wait_group_retires_the_oldest_groups(be):
    """wait_group 1 leaves at most one group (the newest) in flight: the
    first group's bytes are readable, then wait_group 0 settles the second."""
    src = np.arange(1, 513, dtype=np.float32) * 3
    out = to_numpy(_probes.cp_async(dev(be, src), "groups"))
    np.testing.assert_array_equal(out, src)


@pytest.mark.parametrize("mode,what", [("read_early", "a shared-memory access"),
                                       ("group_early", "a shared-memory access"),
                                       ("ldmatrix_early", "ldmatrix"), ("overwrite", "cp.async")])
def test_cp_async_destination_in_flight_is_an_error(mode, what):
    """Reading (or writing again) bytes whose cp.async group has not
    completed reads stale data on a GPU; the emulator names the kernel."""
    fcn_cuda.use_backend("host")
    src = np.arange(512, dtype=np.float32)
    with pytest.raises(RuntimeError, match=rf"kernel cp_async_probe, block \(0,0,0\): thread \(\d+,0,0\): {what} "
                                           r"touches shared memory at 0x[0-9a-f]+ that a cp.async of thread \d+ "
                                           r"\(linear threadIdx\) still has in flight"):
        _probes.cp_async(src, mode)
    # group_early: thread t's first group is settled, its second (s[1]) is not
    np.testing.assert_array_equal(_probes.cp_async(src, "groups"), src)


def test_cp_async_checks_alignment_and_size():
    fcn_cuda.use_backend("host")
    src = np.arange(520, dtype=np.float32)
    with pytest.raises(RuntimeError, match="misaligned address: cp.async global source"):
        _probes.cp_async(src[1:], "copy", 8)
    with pytest.raises(RuntimeError, match="src-size exceeds cp-size"):
        _probes.cp_async(src, "copy", 8, 12)


def test_asan_build_reports_a_plain_read_in_flight():
    proc = run_sanitized("address", """
        import numpy as np
        from fcn_cuda.ops import probes as _probes
        _probes.cp_async(np.arange(512, dtype=np.float32), "plain_read_early")
        print("no report")
    """)
    assert proc.returncode != 0, "the ASan build did not stop a plain read of a cp.async destination in flight"
    assert "use-after-poison" in proc.stderr, proc.stderr[-3000:]
    assert "cp_async_probe" in proc.stderr or "probes.cuh" in proc.stderr


def test_tsan_build_orders_cp_async_by_its_wait():
    """The copy is the issuing thread's write at its wait: waited before the
    barrier it is ordered before the reader's read; waited after it, a race."""
    code = """
        import numpy as np
        from fcn_cuda.ops import probes as _probes
        src = np.arange(1, 513, dtype=np.float32)
        assert _probes.cp_async(src, "{}")[0] == 1.0
        print("clean")
    """
    ordered = run_sanitized("thread", code.format("ordered"))
    assert ordered.returncode == 0 and "ThreadSanitizer" not in ordered.stderr, ordered.stderr[-5000:]
    assert "clean" in ordered.stdout
    unwaited = run_sanitized("thread", code.format("unwaited"))
    assert unwaited.returncode == 66, "the TSan build did not report the read of an unwaited copy\n" + \
        unwaited.stderr[-3000:]
    assert "WARNING: ThreadSanitizer: data race" in unwaited.stderr and "cp_async_probe" in unwaited.stderr


# ------------------------------------------------------------------ ldmatrix
# The probe's 128 rows of 8 b16; element (r, c) = 100 r + c. Lane l gives
# the address of row ROWS[l] (a permutation of the first 32, so a
# lane-to-row mix-up shows).
M16 = (100 * np.arange(128)[:, None] + np.arange(8)[None, :]).astype(np.uint16)
ROWS = ((7 * np.arange(32) + 3) % 32).astype(np.int32)


def ldmatrix_expected(num, trans):
    """PTX ISA, ldmatrix: for .x1 / .x2 / .x4, lanes 0-7 / 0-15 / 0-31 give
    the row addresses, lanes 8i .. 8i+7 rows 0..7 of matrix i. Each lane
    receives one 32-bit register per matrix: register i of lane l holds
    matrix i's row g, elements 2t and 2t+1 (the lower one in the low half);
    with .trans the matrix is read transposed: elements (row 2t, column g)
    and (row 2t+1, column g)."""
    regs = np.zeros((32, 4), np.uint32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for i in range(num):
            if trans:
                lo, hi = M16[ROWS[8 * i + 2 * t], g], M16[ROWS[8 * i + 2 * t + 1], g]
            else:
                lo, hi = M16[ROWS[8 * i + g], 2 * t], M16[ROWS[8 * i + g], 2 * t + 1]
            regs[lane, i] = int(lo) | int(hi) << 16
    return regs


@pytest.mark.parametrize("trans", [False, True])
@pytest.mark.parametrize("num", [1, 2, 4])
def test_ldmatrix_thread_to_element_mapping(be, num, trans):
    regs = to_numpy(_probes.ldmatrix(dev(be, M16), dev(be, ROWS), num, trans))
    np.testing.assert_array_equal(regs, ldmatrix_expected(num, trans))
    # Worked by hand: lane 5 has g = 1, t = 1. Plain: matrix 0's row 1, the
    # row whose address lane 1 gave (ROWS[1] = 10), elements 2 and 3.
    # .trans: rows 2t = 2 and 3 (ROWS = 17, 24), column g = 1.
    assert ROWS[1] == 10 and ROWS[2] == 17 and ROWS[3] == 24
    assert regs[5, 0] == (1701 | 2401 << 16 if trans else 1002 | 1003 << 16)
    if num == 4 and not trans:  # lane 31 (g = 7, t = 3), matrix 3: lane 31's row ROWS[31] = 28, elements 6, 7
        assert ROWS[31] == 28 and regs[31, 3] == 2806 | 2807 << 16
    assert not regs[:, num:].any()


# ----------------------------------------------------------------- mma.sync
def tf32_bits(x):
    return np.asarray(x, np.float32).view(np.uint32)


def bf16_bits(x):
    """Exact here: every value the tests pack is a small integer."""
    return (np.asarray(x, np.float32).view(np.uint32) >> 16).astype(np.uint32)


def mma_fragments(kind, A, B, C):
    """The PTX ISA's fragment tables ("Matrix fragments for mma.m16n8k8",
    .tf32, and "for mma.m16n8k16", .bf16), lane by lane:
      m16n8k8 tf32: a0..a3 = A[g][t], A[g+8][t], A[g][t+4], A[g+8][t+4];
                    b0, b1 = B[t][g], B[t+4][g]
      m16n8k16 bf16 (two per register, the lower index in the low half):
                    a = {A[g][2t], A[g][2t+1]}, {A[g+8][2t], A[g+8][2t+1]},
                        {A[g][2t+8], A[g][2t+9]}, {A[g+8][2t+8], A[g+8][2t+9]}
                    b = {B[2t][g], B[2t+1][g]}, {B[2t+8][g], B[2t+9][g]}
      both: c0..c3 = C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1] (D likewise)."""
    a = np.zeros((32, 4), np.uint32)
    b = np.zeros((32, 2), np.uint32)
    c = np.zeros((32, 4), np.float32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        if kind == "tf32":
            a[lane] = tf32_bits([A[g, t], A[g + 8, t], A[g, t + 4], A[g + 8, t + 4]])
            b[lane] = tf32_bits([B[t, g], B[t + 4, g]])
        else:
            pack = lambda lo, hi: bf16_bits(lo) | bf16_bits(hi) << 16  # noqa: E731
            a[lane] = [pack(A[g, 2 * t], A[g, 2 * t + 1]), pack(A[g + 8, 2 * t], A[g + 8, 2 * t + 1]),
                       pack(A[g, 2 * t + 8], A[g, 2 * t + 9]), pack(A[g + 8, 2 * t + 8], A[g + 8, 2 * t + 9])]
            b[lane] = [pack(B[2 * t, g], B[2 * t + 1, g]), pack(B[2 * t + 8, g], B[2 * t + 9, g])]
        c[lane] = [C[g, 2 * t], C[g, 2 * t + 1], C[g + 8, 2 * t], C[g + 8, 2 * t + 1]]
    return a, b, c


def d_matrix(d):
    """D from the lanes' registers, by the same table as C."""
    D = np.zeros((16, 8), np.float32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        D[g, 2 * t], D[g, 2 * t + 1], D[g + 8, 2 * t], D[g + 8, 2 * t + 1] = d[lane]
    return D


@pytest.mark.parametrize("kind,depth", [("tf32", 8), ("bf16", 16)])
def test_mma_fragment_layout(be, rng, kind, depth):
    """Small integers: every product and sum is exact, so D = A B + C holds
    bit for bit whatever the order of the sums."""
    A = rng.integers(-8, 9, (16, depth)).astype(np.float32)
    B = rng.integers(-8, 9, (depth, 8)).astype(np.float32)
    C = rng.integers(-50, 51, (16, 8)).astype(np.float32)
    a, b, c = mma_fragments(kind, A, B, C)
    d = to_numpy(_probes.mma(dev(be, a), dev(be, b), dev(be, c), kind))
    np.testing.assert_array_equal(d_matrix(d), A.astype(np.float64) @ B + C)
    # Worked by hand: lane 5 (g = 1, t = 1) register d2 is D[9][2].
    assert d[5, 2] == (A[9].astype(np.float64) @ B[:, 2]) + C[9, 2]


def test_mma_tf32_reads_the_top_19_bits(be):
    """TF32 keeps 10 mantissa bits: 1 + 2^-10 + 2^-11 is read as 1 + 2^-10
    (the 2^-11 bit is among the 13 the tensor cores ignore); 3 + 2^-10 as 3 (TF32 steps by 2^-9 in [2, 4))."""
    A = np.zeros((16, 8), np.float32)
    B = np.zeros((8, 8), np.float32)
    A[0, 0], A[1, 0] = 1 + 2.0**-10 + 2.0**-11, 3 + 2.0**-10
    B[0, 0] = 1.0
    a, b, c = mma_fragments("tf32", A, B, np.zeros((16, 8), np.float32))
    D = d_matrix(to_numpy(_probes.mma(dev(be, a), dev(be, b), dev(be, c), "tf32")))
    assert D[0, 0] == 1 + 2.0**-10 and D[1, 0] == 3.0
    assert not D[2:].any() and not D[:, 1:].any()


def test_mma_bf16_accumulates_in_fp32(be):
    """bf16 operands, fp32 sums: sixteen products 2^-8 * 1 onto C = 1 give
    1 + 2^-4 (a bf16 running sum would stay at 1: 1 + 2^-8 rounds back to 1
    at bf16's 8 bits), and sixteen products 1 * 1 onto 2^20 give 2^20 + 16."""
    A = np.zeros((16, 16), np.float32)
    B = np.zeros((16, 8), np.float32)
    C = np.zeros((16, 8), np.float32)
    A[0, :] = 2.0**-8
    B[:, 0] = 1.0
    C[0, 0] = 1.0
    A[3, :] = 1.0
    C[3, 0] = 2.0**20
    a, b, c = mma_fragments("bf16", A, B, C)
    D = d_matrix(to_numpy(_probes.mma(dev(be, a), dev(be, b), dev(be, c), "bf16")))
    assert D[0, 0] == 1 + 2.0**-4 and D[3, 0] == 2.0**20 + 16


# ------------------------------------------------------ bank-conflict counter
# (stride in vectors, width in floats) -> (wavefronts, ideal) of one warp-wide access,
# worked by hand: 32 banks of 4-byte words; accesses of 4 bytes are served
# for the whole warp at once, 8-byte ones per half-warp, 16-byte ones per
# quarter-warp; a phase costs the most distinct words in any one bank.
BANK_CASES = {
    (1, 1): (1, 1),    # lane l reads word l: banks 0..31 once each
    (32, 1): (32, 1),  # word 32 l: every lane in bank 0, 32 distinct words
    (2, 1): (2, 1),    # word 2 l: lanes l and l + 16 share bank 2l % 32
    (0, 1): (1, 1),    # every lane the same word: a broadcast
    (1, 2): (2, 2),    # float2: each half-warp reads 128 contiguous bytes
    (1, 4): (4, 4),    # float4: each quarter-warp reads 128 contiguous bytes
    (2, 4): (8, 4),    # float4 every 32 bytes: a quarter-warp spans 256 bytes, 2 words per bank
    (8, 4): (32, 4),   # float4 every 128 bytes: 8 lanes on the same 4 banks
}


# Stores to one word from every lane would race (TSan reports it): the broadcast case is loads only.
@pytest.mark.parametrize("stride,width,store", [(*case, store) for case in BANK_CASES for store in (False, True)
                                                if not (store and case[0] == 0)])
def test_bank_conflicts_of_a_warp_access(counting, stride, width, store):
    out = _probes.smem_bank(stride, width, store, repeat=3)
    if not store:
        np.testing.assert_array_equal(out, (np.arange(32) * stride * width) % 4096)
    wavefronts, ideal = BANK_CASES[(stride, width)]
    got = fcn_cuda.emulator_counters()["smem_bank_probe"]["shared"]
    where = got.pop("worst_at")  # a conflict names the probe's access, none names nothing
    assert (where is not None and where.startswith("csrc/kernels/probes.cuh:")) == (wavefronts > ideal)
    assert got == {"accesses": 3, "wavefronts": 3 * wavefronts, "ideal": 3 * ideal,
                   "conflicts": 3 * (wavefronts - ideal), "max_way": wavefronts // ideal}


@pytest.mark.parametrize("rows,num,wavefronts", [
    (np.arange(32), 4, 4),          # 8 contiguous 16-byte rows per matrix: 128 bytes, one wavefront each
    ((8 * np.arange(32)) % 32, 1, 4),  # rows 0, 8, 16, 24 (128 bytes apart), twice: 4 words in each of banks 0-3
    (ROWS, 2, 2),                   # rows 3, 10, 17, 24, 31, 6, 13, 20: 8 distinct rows mod 8, no conflict
])
def test_bank_conflicts_of_ldmatrix(counting, rows, num, wavefronts):
    _probes.ldmatrix(M16, rows.astype(np.int32), num)
    got = fcn_cuda.emulator_counters()["ldmatrix_probe"]["ldmatrix"]
    assert (got["accesses"], got["wavefronts"], got["ideal"]) == (1, wavefronts, num)


def swizzled_tile_rows(swizzled):
    """The row addresses (in 16-byte units) of an ldmatrix.x4 that reads an
    A fragment from a 16-row tile of 128-byte rows (8 chunks of 16 bytes):
    lane l gives row r = l % 8 + 8 (i % 2) of matrix i = l // 8, chunk
    c = i // 2. Unswizzled, chunk c of row r is unit 8 r + c: the 8 rows of a
    matrix are 128 bytes apart, all in the same 4 banks. XOR-swizzled, it is
    unit 8 r + (c ^ r % 8): the 8 rows fall in 8 different 16-byte columns."""
    lanes = np.arange(32)
    i, r = lanes // 8, lanes % 8 + 8 * ((lanes // 8) % 2)
    c = i // 2
    return (8 * r + (c ^ (r % 8) if swizzled else c)).astype(np.int32)


def test_xor_swizzle_makes_ldmatrix_conflict_free(counting):
    """The layout the rung's kernels stage A in: unswizzled, each matrix is
    8-way conflicted (32 wavefronts for the x4, 4 ideal); swizzled, none.
    The data stored swizzled is read back as the same fragment."""
    logical = M16[:128]
    swizzled = np.empty_like(logical)
    for unit in range(128):  # logical chunk c of row r stored at chunk c ^ r % 8
        r, c = unit // 8, unit % 8
        swizzled[8 * r + (c ^ (r % 8))] = logical[unit]
    plain = _probes.ldmatrix(logical, swizzled_tile_rows(False), 4)
    assert fcn_cuda.emulator_counters()["ldmatrix_probe"]["ldmatrix"]["wavefronts"] == 32
    fcn_cuda.reset_emulator_counters()
    np.testing.assert_array_equal(_probes.ldmatrix(swizzled, swizzled_tile_rows(True), 4), plain)
    got = fcn_cuda.emulator_counters()["ldmatrix_probe"]["ldmatrix"]
    assert (got["wavefronts"], got["ideal"], got["max_way"]) == (4, 4, 1)


def test_bank_conflicts_of_cp_async(counting):
    """16-byte copies from 64 threads to consecutive 16-byte slots: each
    quarter-warp writes 128 contiguous bytes, 4 wavefronts per warp."""
    _probes.cp_async(np.arange(512, dtype=np.float32), "copy", 16)
    got = fcn_cuda.emulator_counters()["cp_async_probe"]["cp.async"]
    assert (got["accesses"], got["wavefronts"], got["ideal"]) == (2, 8, 8)


def test_counter_is_off_unless_asked_and_resets():
    fcn_cuda.use_backend("host")
    fcn_cuda.reset_emulator_counters()
    _probes.smem_bank(32)
    assert fcn_cuda.emulator_counters() == {}
    fcn_cuda.count_bank_conflicts(True)
    try:
        _probes.smem_bank(32)
        assert fcn_cuda.emulator_counters()["smem_bank_probe"]["shared"]["max_way"] == 32
        fcn_cuda.reset_emulator_counters()
        assert fcn_cuda.emulator_counters() == {}
    finally:
        fcn_cuda.count_bank_conflicts(False)
    with pytest.raises(TypeError, match="on must be a bool"):
        fcn_cuda.count_bank_conflicts(1)


# ------------------------------------------ the emulator against the hardware
@needs_gpu
def test_emulator_matches_hardware(rng):
    src = rng.standard_normal(512).astype(np.float32)
    for bytes, src_bytes, cg in [(4, 4, False), (8, 4, False), (16, 16, True), (16, 6, False), (16, 0, False)]:
        f = lambda s: _probes.cp_async(s, "copy", bytes, src_bytes, cg)  # noqa: E731
        np.testing.assert_array_equal(_on("host", f, src), _on("cuda", f, src))
    groups = lambda s: _probes.cp_async(s, "groups")  # noqa: E731
    np.testing.assert_array_equal(_on("host", groups, src), _on("cuda", groups, src))
    m = rng.integers(0, 2**16, (128, 8)).astype(np.uint16)
    rows = rng.permutation(32).astype(np.int32)
    for num in (1, 2, 4):
        for trans in (False, True):
            f = lambda p, q: _probes.ldmatrix(p, q, num, trans)  # noqa: E731
            np.testing.assert_array_equal(_on("host", f, m, rows), _on("cuda", f, m, rows))
    for kind, depth in (("tf32", 8), ("bf16", 16)):
        A = rng.standard_normal((16, depth)).astype(np.float32)
        B = rng.standard_normal((depth, 8)).astype(np.float32)
        C = rng.standard_normal((16, 8)).astype(np.float32)
        if kind == "bf16":  # operands that bf16 holds exactly (the fragment packs truncate)
            A, B = [(v.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32) for v in (A, B)]
        a, b, c = mma_fragments(kind, A, B, C)
        f = lambda p, q, r: _probes.mma(p, q, r, kind)  # noqa: E731
        host, gpu = _on("host", f, a, b, c), _on("cuda", f, a, b, c)
        # Products of TF32 / bf16 operands are exact; only the order of the fp32 sums may differ.
        np.testing.assert_allclose(host, gpu, rtol=1e-5, atol=1e-5 * np.abs(gpu).max())
