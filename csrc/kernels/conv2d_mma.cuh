// conv2d_mma.cuh: conv2d.cuh's convolution (the same y, implicit GEMM view,
// epilogues and split-K) on the Ampere tensor-core instructions of
// ptx_sm80.cuh, built the way sm_80 GEMMs are: staged shared memory (cp.async
// where it can copy), ldmatrix from swizzled rows, mma.sync, fp32 accumulators.
//   conv2d_mma<false> (mma_tf32): mma.m16n8k8 on TF32 operands, staged fp32
//     by cp.async, rounded with cvt.rna as the fragments are built.
//   conv2d_mma<true, .., Wt> (mma_bf16): mma.m16n8k16 on bf16 operands,
//     staged bf16: x (and fp32 w) loaded to registers, rounded to nearest
//     even and stored as bf16 pairs; bf16 weights (Wt = __nv_bfloat16, from
//     conv2d_to_bf16) by 16-byte cp.async where C*R*S % 8 == 0 and w is
//     16-byte aligned, else through registers. igemm_bf16's rounding and
//     its order of summation (16-tap mma steps in tap order): its bits.
// Tiles: a block of 256 threads (8 warps, 2 along the pixels x 4 along the
// channels) computes BM pixels x BN channels of C: 128 x 128 (warp tiles
// 64 x 32: 4 x 4 m16n8 accumulators) or, for layers with few such tiles
// or K = 64, 64 x 64 (warp tiles 32 x 16). The depth goes in stages of one
// 128-byte row per pixel and channel (32 fp32 or 64 bf16 taps), kMmaStages
// = 3 of them in flight: while the warps multiply one, the next two load.
// Shared memory, per stage: As[BM] rows (a pixel's taps, im2col of x), then
// Bs[BN] rows (a channel's taps of w). A row is 8 chunks of 16 bytes; chunk c
// of row r lives at chunk c ^ (r % 8) (mma_chunk). An ldmatrix 8 x 16-byte
// matrix is one chunk of 8 consecutive rows: 8 different chunk slots, all
// 32 banks once, so every ldmatrix is conflict free (unswizzled, the 8 rows,
// 128 bytes apart, would share 4 banks: 8-way conflicts). ldmatrix hands
// lane (g, t) = (lane / 4, lane % 4) word t of row g of each matrix: tf32's
// A[g][t] / B[t][g], bf16's taps 2t, 2t + 1 of a chunk of 8: m16n8k8's and
// m16n8k16's row.col fragments exactly.
// Loads (out of range, padding, past the depth: zero, or cp.async zero-fill):
//   A: lanes cover 8 pixels x 4 words (fp32 taps, or bf16 tap pairs), so a
//   warp's writes fill 32 different banks and its reads are 8 consecutive
//   pixels of x per tap. mma_tf32 copies 4 bytes at a time; mma_bf16 loads
//   the pair, packs it and stores the word (fcn::smem_store): loads issued
//   before the stage's multiply, stores after it (their slot is free by then).
//   B: 16-byte cp.async (8 lanes fill one 128-byte row) where the depth
//   and w allow it, else as A (fp32 w: 4-byte cp.async or, mma_bf16, stores).
// Epilogue: each lane's accumulators go through ConvOut (conv2d.cuh) with
// the bias: plain, ReLU, or ReLU + 2 x 2 max pool.
#pragma once
#include <cstring>
#include <type_traits>

#include "conv2d.cuh"
#include "ptx_sm80.cuh"
#include "wmma_input.cuh"

