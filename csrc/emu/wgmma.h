// wgmma.h: the emulated twins of the warpgroup instructions that
// csrc/kernels/ptx_wgmma.cuh wraps (included by emu.h), modelled on the PTX
// ISA's "Asynchronous Warpgroup Level Matrix" section. A warpgroup is four
// consecutive warps from a warp index divisible by 4; thread T of it has
// warp w = T / 32 % 4, groupID g = lane / 4, threadID_in_group t = lane % 4.
//
// Matrix descriptor (64 bits): bits 0-13 start address, 16-29 leading
//   dimension byte offset (LBO), 32-45 stride dimension byte offset (SBO),
//   each (x & 0x3FFFF) >> 4; 49-51 base offset; 62-63 swizzle (0 none,
//   1 128 B, 2 64 B, 3 32 B). The emulator's shared memory lives at host
//   addresses, so its descriptor keeps the start address relative to a
//   1024-byte-aligned window and the window's index in the reserved bits
//   52-61: only fcn::wgmma_descriptor makes descriptors here, and adding to
//   the start field (advancing along K) works as on the GPU.
// K-major layouts (the only ones tf32 allows; bf16's transpose is not
//   modelled). An operand is rows r (M for A, N for B) by 32 bytes of K; a
//   core matrix is 8 rows x 16 bytes; chunk c = (byte of K) / 16:
//     no swizzle: start + (r/8)*SBO + c*LBO + (r%8)*16 + byte%16
//     swizzle W (32, 64, 128 bytes): start + (r/8)*SBO + (r%8)*W + c*16 + byte%16,
//       then address bits [4, 4+b) ^= bits [7, 7+b), b = log2(W/16); LBO unused.
//   The XOR acts on the address; base offset 0 (the interface's) says the
//   swizzle's repeating pattern starts at a 1024/512/256-byte boundary, so
//   the start address bits [7, 7+b) must be 0 (else an error, as is a start
//   address, LBO or SBO not a multiple of 16, or a nonzero base offset).
// Fragments (ISA register-fragment figures): accumulator d[i], i < N/2:
//   row 16w + g + 8*((i>>1)&1), column 8*(i>>2) + 2t + (i&1).
//   RS-form A, tf32 (m64nNk8): a0..a3 = A[g][t], A[g+8][t], A[g][t+4], A[g+8][t+4]
//   RS-form A, bf16 (m64nNk16): register r holds A[g+8(r&1)][2t+8(r>>1)] in its
//   low half and the next k in its high half (rows offset by 16w).
// Operands: tf32 values are fp32 bit patterns of which the tensor core reads
//   the top 19 bits (the low 13 are ignored: truncation); bf16 as stored.
//   D = A*B (+ D when scale-d) accumulates in fp32 in k order with fmaf from
//   D, as sm80.h does for mma.sync: products of tf32 or bf16 values are exact
//   in fp32, so only the order of the sums can differ from the hardware's.
// Asynchrony: issuing a wgmma records the operation; wgmma.commit_group closes the
//   thread's uncommitted ones into a group; wgmma.wait_group N retires all
//   but the N newest groups, and only then are the accumulators written
//   (read before, they hold their old values). Operand shared memory is
//   "being read" from issue to retirement: fcn::smem_store, cp.async (and
//   any writer that calls check_not_being_read) into it is an error, and a
//   plain write that changed it is an error at retirement (each thread reads
//   its operands at issue and again when it retires them). wgmma.fence must
//   precede a thread's first wgmma (the ISA's other fence rule, after
//   register writes, cannot be seen here and is left to the GPU). Every
//   instruction is warp-collective (all 32 lanes, same operands) and all
//   four warps must execute the same sequence, setmaxnreg included (checked
//   as they go and at the block's end).
#pragma once

#include <string>

