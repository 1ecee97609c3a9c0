// sm80.h: the emulated twins of the Ampere instructions that
// csrc/kernels/ptx_sm80.cuh wraps (included by emu.h), each modelled on its
// definition in the PTX ISA. Lane l of a warp has groupID g = l / 4 and
// threadID_in_group t = l % 4, as the ISA's fragment tables name them.
//
// cp.async (4, 8 or 16 bytes; .ca / .cg are cache hints, the same here):
//   recorded at issue, performed by the issuing thread when its group is
//   retired by cp.async.wait_group / wait_all (smem.h: the destination is
//   "in flight" until then). src-size < cp-size zero-fills the rest.
// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16: lanes 8i .. 8i+7
//   hold the addresses of rows 0..7 of matrix i (16 bytes each, 16-byte
//   aligned; .x1 reads lanes 0-7's, .x2 lanes 0-15's). Register i of lane l
//   receives matrix i's row g, elements 2t and 2t+1 (low half first); with
//   .trans, elements (2t, g) and (2t+1, g): the matrix transposed. A warp
//   collective: every lane reads its own elements between two rendezvous,
//   so no lane writes before all have read, as the one instruction would.
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32:
//   a0..a3 = A[g][t], A[g+8][t], A[g][t+4], A[g+8][t+4]   (A: 16 x 8)
//   b0, b1 = B[t][g], B[t+4][g]                           (B: 8 x 8)
//   c0..c3 = C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1] (C, D: 16 x 8)
//   The tensor cores read a TF32 operand's top 19 bits (the kernel rounds
//   beforehand with cvt.rna, as the wmma rung does).
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: a register holds two
//   bf16, the lower-indexed element in its low half:
//   a0..a7 = A[g][2t], A[g][2t+1], A[g+8][2t], A[g+8][2t+1],
//            A[g][2t+8], A[g][2t+9], A[g+8][2t+8], A[g+8][2t+9] (A: 16 x 16)
//   b0..b3 = B[2t][g], B[2t+1][g], B[2t+8][g], B[2t+9][g]       (B: 16 x 8)
//   C and D as for m16n8k8.
// Both mma shapes accumulate in fp32 in k order from C with fmaf: products
// of TF32 or bf16 values are exact in fp32, so only the order of the sums
// can differ from the hardware's (the GPU test compares within 1e-5).
#pragma once

