"""The warpgroup MMA of csrc/kernels/ptx_wgmma.cuh, on every backend present:
each probe's shared-memory image, register fragments and expected
accumulators are laid out here by hand from the PTX ISA's definitions (the
rule each follows is in a comment beside it), never from the emulator. On a
GPU (an sm_90a build) the same probes check the hardware, and
test_emulator_matches_hardware compares the two on random operands; the
misuses the emulator refuses are host-only (a GPU would compute garbage).
"""

import numpy as np
import pytest

import fcn_cuda
from fcn_cuda.ops import probes

from _sanitizers import run_sanitized

from _util import to_numpy
from test_emulator import _on, needs_gpu

pytestmark = pytest.mark.kernels

K = {"tf32": 8, "bf16": 16}  # m64nNk8 / m64nNk16: 32 bytes of K either way
SWIZZLE_BYTES = {1: 128, 2: 64, 3: 32}


# ------------------------------------------------------- layouts, by hand
def element_bytes(kind):
    return 4 if kind == "tf32" else 2


def as_bits(values, kind):
    """The stored bits of each element: fp32 for tf32, the top half of the fp32 bits for bf16
    (the values used here are exact in bf16)."""
    bits = np.asarray(values, np.float32).view(np.uint32)
    return bits if kind == "tf32" else (bits >> 16).astype(np.uint16)