namespace fcn_emu {

namespace wg {
constexpr uint64_t kField = 0x3FFF;
constexpr int kWindowShift = 52;
constexpr uint64_t kReserved = (3ull << 14) | (3ull << 30) | (7ull << 46);

struct Operand {
    uintptr_t start;
    unsigned lbo, sbo, swizzle;
};

// One pending wgmma of a thread: what it needs to compute its accumulators
// at retirement, and a hash of the operand bits it read at issue.
struct Op {
    float* d;
    int n, k;
    bool bf16, rs, accumulate;
    uint64_t a_desc, b_desc, hash;
    uint32_t a_bits[2][16];  // RS form: this thread's two rows of A
};

constexpr uint64_t kFnvBasis = 0xcbf29ce484222325ull, kFnvPrime = 0x100000001b3ull;
inline void hash_in(uint64_t& h, uint32_t v) { h = (h ^ v) * kFnvPrime; }
}  // namespace wg

// wgmma.cpp: the bookkeeping, per worker, like smem.cpp's.
unsigned wgmma_window(uintptr_t base);               // the index (from 1) of a 1024-aligned window
uintptr_t wgmma_window_base(unsigned index);         // 0 when none has that index
void wgmma_fence_executed(int warp);
// Checks the warpgroup and the fence, records the warp's instruction
// (`sig`, lane 0), marks the granules being read (lane 0); returns the
// thread's new pending operation, to fill.
wg::Op* wgmma_issue(const uint64_t (&sig)[3], const uintptr_t* granules, size_t count, bool lane0);
void wgmma_commit_executed(bool lane0);
void setmaxnreg_executed(bool inc, unsigned count);
// Retires this thread's oldest groups until at most `allowed` remain; the
// operations to compute now.
const wg::Op* wgmma_retire(int allowed, bool lane0, size_t* count);
// After the warp's rendezvous: lane 0 releases the retired operations' granules.
void wgmma_release(size_t count);
// Throws when [p, p + bytes) holds operands of a wgmma not yet retired.
void check_not_being_read(const void* p, size_t bytes, const char* what);
// After a block's threads all finished: every warp of a warpgroup executed the same instructions.
void wgmma_block_check();
void wgmma_block_begin(int threads);
void wgmma_block_end();

inline int wgmma_linear_tid() { return int(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)); }

inline uint64_t wgmma_encode(uint64_t start, unsigned lbo, unsigned sbo, unsigned swizzle) {
    return ((start & 0x3FFFF) >> 4) | uint64_t((lbo & 0x3FFFF) >> 4) << 16 | uint64_t((sbo & 0x3FFFF) >> 4) << 32 |
           uint64_t(swizzle & 3u) << 62;
}

inline uint64_t wgmma_descriptor(const void* smem, unsigned lbo, unsigned sbo, unsigned swizzle) {
    check_aligned("wgmma matrix descriptor start address", smem, 16);
    if (lbo % 16 || sbo % 16 || lbo >= (1u << 18) || sbo >= (1u << 18))
        fail(("wgmma matrix descriptor: the leading (" + std::to_string(lbo) + ") and stride (" +
              std::to_string(sbo) + ") byte offsets must be multiples of 16 below 2^18")
                 .c_str());
    if (swizzle > 3) fail("wgmma matrix descriptor: swizzle mode must be 0 .. 3");
    const uintptr_t p = reinterpret_cast<uintptr_t>(smem), base = p & ~uintptr_t(1023);
    return wgmma_encode(p - base, lbo, sbo, swizzle) | uint64_t(wgmma_window(base)) << wg::kWindowShift;
}

inline wg::Operand wgmma_decode(uint64_t desc, const char* which) {
    const uintptr_t base = wgmma_window_base(unsigned(desc >> wg::kWindowShift) & 0x3FFu);
    const std::string what = std::string("wgmma.mma_async: the descriptor of ") + which;
    if (!base) fail((what + " was not made by fcn::wgmma_descriptor (the emulator cannot place its start address)").c_str());
    if (desc & wg::kReserved) fail((what + " has reserved bits set (a start address field that overflowed?)").c_str());
    if ((desc >> 49) & 7u) fail((what + " has a nonzero base offset, which the emulator does not model").c_str());
    wg::Operand o{base + ((desc & wg::kField) << 4), unsigned((desc >> 16) & wg::kField) << 4,
                  unsigned((desc >> 32) & wg::kField) << 4, unsigned(desc >> 62)};
    if (o.swizzle) {
        static const char* names[4] = {"", "128", "64", "32"};
        static const char* bounds[4] = {"", "1024", "512", "256"};
        const unsigned bits = o.swizzle == 1 ? 7u : o.swizzle == 2 ? 3u : 1u;
        if ((o.start >> 7) & bits)
            misaligned((what + " (" + names[o.swizzle] + "-byte swizzle with base offset 0: its pattern must start at a " +
                        bounds[o.swizzle] + "-byte boundary)")
                           .c_str(),
                       reinterpret_cast<const void*>(o.start), (bits + 1) * 128);
    }
    return o;
}