namespace fcn_emu {

// ------------------------------------------------------------- cp.async
inline void cp_async(void* dst, const void* src, unsigned bytes, unsigned src_bytes, const char* file, int line) {
    cp_async_issue(dst, src, bytes, src_bytes, file, line);
}

// Kernel code, so that ASan checks the source and destination and TSan sees
// the issuing thread write the destination here, at its wait.
inline void cp_async_wait(int allowed) {
    size_t n = 0;
    const AsyncCopy* done = cp_async_retire(allowed, &n);
    for (size_t i = 0; i < n; ++i) {
        unsigned char* d = static_cast<unsigned char*>(done[i].dst);
        const unsigned char* s = static_cast<const unsigned char*>(done[i].src);
        for (unsigned b = 0; b < done[i].bytes; ++b) d[b] = b < done[i].src_bytes ? s[b] : 0;
    }
}

// -------------------------------------------------------------- ldmatrix
template <int kNum, bool kTrans>
inline void ldmatrix(uint32_t (&r)[kNum], const void* row) {
    static_assert(kNum == 1 || kNum == 2 || kNum == 4, "ldmatrix loads 1, 2 or 4 matrices");
    const uint64_t* slots = warp_exchange(0xffffffffu, reinterpret_cast<uintptr_t>(row));
    const int lane = int(lane_id()), g = lane / 4, t = lane % 4;
    if (lane == 0) {  // one lane checks and counts every row the instruction reads
        Segment rows[8 * kNum];
        for (int i = 0; i < 8 * kNum; ++i) {
            const void* p = reinterpret_cast<const void*>(slots[i]);
            check_aligned("ldmatrix row address", p, 16);
            check_settled(p, 16, "ldmatrix");
            rows[i] = {p, 16};
        }
        count_collective(Access::kLdmatrix, rows, 8 * kNum, kNum);  // one phase per matrix
    }
    uint32_t out[kNum];
    for (int i = 0; i < kNum; ++i) {
        const unsigned char* const* base = reinterpret_cast<const unsigned char* const*>(slots + 8 * i);
        uint16_t lo, hi;
        if (!kTrans) {
            std::memcpy(&lo, base[g] + 4 * t, 2);
            std::memcpy(&hi, base[g] + 4 * t + 2, 2);
        } else {
            std::memcpy(&lo, base[2 * t] + 2 * g, 2);
            std::memcpy(&hi, base[2 * t + 1] + 2 * g, 2);
        }
        out[i] = uint32_t(lo) | uint32_t(hi) << 16;
    }
    warp_exchange(0xffffffffu, 0);  // every lane has read before any goes on
    for (int i = 0; i < kNum; ++i) r[i] = out[i];
}

// ------------------------------------------------------------------- mma
// Lane l's registers, handed to the whole warp: words 0-1 A, 2 B, 3-4 C.
inline const uint64_t (*mma_exchange(const uint32_t (&a)[4], const uint32_t (&b)[2],
                                     const float (&c)[4]))[kWideWords] {
    uint32_t cb[4];
    std::memcpy(cb, c, sizeof cb);
    const uint64_t mine[5] = {a[0] | uint64_t(a[1]) << 32, a[2] | uint64_t(a[3]) << 32, b[0] | uint64_t(b[1]) << 32,
                              cb[0] | uint64_t(cb[1]) << 32, cb[2] | uint64_t(cb[3]) << 32};
    return warp_exchange_wide(0xffffffffu, mine, 5);
}

inline uint32_t mma_reg(const uint64_t* words, int reg) { return uint32_t(words[reg / 2] >> (32 * (reg % 2))); }

// D = A * B + C for this lane's four D elements; A(m, k) and B(k, n) read
// the warp's operands as floats.
template <int K, typename FA, typename FB>
inline void mma_m16n8(float (&d)[4], const float (&c)[4], FA A, FB B) {
    const int lane = int(lane_id()), g = lane / 4, t = lane % 4;
    float out[4];
    for (int i = 0; i < 4; ++i) {
        const int m = g + 8 * (i / 2), n = 2 * t + i % 2;
        float acc = c[i];
        for (int k = 0; k < K; ++k) acc = fmaf(A(m, k), B(k, n), acc);
        out[i] = acc;
    }
    for (int i = 0; i < 4; ++i) d[i] = out[i];
}

inline void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
    const uint64_t (*warp)[kWideWords] = mma_exchange(a, b, c);
    auto tf32 = [](uint32_t bits) { return __uint_as_float(bits & 0xffffe000u); };  // the top 19 bits
    mma_m16n8<8>(d, c,
                 [&](int m, int k) { return tf32(mma_reg(warp[4 * (m % 8) + k % 4], (m / 8) + 2 * (k / 4))); },
                 [&](int k, int n) { return tf32(mma_reg(warp[4 * n + k % 4] + 2, k / 4)); });
}

inline void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
    const uint64_t (*warp)[kWideWords] = mma_exchange(a, b, c);
    auto bf16 = [](uint32_t reg, int half) { return bf16_bits_to_float(uint16_t(reg >> (16 * half))); };
    mma_m16n8<16>(d, c,
                  [&](int m, int k) {
                      return bf16(mma_reg(warp[4 * (m % 8) + (k % 8) / 2], (m / 8) + 2 * (k / 8)), k % 2);
                  },
                  [&](int k, int n) { return bf16(mma_reg(warp[4 * n + (k % 8) / 2] + 2, k / 8), k % 2); });
}

}  // namespace fcn_emu