namespace fcn {

constexpr int kMmaThreads = 256;
constexpr int kMmaStages = 3;
constexpr int kMmaRowBytes = 128;             // one tile row: 32 fp32 taps
constexpr int kMmaTileK = kMmaRowBytes / 4;   // taps per stage, fp32 (mma_tf32)
constexpr int kMmaTileK16 = kMmaRowBytes / 2;  // taps per stage, bf16 (mma_bf16)
constexpr int kMmaBigTile = 128, kMmaSmallTile = 64;

// Byte offset of 16-byte chunk c of row r in a swizzled tile.
__device__ __forceinline__ int mma_chunk(int r, int c) { return r * kMmaRowBytes + ((c ^ (r % 8)) << 4); }
// ... and of 4-byte word k of row r: an fp32 tap, or bf16 taps 2k, 2k + 1.
__device__ __forceinline__ int mma_word(int r, int k) { return mma_chunk(r, k / 4) + (k % 4) * 4; }

template <int BM, int BN>
constexpr int kMmaSmemBytes = kMmaStages * (BM + BN) * kMmaRowBytes;

// An fp32 word as the tensor cores read it: TF32 by cvt.rna.
__device__ __forceinline__ uint32_t mma_tf32(uint32_t v) {
    return __float_as_uint(WmmaInput<nvcuda::wmma::precision::tf32>::convert(__uint_as_float(v)));
}

// A value's bf16 bits: fp32 rounded to nearest even, bf16 as it is.
__device__ __forceinline__ uint32_t mma_bf16_bits(float v) {
    const __nv_bfloat16 h = WmmaInput<__nv_bfloat16>::convert(v);
    uint16_t bits;
    memcpy(&bits, &h, 2);
    return bits;
}
__device__ __forceinline__ uint32_t mma_bf16_bits(__nv_bfloat16 v) {
    uint16_t bits;
    memcpy(&bits, &v, 2);
    return bits;
}

// Two taps as one bf16x2 word, lo in the low half.
template <typename T>
__device__ __forceinline__ uint32_t mma_bf16x2(T lo, T hi) {
    return mma_bf16_bits(lo) | mma_bf16_bits(hi) << 16;
}

// grid = (ceil(N*P*Q / BM), ceil(K / BN), splits), block = 256, dynamic
// shared memory kMmaSmemBytes<BM, BN>. The block computes the C tile of
// pixels m0 .. m0+BM-1 x channels k0 .. k0+BN-1 over its split's depth
// (conv2d_split_depth); warp v owns pixels m0 + (v % 2) * BM/2 .. and
// channels k0 + (v / 2) * BN/4 .. of it.
template <bool kBf16, int BM, int BN, typename Wt = float>
__global__ void __launch_bounds__(kMmaThreads)
conv2d_mma(const float* __restrict__ x, const Wt* __restrict__ w, const float* __restrict__ b,
           float* __restrict__ y, ConvShape g, int mode) {
    static_assert(kBf16 || std::is_same_v<Wt, float>, "bf16 weights are mma_bf16's");
    constexpr int WM = BM / 2, WN = BN / 4, MI = WM / 16, NI = WN / 8;
    constexpr int kTileK = kBf16 ? kMmaTileK16 : kMmaTileK;  // taps per stage (per 128-byte row)
    static_assert(BM % 64 == 0 && BN % 64 == 0 && NI % 2 == 0, "whole loads per thread, B fragments in pairs");
    constexpr int kStageBytes = (BM + BN) * kMmaRowBytes;
    FCN_DYNAMIC_SMEM(unsigned char, smem);  // stage s: As at s * kStageBytes, Bs right after
    const int t = threadIdx.x, lane = t % kWarpSize, warp = t / kWarpSize;
    const int PQ = g.P * g.Q, M = g.N * PQ, CRS = g.C * g.R * g.S;
    const int m0 = blockIdx.x * BM, k0 = blockIdx.y * BN;
    const int wm = (warp % 2) * WM, wn = (warp / 2) * WN;
    const DepthRange depth = conv2d_split_depth(CRS);
    y += int(blockIdx.z) * M * g.K;  // this split's partial C (split 0: y itself)

    // Scalar loads (A, and B when it cannot go by 16 bytes): this thread
    // fills word kq + 4c (c = 0..7) of rows lane % 8 + 8 * (warp + 8j).
    const int kq = lane / 8;
    constexpr int kAPix = BM / 64, kBRows = BN / 64;
    int a_xn[kAPix], a_ih0[kAPix], a_iw0[kAPix];
    bool a_ok[kAPix];
#pragma unroll
    for (int j = 0; j < kAPix; ++j) {
        const int m = m0 + lane % 8 + 8 * (warp + 8 * j), n = m / PQ, pq = m % PQ;
        a_ok[j] = m < M;
        a_xn[j] = n * g.C * g.H * g.W;
        a_ih0[j] = pq / g.Q * g.sh - g.ph;
        a_iw0[j] = pq % g.Q * g.sw - g.pw;
    }
    // a thread's taps advance by one word (4 fp32 taps, 8 bf16) per c, and a stage per stage
    const Tap step4 = tap_of(kBf16 ? 8 : 4, g.R, g.S), stage_step = tap_of(kTileK, g.R, g.S);
    // tap kq (bf16: taps 2kq and 2kq + 1) of the next stage to load
    Tap a_tap = tap_of(depth.begin + (kBf16 ? 2 * kq : kq), g.R, g.S);
    constexpr int kVecTaps = 16 / int(sizeof(Wt));  // taps per 16-byte copy of w
    const bool b_vec = (!kBf16 || !std::is_same_v<Wt, float>) && CRS % kVecTaps == 0 &&
                       reinterpret_cast<uintptr_t>(w) % 16 == 0;

    auto load_stage = [&](int slot, int kk0) {
        unsigned char* As = smem + slot * kStageBytes;
        unsigned char* Bs = As + BM * kMmaRowBytes;
        Tap u = a_tap;
#pragma unroll
        for (int c = 0; c < kMmaTileK / 4; ++c) {
            const int kk = kk0 + kq + 4 * c;
            const bool tap_ok = kk < depth.end;
#pragma unroll
            for (int j = 0; j < kAPix; ++j) {
                const int ih = a_ih0[j] + u.r, iw = a_iw0[j] + u.s;
                const bool in = tap_ok && a_ok[j] && unsigned(ih) < unsigned(g.H) && unsigned(iw) < unsigned(g.W);
                cp_async<4>(As + mma_word(lane % 8 + 8 * (warp + 8 * j), kq + 4 * c),
                            in ? x + a_xn[j] + (u.c * g.H + ih) * g.W + iw : x, in ? 4 : 0);
            }
            if (!b_vec) {
#pragma unroll
                for (int j = 0; j < kBRows; ++j) {
                    const int r = lane % 8 + 8 * (warp + 8 * j), k = k0 + r;
                    const bool in = tap_ok && k < g.K;
                    cp_async<4>(Bs + mma_word(r, kq + 4 * c), in ? w + k * CRS + kk : w, in ? 4 : 0);
                }
            }
            u = tap_add(u, step4, g.R, g.S);
        }
        a_tap = tap_add(a_tap, stage_step, g.R, g.S);
        if (b_vec) {
            // Chunk t % 8 of rows t / 8 + 32j: the depth's last chunk is partly zero-filled.
#pragma unroll
            for (int j = 0; j < BN / 32; ++j) {
                const int r = t / 8 + 32 * j, k = k0 + r, kk = kk0 + 4 * (t % 8);
                const int words = k < g.K ? max(0, min(4, depth.end - kk)) : 0;
                cp_async<16>(Bs + mma_chunk(r, t % 8), words ? w + k * CRS + kk : w, 4 * words);
            }
        }
    };

    // mma_bf16's staging: x (and w, unless it goes by cp.async) through
    // registers, as bf16x2 words: fetch() loads taps 2kq + 8c, 2kq + 8c + 1
    // (c = 0..7) of this thread's rows, stash() rounds and stores them.
    float xa[kBf16 ? kAPix : 1][8][2];
    Wt wb[kBf16 ? kBRows : 1][8][2];
    auto fetch = [&](int kk0) {
        // (tap_of(1) made here, not kept: at 128 x 128 on fp32 w a register more would spill)
        Tap u0 = a_tap, u1 = tap_add(a_tap, tap_of(1, g.R, g.S), g.R, g.S);
#pragma unroll
        for (int c = 0; c < 8; ++c) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const Tap u = h ? u1 : u0;
                const int kk = kk0 + 2 * kq + 8 * c + h;
                const bool tap_ok = kk < depth.end;
#pragma unroll
                for (int j = 0; j < kAPix; ++j) {
                    const int ih = a_ih0[j] + u.r, iw = a_iw0[j] + u.s;
                    const bool in = tap_ok && a_ok[j] && unsigned(ih) < unsigned(g.H) && unsigned(iw) < unsigned(g.W);
                    xa[j][c][h] = in ? __ldg(x + a_xn[j] + (u.c * g.H + ih) * g.W + iw) : 0.f;
                }
                if (!b_vec) {
#pragma unroll
                    for (int j = 0; j < kBRows; ++j) {
                        const int k = k0 + lane % 8 + 8 * (warp + 8 * j);
                        wb[j][c][h] = (tap_ok && k < g.K) ? __ldg(w + k * CRS + kk) : Wt(0.f);
                    }
                }
            }
            u0 = tap_add(u0, step4, g.R, g.S);
            u1 = tap_add(u1, step4, g.R, g.S);
        }
        a_tap = tap_add(a_tap, stage_step, g.R, g.S);
    };
    auto stash = [&](int slot) {
        unsigned char* As = smem + slot * kStageBytes;
        unsigned char* Bs = As + BM * kMmaRowBytes;
#pragma unroll
        for (int c = 0; c < 8; ++c) {
#pragma unroll
            for (int j = 0; j < kAPix; ++j)
                smem_store(reinterpret_cast<uint32_t*>(As + mma_word(lane % 8 + 8 * (warp + 8 * j), kq + 4 * c)),
                           mma_bf16x2(xa[j][c][0], xa[j][c][1]));
            if (!b_vec) {
#pragma unroll
                for (int j = 0; j < kBRows; ++j)
                    smem_store(reinterpret_cast<uint32_t*>(Bs + mma_word(lane % 8 + 8 * (warp + 8 * j), kq + 4 * c)),
                               mma_bf16x2(wb[j][c][0], wb[j][c][1]));
            }
        }
    };
    // w by cp.async (bf16 weights, C*R*S % 8 == 0, 16-byte aligned): chunk t % 8 of rows t / 8 + 32j.
    auto copy_w = [&](int slot, int kk0) {
        unsigned char* Bs = smem + slot * kStageBytes + BM * kMmaRowBytes;
#pragma unroll
        for (int j = 0; j < BN / 32; ++j) {
            const int r = t / 8 + 32 * j, k = k0 + r, kk = kk0 + 8 * (t % 8);
            const int taps = k < g.K ? max(0, min(8, depth.end - kk)) : 0;
            cp_async<16>(Bs + mma_chunk(r, t % 8), taps ? w + k * CRS + kk : w, 2 * taps);
        }
    };

    float acc[MI][NI][4] = {};
    auto multiply = [&](int slot) {
        const unsigned char* As = smem + slot * kStageBytes;
        const unsigned char* Bs = As + BM * kMmaRowBytes;
        if constexpr (!kBf16) {
#pragma unroll
            for (int ks = 0; ks < kMmaTileK / 8; ++ks) {  // k8 steps: chunks 2ks, 2ks + 1
                uint32_t a[MI][4], bf[NI][2];
#pragma unroll
                for (int mi = 0; mi < MI; ++mi) {
                    // matrices: rows 0-7 and 8-15 of chunk 2ks, then of 2ks + 1
                    ldmatrix<4>(a[mi], As + mma_chunk(wm + mi * 16 + lane % 16, 2 * ks + lane / 16));
#pragma unroll
                    for (int i = 0; i < 4; ++i) a[mi][i] = mma_tf32(a[mi][i]);
                }
#pragma unroll
                for (int ni = 0; ni < NI; ni += 2) {
                    // matrices: channels 0-7 of chunks 2ks, 2ks + 1, then channels 8-15
                    uint32_t q[4];
                    ldmatrix<4>(q, Bs + mma_chunk(wn + ni * 8 + lane % 8 + 8 * (lane / 16), 2 * ks + lane / 8 % 2));
#pragma unroll
                    for (int i = 0; i < 2; ++i) {
                        bf[ni][i] = mma_tf32(q[i]);
                        bf[ni + 1][i] = mma_tf32(q[2 + i]);
                    }
                }
#pragma unroll
                for (int mi = 0; mi < MI; ++mi)
#pragma unroll
                    for (int ni = 0; ni < NI; ++ni) mma_m16n8k8_tf32(acc[mi][ni], a[mi], bf[ni], acc[mi][ni]);
            }
        } else {
#pragma unroll
            for (int ks = 0; ks < kTileK / 16; ++ks) {  // k16 steps: chunks 2ks, 2ks + 1
                uint32_t a[MI][4], bf[NI][2];
#pragma unroll
                for (int mi = 0; mi < MI; ++mi)  // rows 0-7, 8-15 of chunk 2ks, then of 2ks + 1
                    ldmatrix<4>(a[mi], As + mma_chunk(wm + mi * 16 + lane % 16, 2 * ks + lane / 16));
#pragma unroll
                for (int ni = 0; ni < NI; ni += 2) {
                    // matrices: channels 0-7 of chunks 2ks, 2ks + 1, then channels 8-15
                    uint32_t q[4];
                    ldmatrix<4>(q, Bs + mma_chunk(wn + ni * 8 + lane % 8 + 8 * (lane / 16), 2 * ks + lane / 8 % 2));
                    bf[ni][0] = q[0], bf[ni][1] = q[1], bf[ni + 1][0] = q[2], bf[ni + 1][1] = q[3];
                }
#pragma unroll
                for (int mi = 0; mi < MI; ++mi)
#pragma unroll
                    for (int ni = 0; ni < NI; ++ni) mma_m16n8k16_bf16(acc[mi][ni], a[mi], bf[ni], acc[mi][ni]);
            }
        }
    };

    // The pipeline: stage i goes to slot i % 3 as group i (a group per
    // iteration, empty past the depth, so that wait<1> always means "stage
    // it has landed"). The barrier after the wait publishes stage it and
    // tells every thread that slot (it - 1) % 3, read last iteration, is free.
    const int stages = ceil_div(depth.end - depth.begin, kTileK);
    if constexpr (!kBf16) {
#pragma unroll
        for (int s = 0; s < kMmaStages - 1; ++s) {
            if (s < stages) load_stage(s, depth.begin + s * kTileK);
            cp_async_commit();
        }
        for (int it = 0; it < stages; ++it) {
            cp_async_wait<kMmaStages - 2>();
            __syncthreads();
            const int next = it + kMmaStages - 1;
            if (next < stages) load_stage(next % kMmaStages, depth.begin + next * kTileK);
            cp_async_commit();
            multiply(it % kMmaStages);
        }
    } else {
        // The same, with x (and w unless b_vec) fetched into registers before
        // the multiply and stashed after it: slot next % 3 was last read in
        // iteration it - 1, before this iteration's barrier, and is read again
        // in iteration next, after two more.
#pragma unroll
        for (int s = 0; s < kMmaStages - 1; ++s) {
            if (s < stages) {
                fetch(depth.begin + s * kTileK);
                stash(s);
                if (b_vec) copy_w(s, depth.begin + s * kTileK);
            }
            cp_async_commit();
        }
        for (int it = 0; it < stages; ++it) {
            cp_async_wait<kMmaStages - 2>();
            __syncthreads();
            const int next = it + kMmaStages - 1;
            if (next < stages) {
                fetch(depth.begin + next * kTileK);
                if (b_vec) copy_w(next % kMmaStages, depth.begin + next * kTileK);
            }
            cp_async_commit();
            multiply(it % kMmaStages);
            if (next < stages) stash(next % kMmaStages);
        }
    }
    cp_async_wait_all();  // only empty groups are left; the block ends with none in flight

    // Epilogue: lane (g, t) holds C[g (+8)][2t (+1)] of each m16n8 tile.
    const ConvOut out(y, g, mode);
    float bias[NI][2];
#pragma unroll
    for (int ni = 0; ni < NI; ++ni)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const int k = k0 + wn + ni * 8 + 2 * (lane % 4) + j;
            bias[ni][j] = (b && k < g.K) ? __ldg(&b[k]) : 0.f;
        }
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int m = m0 + wm + mi * 16 + lane / 4 + 8 * h;
            if (m >= M) continue;
            const int at = out.at(g, m);
#pragma unroll
            for (int ni = 0; ni < NI; ++ni)
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const int k = k0 + wn + ni * 8 + 2 * (lane % 4) + j;
                    if (k < g.K) out.store(at + k * out.plane, acc[mi][ni][2 * h + j] + bias[ni][j]);
                }
        }
}

}  // namespace fcn