// The address of byte `kbyte` (0 .. 31) of K in row r of a K-major operand.
inline uintptr_t wgmma_address(const wg::Operand& o, int r, int kbyte) {
    const uintptr_t row8 = o.start + uintptr_t(r / 8) * o.sbo;
    const unsigned c = unsigned(kbyte) / 16, within = unsigned(kbyte) % 16;
    if (o.swizzle == 0) return row8 + c * o.lbo + unsigned(r % 8) * 16 + within;
    const unsigned width = o.swizzle == 1 ? 128 : o.swizzle == 2 ? 64 : 32;
    const uintptr_t a = row8 + unsigned(r % 8) * width + c * 16 + within;
    return a ^ (((a >> 7) & (width / 16 - 1)) << 4);
}

// Row r's 32 bytes of K as the tensor core reads them, in fp32 bits (k
// elements: 8 tf32 or 16 bf16). A swizzle moves whole 16-byte chunks, so
// each half of the row is contiguous wherever it lies.
inline void wgmma_row(const wg::Operand& o, int r, bool bf16, uint32_t (&out)[16]) {
    for (int c = 0; c < 2; ++c) {
        const void* p = reinterpret_cast<const void*>(wgmma_address(o, r, 16 * c));
        if (bf16) {
            uint16_t h[8];
            std::memcpy(h, p, 16);
            for (int i = 0; i < 8; ++i) out[8 * c + i] = uint32_t(h[i]) << 16;
        } else {
            uint32_t w[4];
            std::memcpy(w, p, 16);
            for (int i = 0; i < 4; ++i) out[4 * c + i] = w[i] & 0xffffe000u;  // the top 19 bits
        }
    }
}

// This thread's operand bits, in a fixed order, hashed: its two rows of A
// (SS form), then the N/4 columns of B its accumulators need. When `op` is
// to be computed, also its accumulators, from D (scale-d) or zero.
inline uint64_t wgmma_operands(const wg::Op& op, bool compute) {
    const int lane = wgmma_linear_tid() % 32, warp = wgmma_linear_tid() / 32 % 4, g = lane / 4, t = lane % 4;
    const wg::Operand b = wgmma_decode(op.b_desc, "B");
    uint32_t a[2][16];
    if (op.rs) {
        std::memcpy(a, op.a_bits, sizeof a);
    } else {
        const wg::Operand ad = wgmma_decode(op.a_desc, "A");
        for (int h = 0; h < 2; ++h) wgmma_row(ad, 16 * warp + g + 8 * h, op.bf16, a[h]);
    }
    uint64_t hash = wg::kFnvBasis;
    for (int h = 0; h < 2; ++h)
        for (int k = 0; k < op.k; ++k) wg::hash_in(hash, a[h][k]);
    for (int j = 0; j < op.n / 8; ++j)
        for (int e = 0; e < 2; ++e) {
            const int col = 8 * j + 2 * t + e;
            uint32_t bcol[16];
            wgmma_row(b, col, op.bf16, bcol);
            for (int k = 0; k < op.k; ++k) wg::hash_in(hash, bcol[k]);
            if (!compute) continue;
            for (int h = 0; h < 2; ++h) {
                float& d = op.d[4 * j + 2 * h + e];
                float acc = op.accumulate ? d : 0.f;
                for (int k = 0; k < op.k; ++k) acc = fmaf(__uint_as_float(a[h][k]), __uint_as_float(bcol[k]), acc);
                d = acc;
            }
        }
    return hash;
}

inline void wgmma_fence() {
    warp_exchange(0xffffffffu, 0);  // warp-collective (.sync.aligned)
    wgmma_fence_executed(wgmma_linear_tid() / 32);
}