def place(image, values, kind, start, lbo, sbo, swizzle):
    """Writes a rows x K operand, K-major, as the ISA's "Shared Memory Matrix
    Layout" puts it: core matrices of 8 rows x 16 bytes. Without swizzle, a
    core matrix's rows are 16 bytes apart, the next core matrix along K is LBO
    bytes on and the next 8 rows SBO bytes on. With a W-byte swizzle the rows
    are W bytes apart, the two 16-byte halves of the 32 bytes of K side by
    side (LBO unused), and then address bits [4, 4 + log2(W/16)) are XORed
    with bits [7, ...) of the same width: the image's base is 1024-aligned,
    so offsets into it have the address's low 10 bits."""
    bits = as_bits(values, kind)
    eb = element_bytes(kind)
    raw = bits.view(np.uint8).reshape(bits.shape[0], bits.shape[1], eb)
    for r in range(bits.shape[0]):
        for k in range(bits.shape[1]):
            kb = k * eb
            if swizzle == 0:
                at = start + (r // 8) * sbo + (kb // 16) * lbo + (r % 8) * 16 + kb % 16
            else:
                w = SWIZZLE_BYTES[swizzle]
                at = start + (r // 8) * sbo + (r % 8) * w + kb
                at ^= ((at >> 7) & (w // 16 - 1)) << 4
            image[at:at + eb] = raw[r, k]


def accumulators(D, threads=128):
    """The ISA's accumulator fragment of m64nN (f32): thread T of the
    warpgroup (warp w = T // 32, lane l, groupID g = l // 4, threadID_in_group
    t = l % 4) holds d[i] = D[16 w + g + 8 ((i >> 1) & 1)][8 (i >> 2) + 2 t + (i & 1)]."""
    n = D.shape[1]
    out = np.zeros((threads, n // 2), np.float32)
    for T in range(threads):
        w, g, t = T // 32 % 4, T % 32 // 4, T % 4
        for i in range(n // 2):
            out[T, i] = D[16 * w + g + 8 * ((i >> 1) & 1), 8 * (i >> 2) + 2 * t + (i & 1)]
    return out


def a_fragment(A, kind):
    """The ISA's register fragment of A for the RS form, thread T as above.
    tf32 (m64nNk8): a0..a3 = A[g][t], A[g + 8][t], A[g][t + 4], A[g + 8][t + 4].
    bf16 (m64nNk16): register r holds A[g + 8 (r & 1)][2 t + 8 (r >> 1)] in its
    low half and the element of the next k in its high half. Rows + 16 w."""
    bits = as_bits(A, kind).astype(np.uint32)
    regs = np.zeros((128, 4), np.uint32)
    for T in range(128):
        w, g, t = T // 32, T % 32 // 4, T % 4
        for r in range(4):
            row = 16 * w + g + 8 * (r & 1)
            if kind == "tf32":
                regs[T, r] = bits[row, t + 4 * (r >> 1)]
            else:
                col = 2 * t + 8 * (r >> 1)
                regs[T, r] = bits[row, col] | bits[row, col + 1] << 16
    return regs


def run(be, image, a, b, n, kind, rs=False, A=None, **kw):
    regs = be.xp.asarray(a_fragment(A, kind)) if rs else None
    if "d_init" in kw:
        kw["d_init"] = be.xp.asarray(kw["d_init"])
    out, out2 = probes.wgmma(be.xp.asarray(image), a, b, n, kind, rs=rs, a_regs=regs, **kw)
    return to_numpy(out), to_numpy(out2)


def small_ints(rng, shape, lo=-4, hi=5):
    return rng.integers(lo, hi, shape).astype(np.float32)


def filler(size=8192):
    """An image whose unused bytes are 0xff (a NaN in either kind): a byte read from the wrong place shows."""
    return np.full(size, 0xFF, np.uint8)


# A at offset 0 (64 rows: 8 groups of 8), B after it; the plain no-swizzle
# layout: the K-halves 128 bytes apart, 8-row groups 256 bytes apart.
A_PLAIN = (0, 128, 256, 0)
B_PLAIN_AT = 2048


# ------------------------------------------------------------ descriptors
@pytest.mark.parametrize("offset, lbo, sbo, swizzle", [(48, 128, 256, 0), (1024 + 32, 16, 1024, 1),
                                                       (512, 4096, 512, 2), (256, 0, 256, 3)])
def test_descriptor_fields_by_hand(be, offset, lbo, sbo, swizzle):
    # Matrix Descriptor Format: bits 0-13 matrix-descriptor-encode(start),
    # 16-29 encode(LBO), 32-45 encode(SBO), 49-51 base offset, 62-63 swizzle;
    # encode(x) = (x & 0x3FFFF) >> 4. The array is 1024-aligned, so the start
    # field's low 6 bits are (offset % 1024) >> 4 whatever the array's address.
    desc = probes.wgmma_descriptor(offset, lbo, sbo, swizzle)
    assert desc & 0x3F == (offset % 1024) >> 4
    assert (desc >> 16) & 0x3FFF == lbo >> 4
    assert (desc >> 32) & 0x3FFF == sbo >> 4
    assert (desc >> 49) & 0x7 == 0
    assert desc >> 62 == swizzle


# --------------------------------------------------- fragments and layouts
def test_accumulator_layout_by_hand(be):
    # A[m][0] = m, A[m][1] = 1, B[0][n] = 1000, B[1][n] = n, the rest 0:
    # D[m][n] = 1000 m + n, readable at a glance.
    A = np.zeros((64, 8), np.float32)
    A[:, 0], A[:, 1] = np.arange(64), 1
    Bt = np.zeros((8, 8), np.float32)  # B as its K-major rows: Bt[n][k] = B[k][n]
    Bt[:, 0], Bt[:, 1] = 1000, np.arange(8)
    image = filler()
    place(image, A, "tf32", *A_PLAIN)
    place(image, Bt, "tf32", B_PLAIN_AT, 128, 256, 0)
    out, _ = run(be, image, A_PLAIN, (B_PLAIN_AT, 128, 256, 0), 8, "tf32")
    # Thread 37 = warp 1, lane 5: g 1, t 1; rows 16 + 1 and 16 + 9, columns 2 and 3.
    assert out[37].tolist() == [17002, 17003, 25002, 25003]
    # Thread 0 holds D[0][0..1] and D[8][0..1]; thread 127 (w 3, g 7, t 3) D[55][6..7], D[63][6..7].
    assert out[0].tolist() == [0, 1, 8000, 8001]
    assert out[127].tolist() == [55006, 55007, 63006, 63007]
    m, n = np.meshgrid(np.arange(64), np.arange(8), indexing="ij")
    np.testing.assert_array_equal(out, accumulators(1000 * m + n))


@pytest.mark.parametrize("kind", ["tf32", "bf16"])
@pytest.mark.parametrize("a_op, b_op", [
    ((0, 128, 256, 0), (2048, 128, 256, 0)),      # K-halves next to each other, groups after
    ((0, 1024, 128, 0), (4096, 2048, 128, 0)),    # all first halves, then all second halves
    ((16, 2048, 256, 0), (4096 + 16, 256, 512, 0)),  # gaps between core matrices, starts off 128 bytes
])
def test_leading_and_stride_byte_offsets(be, rng, kind, a_op, b_op):
    # No swizzle: element (r, k) at start + (r // 8) SBO + (kbyte // 16) LBO +
    # (r % 8) 16 + kbyte % 16. The 0xff bytes left between core matrices are
    # NaN: a read from a wrong place shows.
    n = 16
    A, Bt = small_ints(rng, (64, K[kind])), small_ints(rng, (n, K[kind]))
    image = filler()
    place(image, A, kind, *a_op)
    place(image, Bt, kind, *b_op)
    out, _ = run(be, image, a_op, b_op, n, kind)
    np.testing.assert_array_equal(out, accumulators(A @ Bt.T))


@pytest.mark.parametrize("n", probes.WGMMA_N)
@pytest.mark.parametrize("kind", ["tf32", "bf16"])
@pytest.mark.parametrize("rs", [False, True], ids=["ss", "rs"])
def test_every_shape(be, rng, n, kind, rs):
    A, Bt = small_ints(rng, (64, K[kind])), small_ints(rng, (n, K[kind]))
    image = filler(2048 + n * 32 + 64)
    place(image, A, kind, *A_PLAIN)
    place(image, Bt, kind, B_PLAIN_AT, 128, 256, 0)
    out, _ = run(be, image, A_PLAIN, (B_PLAIN_AT, 128, 256, 0), n, kind, rs=rs, A=A)
    np.testing.assert_array_equal(out, accumulators(A @ Bt.T))


@pytest.mark.parametrize("kind", ["tf32", "bf16"])
@pytest.mark.parametrize("kk", [0, 1, 2, 3])
def test_swizzle_128_reads_a_tma_box(be, rng, kind, kk):
    # B is stored as a TMA box with the 128-byte swizzle leaves it (the tensor
    # map's definition, not the descriptor's): N rows of 128 bytes of K, row r
    # at 128 r, its 16-byte chunk c at chunk position c ^ (r % 8). The wgmma
    # reads the 32 bytes of K slice kk: start + 32 kk (the start field + 2 kk),
    # SBO 1024 (8 rows of 128 bytes). D = A * B[kk-th slice].
    n, eb = 64, element_bytes(kind)
    per_row = 128 // eb
    Bt = small_ints(rng, (n, per_row))
    A = small_ints(rng, (64, K[kind]))
    image = filler(2048 + n * 128)
    place(image, A, kind, *A_PLAIN)
    rows = as_bits(Bt, kind).view(np.uint8).reshape(n, 128)
    for r in range(n):
        for c in range(8):
            at = B_PLAIN_AT + 128 * r + 16 * (c ^ (r % 8))
            image[at:at + 16] = rows[r, 16 * c:16 * c + 16]
    # By hand: row 3's chunk 2 (K bytes 32-47) lies at 3 * 128 + (2 ^ 3) * 16 = 400.
    assert image[B_PLAIN_AT + 400:B_PLAIN_AT + 416].tobytes() == rows[3, 32:48].tobytes()
    out, _ = run(be, image, A_PLAIN, (B_PLAIN_AT + 32 * kk, 16, 1024, 1), n, kind)
    k0 = kk * K[kind]
    np.testing.assert_array_equal(out, accumulators(A @ Bt[:, k0:k0 + K[kind]].T))


@pytest.mark.parametrize("swizzle", [2, 3])
@pytest.mark.parametrize("kind", ["tf32", "bf16"])
def test_swizzle_64_and_32_read_tma_boxes(be, rng, swizzle, kind):
    # A TMA box with the 64-byte swizzle: rows 64 bytes apart, chunk c of row
    # r at position c ^ ((r // 2) % 4) (address bits 4-5 ^= bits 7-8); with
    # the 32-byte swizzle: rows 32 bytes apart, c ^ ((r // 4) % 2) (bit 4 ^=
    # bit 7). SBO: 8 rows = 512 or 256 bytes. Both operands swizzled, slice 0.
    w = SWIZZLE_BYTES[swizzle]
    n, eb = 32, element_bytes(kind)
    A, Bt = small_ints(rng, (64, w // eb)), small_ints(rng, (n, w // eb))
    image = filler(64 * w + n * w)

    def box(values, at):
        rows = as_bits(values, kind).view(np.uint8).reshape(values.shape[0], w)
        for r in range(values.shape[0]):
            for c in range(w // 16):
                p = at + w * r + 16 * (c ^ ((r * w // 128) % (w // 16)))
                image[p:p + 16] = rows[r, 16 * c:16 * c + 16]

    box(A, 0)
    box(Bt, 64 * w)
    out, _ = run(be, image, (0, 16, 8 * w, swizzle), (64 * w, 16, 8 * w, swizzle), n, kind)
    np.testing.assert_array_equal(out, accumulators(A[:, :K[kind]] @ Bt[:, :K[kind]].T))


@pytest.mark.parametrize("rs", [False, True], ids=["ss", "rs"])
def test_tf32_operands_are_truncated_to_19_bits(be, rs):
    # The tensor core reads a tf32 operand's top 19 bits (sign, exponent, 10
    # mantissa bits): the 13 low bits are ignored, a truncation toward zero.
    # 0x3F801000 = 1 + 2^-11 reads as 1 (cvt.rna would round it up to
    # 1 + 2^-10); 0x3F802000 = 1 + 2^-10 is exact; 0xBF803FFF = -(1 + 2^-10 +
    # (2^-10 - 2^-23)) reads as -(1 + 2^-10). Row m of A holds one of them in
    # k = 0, B[0][n] = 1 (exact), everything else 0: D[m][n] = tf32(A[m][0]).
    patterns = np.array([0x3F801000, 0x3F802000, 0xBF803FFF, 0x3F800001], np.uint32)
    reads = np.array([1.0, 1 + 2**-10, -(1 + 2**-10), 1.0], np.float32)
    A = np.zeros((64, 8), np.float32)
    A[:, 0] = np.resize(patterns, 64).view(np.float32)
    Bt = np.zeros((8, 8), np.float32)
    Bt[:, 0] = 1
    image = filler()
    place(image, A, "tf32", *A_PLAIN)
    place(image, Bt, "tf32", B_PLAIN_AT, 128, 256, 0)
    out, _ = run(be, image, A_PLAIN, (B_PLAIN_AT, 128, 256, 0), 8, "tf32", rs=rs, A=A)
    D = np.repeat(np.resize(reads, 64)[:, None], 8, axis=1)
    np.testing.assert_array_equal(out, accumulators(D))


@pytest.mark.parametrize("kind", ["tf32", "bf16"])
@pytest.mark.parametrize("rs", [False, True], ids=["ss", "rs"])
def test_scale_d_accumulates(be, rng, kind, rs):
    # scale-d 0: D = A B; 1: D = A B + D. "twice": two wgmmas in one group
    # into the same accumulators, the second with scale-d 1: D = C + 2 A B.
    n = 32
    A, Bt = small_ints(rng, (64, K[kind])), small_ints(rng, (n, K[kind]))
    C = small_ints(rng, (64, n), -50, 50)
    image = filler()
    place(image, A, kind, *A_PLAIN)
    place(image, Bt, kind, B_PLAIN_AT, 128, 256, 0)
    b = (B_PLAIN_AT, 128, 256, 0)
    init = accumulators(C)
    fresh, _ = run(be, image, A_PLAIN, b, n, kind, rs=rs, A=A, d_init=init, accumulate=False)
    np.testing.assert_array_equal(fresh, accumulators(A @ Bt.T))
    added, _ = run(be, image, A_PLAIN, b, n, kind, rs=rs, A=A, d_init=init, accumulate=True)
    np.testing.assert_array_equal(added, accumulators(C + A @ Bt.T))
    twice, _ = run(be, image, A_PLAIN, b, n, kind, rs=rs, A=A, d_init=init, accumulate=True, mode="twice")
    np.testing.assert_array_equal(twice, accumulators(C + 2 * (A @ Bt.T)))


# ------------------------------------------------------- asynchrony (host)
def _host_operands(rng, n=16, kind="tf32"):
    fcn_cuda.use_backend("host")
    A, Bt = small_ints(rng, (64, K[kind])), small_ints(rng, (n, K[kind]))
    image = filler()
    place(image, A, kind, *A_PLAIN)
    place(image, Bt, kind, B_PLAIN_AT, 128, 256, 0)
    return image, A, Bt


def test_accumulators_are_written_when_the_group_retires(rng):
    # Before wgmma.wait_group retires its group, the registers still hold what
    # they held (the hardware leaves them undefined: host only).
    image, A, Bt = _host_operands(rng)
    C = small_ints(rng, (64, 16), -50, 50)
    from fcn_cuda import _backend
    be = _backend.active()
    out, early = run(be, image, A_PLAIN, (B_PLAIN_AT, 128, 256, 0), 16, "tf32", d_init=accumulators(C),
                     accumulate=True, mode="stale")
    np.testing.assert_array_equal(early, accumulators(C))
    np.testing.assert_array_equal(out, accumulators(C + A @ Bt.T))


def test_wait_group_retires_all_but_the_newest(rng):
    # Two groups: d = A B (+ C), then e = C + A B. wgmma.wait_group 1 retires
    # every group but the newest: d is written, e still holds C.
    image, A, Bt = _host_operands(rng)
    C = small_ints(rng, (64, 16), -50, 50)
    from fcn_cuda import _backend
    be = _backend.active()
    d, e = run(be, image, A_PLAIN, (B_PLAIN_AT, 128, 256, 0), 16, "tf32", d_init=accumulators(C), mode="groups")
    np.testing.assert_array_equal(d, accumulators(A @ Bt.T))
    np.testing.assert_array_equal(e, accumulators(C))


@pytest.mark.parametrize("mode, threads, a_op, b_op, message", [
    ("once", 96, A_PLAIN, (B_PLAIN_AT, 128, 256, 0),
     r"wgmma.fence in warp 0: its warpgroup \(warps 0 \.\. 3\) is incomplete, the block has 3 warps"),
    ("warps_1_to_4", 256, A_PLAIN, (B_PLAIN_AT, 128, 256, 0),
     r"warp 0 never executed wgmma.fence \(warpgroup instruction 1\) that another warp of its warpgroup executed"),
    ("once", 128, (8, 128, 256, 0), (B_PLAIN_AT, 128, 256, 0),
     r"misaligned address: wgmma matrix descriptor start address at 0x[0-9a-f]+, 8 bytes past a 16-byte boundary"),
    ("once", 128, A_PLAIN, (B_PLAIN_AT + 128, 16, 1024, 1),
     r"misaligned address: wgmma.mma_async: the descriptor of B \(128-byte swizzle with base offset 0: its pattern "
     r"must start at a 1024-byte boundary\) at 0x[0-9a-f]+, 128 bytes past a 1024-byte boundary"),
    ("once", 128, A_PLAIN, (B_PLAIN_AT + 256, 16, 512, 2),
     r"64-byte swizzle with base offset 0: its pattern must start at a 512-byte boundary"),
    ("store_early", 128, A_PLAIN, (B_PLAIN_AT, 128, 256, 0),
     r"a shared-memory store writes shared memory at 0x[0-9a-f]+ that a wgmma.mma_async of warp [0-3] still reads"),
    ("cp_async_early", 128, A_PLAIN, (B_PLAIN_AT, 128, 256, 0),
     r"cp.async writes shared memory at 0x[0-9a-f]+ that a wgmma.mma_async of warp [0-3] still reads"),
    ("plain_early", 128, A_PLAIN, (B_PLAIN_AT, 128, 256, 0),
     r"the shared memory of its operands changed between its issue and the wgmma.wait_group that retired it"),
    ("no_fence", 128, A_PLAIN, (B_PLAIN_AT, 128, 256, 0), r"wgmma.mma_async before any wgmma.fence"),
    ("setmaxnreg_3_warps", 128, A_PLAIN, (B_PLAIN_AT, 128, 256, 0),
     r"warp 3 executes wgmma.fence as its warpgroup instruction 1 where another warp of its warpgroup executed "
     r"setmaxnreg"),
], ids=["incomplete_warpgroup", "warps_1_to_4", "misaligned_start", "swizzle_128_pattern", "swizzle_64_pattern",
        "store_early", "cp_async_early", "plain_early", "no_fence", "setmaxnreg_3_warps"])
def test_misuse_is_an_error(rng, mode, threads, a_op, b_op, message):
    image, _, _ = _host_operands(rng)
    from fcn_cuda import _backend
    be = _backend.active()
    if mode == "plain_early" and be.ext.SANITIZE == "thread":
        pytest.skip("the TSan build reports this write as a data race, which ends the process: "
                    "test_tsan_build_sees_the_tensor_core_read_until_the_wait[plain_early] checks that report")
    with pytest.raises(RuntimeError, match=r"kernel wgmma_probe, block \(0,0,0\): .*" + message):
        run(be, image, a_op, b_op, 16, "tf32", threads=threads, mode=mode)


def test_tma_loads_feed_a_swizzled_wgmma(be, rng):
    # The Hopper mainloop's step: TMA stores A and B with the 128-byte swizzle
    # (the tensor map's definition), wgmma reads them through 128-byte-swizzle
    # descriptors, SBO 1024, the start 32 bytes on per k-step of 8 floats.
    # Four steps, the first with scale-d 0: D = A B^T over all 32 of K.
    A, Bt = small_ints(rng, (64, 32)), small_ints(rng, (64, 32))
    out = to_numpy(probes.wgmma_tma(be.xp.asarray(A), be.xp.asarray(Bt)))
    np.testing.assert_array_equal(out, accumulators(A @ Bt.T))


def test_tma_into_operands_before_the_wait_is_an_error(rng):
    fcn_cuda.use_backend("host")
    A = small_ints(rng, (64, 32))
    with pytest.raises(RuntimeError, match=r"kernel wgmma_tma_probe, block \(0,0,0\): thread \(0,0,0\): "
                                           r"cp.async.bulk.tensor.2d writes shared memory at 0x[0-9a-f]+ that a "
                                           r"wgmma.mma_async of warp [0-3] still reads"):
        probes.wgmma_tma(A, A, tma_early=True)


def test_a_producer_after_the_wait_is_ordered_and_before_it_is_not(rng):
    # Warp 4 rewrites B after a barrier. Placed after the warpgroup's wait,
    # the tensor core is done with B: the product is the one of the old B.
    # Placed between commit and wait, the write lands while the tensor core
    # may still read: the emulator's reads at retirement see B changed.
    image, A, Bt = _host_operands(rng)
    from fcn_cuda import _backend
    be = _backend.active()
    out, _ = run(be, image, A_PLAIN, (B_PLAIN_AT, 128, 256, 0), 16, "tf32", threads=160, mode="producer_ordered")
    np.testing.assert_array_equal(out[:128], accumulators(A @ Bt.T))
    if be.ext.SANITIZE == "thread":  # there the race ends the process: the next test checks that report
        return
    with pytest.raises(RuntimeError, match="the shared memory of its operands changed between its issue and the "
                                           "wgmma.wait_group that retired it"):
        run(be, image, A_PLAIN, (B_PLAIN_AT, 128, 256, 0), 16, "tf32", threads=160, mode="producer_races")


@pytest.mark.parametrize("racy, threads", [("producer_races", 160), ("plain_early", 128)])
def test_tsan_build_sees_the_tensor_core_read_until_the_wait(racy, threads):
    # The threads of the warpgroup read their operands at issue and again
    # when their wait retires them, so a write ordered after issuing (a
    # barrier; or none: thread 0 writes B between its commit and wait while
    # the other warps' reads are pending) but not after the wait races with
    # those reads: TSan reports it. The write after a barrier that follows
    # the wait is clean.
    proc = run_sanitized("thread", f"""
        import numpy as np
        from fcn_cuda.ops import probes
        image = np.zeros(4096, np.uint8)
        image[2048:2048 + 512] = 0x3f
        args = (image, (0, 128, 256, 0), (2048, 128, 256, 0), 16, "tf32")
        probes.wgmma(*args, threads=160, mode="producer_ordered")
        print("ordered: no report")
        probes.wgmma(*args, threads={threads}, mode="{racy}")
        print("unordered: no report")
    """)
    assert "ordered: no report" in proc.stdout, proc.stderr[-3000:]
    assert proc.returncode == 66, "the TSan build did not report the race\n" + proc.stderr[-3000:]
    assert "WARNING: ThreadSanitizer: data race" in proc.stderr and "wgmma_probe" in proc.stderr
    assert "unordered: no report" not in proc.stdout


def test_setmaxnreg_is_a_warpgroup_collective(rng):
    # setmaxnreg.{dec,inc}.sync.aligned by all four warps, then the wgmma as
    # usual (host only: the register counts are the GPU's business).
    image, A, Bt = _host_operands(rng)
    from fcn_cuda import _backend
    out, _ = run(_backend.active(), image, A_PLAIN, (B_PLAIN_AT, 128, 256, 0), 16, "tf32", mode="setmaxnreg")
    np.testing.assert_array_equal(out, accumulators(A @ Bt.T))


def test_probe_validates():
    img = np.zeros(64, np.uint8)
    with pytest.raises(ValueError, match="n must be one of"):
        probes.wgmma(img, A_PLAIN, A_PLAIN, 12, "tf32")
    with pytest.raises(ValueError, match="kind must be"):
        probes.wgmma(img, A_PLAIN, A_PLAIN, 8, "fp16")
    with pytest.raises(ValueError, match="swizzle 0 .. 3"):
        probes.wgmma(img, A_PLAIN, (0, 16, 16, 4), 8, "tf32")
    with pytest.raises(ValueError, match="mode must be one of"):
        probes.wgmma(img, A_PLAIN, A_PLAIN, 8, "tf32", mode="later")


# ------------------------------------------------------ against the GPU
@needs_gpu
def test_emulator_matches_hardware(rng):
    # Random fp32 operands (tf32: every low bit set at random, so truncation
    # shows), every N, both kinds and forms, each swizzle, scale-d both ways.
    for kind in ("tf32", "bf16"):
        for n in probes.WGMMA_N:
            for rs in (False, True):
                A = rng.standard_normal((64, K[kind])).astype(np.float32)
                Bt = rng.standard_normal((n, K[kind])).astype(np.float32)
                if kind == "bf16":
                    A = (A.view(np.uint32) & 0xFFFF0000).view(np.float32)
                    Bt = (Bt.view(np.uint32) & 0xFFFF0000).view(np.float32)
                image = filler(2048 + n * 32 + 64)
                place(image, A, kind, *A_PLAIN)
                place(image, Bt, kind, B_PLAIN_AT, 128, 256, 0)
                init = rng.standard_normal((128, n // 2)).astype(np.float32)
                regs = a_fragment(A, kind)

                def f(img, r, d0, acc=bool(n % 16)):
                    return probes.wgmma(img, A_PLAIN, (B_PLAIN_AT, 128, 256, 0), n, kind, rs=rs, a_regs=r,
                                        d_init=d0, accumulate=acc)[0]
                host, cuda = _on("host", f, image, regs, init), _on("cuda", f, image, regs, init)
                np.testing.assert_allclose(host, cuda, rtol=1e-5, atol=1e-5)
    for swizzle in (1, 2, 3):
        w = SWIZZLE_BYTES[swizzle]
        A = rng.standard_normal((64, 8)).astype(np.float32)
        Bt = rng.standard_normal((64, 8)).astype(np.float32)
        image = filler(128 * w)
        place(image, A, "tf32", 0, 16, 8 * w, swizzle)
        place(image, Bt, "tf32", 64 * w, 16, 8 * w, swizzle)

        def g(img):
            return probes.wgmma(img, (0, 16, 8 * w, swizzle), (64 * w, 16, 8 * w, swizzle), 64, "tf32")[0]
        np.testing.assert_allclose(_on("host", g, image), _on("cuda", g, image), rtol=1e-5, atol=1e-5)