// The common issue of both forms: `a` is the thread's 4 A registers (RS form).
inline void wgmma_mma(float* d, int n, bool bf16, bool rs, const uint32_t* a, uint64_t a_desc, uint64_t b_desc,
                      bool accumulate) {
    const int tid = wgmma_linear_tid(), lane = tid % 32, g = lane / 4;
    const uint64_t meta = uint64_t(n) | uint64_t(bf16) << 16 | uint64_t(rs) << 17 | uint64_t(accumulate) << 18;
    const uint64_t mine[5] = {rs ? (a[0] | uint64_t(a[1]) << 32) : 0, rs ? (a[2] | uint64_t(a[3]) << 32) : 0, b_desc,
                              rs ? 0 : a_desc, meta};
    const uint64_t (*warp)[kWideWords] = warp_exchange_wide(0xffffffffu, mine, 5);
    for (int l = 1; l < 32; ++l)
        if (warp[l][2] != warp[0][2] || warp[l][3] != warp[0][3] || warp[l][4] != warp[0][4])
            fail("wgmma.mma_async: the lanes of a warp disagree on its descriptors or scale-d (.aligned: every "
                 "thread of the warpgroup executes the same instruction)");
    const int k = bf16 ? 16 : 8;
    uint32_t a_bits[2][16] = {};
    if (rs)  // the fragment tables of the top of this file, read back from the owning lanes
        for (int h = 0; h < 2; ++h)
            for (int kk = 0; kk < k; ++kk) {
                if (bf16) {
                    const int owner = 4 * g + (kk % 8) / 2, reg = h + 2 * (kk / 8);
                    const uint32_t r = uint32_t(warp[owner][reg / 2] >> (32 * (reg % 2)));
                    a_bits[h][kk] = (kk % 2 ? r >> 16 : r & 0xffffu) << 16;
                } else {
                    const int owner = 4 * g + kk % 4, reg = h + 2 * (kk / 4);
                    a_bits[h][kk] = uint32_t(warp[owner][reg / 2] >> (32 * (reg % 2))) & 0xffffe000u;
                }
            }
    // Lane 0 marks what its warp reads: all of B, and its 16 rows of A (SS form).
    uintptr_t granules[2 * 256 + 2 * 16];
    size_t count = 0;
    const bool lane0 = lane == 0;
    if (lane0) {
        const wg::Operand b = wgmma_decode(b_desc, "B");
        for (int r = 0; r < n; ++r)
            for (int c = 0; c < 2; ++c) granules[count++] = wgmma_address(b, r, 16 * c);
        if (!rs) {
            const wg::Operand ad = wgmma_decode(a_desc, "A");
            const int warp_in_group = tid / 32 % 4;
            for (int r = 16 * warp_in_group; r < 16 * warp_in_group + 16; ++r)
                for (int c = 0; c < 2; ++c) granules[count++] = wgmma_address(ad, r, 16 * c);
        }
    }
    const uint64_t sig[3] = {meta, b_desc, rs ? 0 : a_desc};
    wg::Op* op = wgmma_issue(sig, granules, count, lane0);
    *op = wg::Op{d, n, k, bf16, rs, accumulate, a_desc, b_desc, 0, {}};
    std::memcpy(op->a_bits, a_bits, sizeof a_bits);
    op->hash = wgmma_operands(*op, false);
}

inline void wgmma_commit_group() {
    warp_exchange(0xffffffffu, 0);
    wgmma_commit_executed(lane_id() == 0);
}

// setmaxnreg: the register budget is the hardware's business; the emulator
// checks only that it is a warpgroup collective.
inline void setmaxnreg(bool inc, unsigned count) {
    warp_exchange(0xffffffffu, 0);
    setmaxnreg_executed(inc, count);
}

inline void wgmma_wait_group(int allowed) {
    warp_exchange(0xffffffffu, 0);
    size_t count = 0;
    const wg::Op* ops = wgmma_retire(allowed, lane_id() == 0, &count);
    for (size_t i = 0; i < count; ++i)
        if (wgmma_operands(ops[i], true) != ops[i].hash)
            fail("wgmma.mma_async: the shared memory of its operands changed between its issue and the "
                 "wgmma.wait_group that retired it (the tensor core reads it in between)");
    warp_exchange(0xffffffffu, 0);  // every lane has read before lane 0 releases the operands
    if (lane_id() == 0) wgmma_release(count);
}

}  // namespace fcn_emu
