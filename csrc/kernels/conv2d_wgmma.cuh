// conv2d_wgmma.cuh: conv2d's Hopper rung (sm_90a), y = relu?(conv2d(x, w) + b) as conv2d.cuh's
// implicit GEMM (rows M = output pixels, columns = K output channels, depth = C*R*S), stride 1.
//
// conv2d_wgmma<T> (wgmma_tf32, wgmma_bf16): warp-specialized. A block owns 128 pixels (a 16 x 8
// spatial tile of one image) x 128 channels: warpgroup 0 consumes (two m64n128 wgmmas per step,
// 128 fp32 accumulators per thread in registers), warp 4 produces (one thread issues TMA loads).
// One stage = one filter tap (r, s) x 32 input channels, in a ring (tf32 3 stages, bf16 4: 97 KB)
// guarded by full / empty mbarriers. Two blocks per SM would need <= 168 registers a thread (ptxas's
// cap under __launch_bounds__(160, 2), where it spills): at 186 / 175, one block per SM.
// 160 threads, not two consumer warpgroups and setmaxnreg: the TSan build follows at most 256.
// Data path, and why:
//   A (x) needs no im2col: x viewed by a 4-D tensor map as (W, C, H, N) (dims reordered through
//     their strides) gives, per tap and channel chunk, the box of 8 columns x 32 channels x 16
//     rows at signed coordinates (q0 + s - pw, c0, p0 + r - ph, n); TMA's out-of-bounds zero fill
//     is the padding and the channel tail. It lands in shared memory as [row][channel][column],
//     pixel-major, which tf32 wgmma cannot read from a descriptor, so A goes through registers
//     (the RS form): each consumer thread loads its fragment and rounds it as the other tensor-core
//     rungs do (wmma_input.cuh: tf32 round half away, bf16 round to nearest even). 8 columns x 32
//     channels per row put the 4 channels a quad reads 8 floats apart: the fragment loads are free
//     of bank conflicts (bf16: the weights' channel order is permuted within each 16 so that a
//     register's two channels are 4 apart, see kWgPermute).
//   B (w) is reordered once per call by conv2d_wgmma_weights to wr[r*S + s][k][c] (C padded with
//     zeros to whole 32-channel chunks), rounded (tf32) or converted (bf16), so a tap's B tile is a
//     K-major 3-D box (32 channels x 128 channels x 1) in the canonical 128-byte (tf32) or 64-byte
//     (bf16) swizzle that a wgmma descriptor reads; channels >= K are zero-filled by the box.
// Epilogue: conv2d.cuh's ConvOut from the accumulator registers (bias, ReLU, or ReLU + the fused
//   2 x 2 max pool), masking pixels outside P x Q and channels >= K; with gridDim.z = splits the
//   depth's stages are split as conv2d_split_depth does and the raw partials go to the workspace.
// Limits (checked in Python): stride 1; W a multiple of 4 (TMA needs 16-byte row strides);
//   x 16-byte aligned. The reordering costs one pass over w per call (docs/performance.md).
#pragma once
#include "common.cuh"
#include "conv2d.cuh"
#include "ptx_sm90.cuh"
#include "ptx_wgmma.cuh"
#include "wmma_input.cuh"

namespace fcn {

constexpr int kWgTileP = 16, kWgTileQ = 8;       // a block's pixels: 16 rows x 8 columns
constexpr int kWgTileM = kWgTileP * kWgTileQ;    // 128 GEMM rows: two m64 halves
constexpr int kWgTileN = 128;                    // output channels per block
constexpr int kWgChunk = 32;                     // input channels per stage
constexpr int kWgConsumers = 128;                // warpgroup 0
constexpr int kWgThreads = kWgConsumers + 32;    // and the producer warp
constexpr int kWgABytes = kWgChunk * kWgTileM * 4;  // x's box, fp32

// What differs between the two precisions: the stored weight type, the
// mma depth and the rounding (WmmaInput's), the ring's depth, and the
// swizzle that makes a 32-channel row of B one span.
template <typename T>
struct WgmmaConv;
template <>
struct WgmmaConv<nvcuda::wmma::precision::tf32> : WmmaInput<nvcuda::wmma::precision::tf32> {
    static constexpr int kStages = 3;
    static constexpr int kSwizzle = 128;
    static constexpr WgmmaSwizzle kDescSwizzle = WgmmaSwizzle::b128;
};
template <>
struct WgmmaConv<__nv_bfloat16> : WmmaInput<__nv_bfloat16> {
    static constexpr int kStages = 4;
    static constexpr int kSwizzle = 64;
    static constexpr WgmmaSwizzle kDescSwizzle = WgmmaSwizzle::b64;
};

template <typename T>
constexpr int kWgBBytes = kWgTileN * kWgChunk * int(sizeof(typename WgmmaConv<T>::Stored));
template <typename T>
constexpr int kWgStageBytes = kWgBBytes<T> + kWgABytes;  // B first: it needs the swizzle's alignment
// Dynamic shared memory: the ring, 1024 bytes of slack to align it, the barriers.
template <typename T>
constexpr int kWgSmemBytes = WgmmaConv<T>::kStages * (kWgStageBytes<T> + 2 * 8) + 1024;

// The GEMM depth position j (within a 16-channel group) of bf16's B holds
// channel kWgPermute(j): the A register of depth {2t, 2t+1} then packs
// channels t and t + 4 (and {2t+8, 2t+9} channels t + 8, t + 12), 32 bytes
// apart in shared memory, so a quad's four threads hit four bank octets.
__host__ __device__ __forceinline__ constexpr int kWgPermute(int j) { return 8 * (j / 8) + 4 * (j % 2) + j % 8 / 2; }

// grid = ceil(R*S*K*Cp / 256), block = 256; Cp = C rounded up to 32.
// Thread i writes wr[i], wr being R*S x K x Cp: w[k][c][r][s] for the tap
// r*S + s and channel c of element i (bf16: c permuted by kWgPermute), 0
// past C, rounded as the consumers round A.
template <typename T>
__global__ void __launch_bounds__(256)
conv2d_wgmma_weights(const float* __restrict__ w, typename WgmmaConv<T>::Stored* __restrict__ wr, int K, int C,
                     int RS, int Cp) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;  // Python leaves a block of int headroom
    if (i >= RS * K * Cp) return;
    const int cp = i % Cp, k = i / Cp % K, rs = i / (Cp * K);
    const int c = std::is_same_v<T, __nv_bfloat16> ? cp / 16 * 16 + kWgPermute(cp % 16) : cp;
    const float v = c < C ? __ldg(&w[(k * C + c) * RS + rs]) : 0.f;
    wr[i] = WmmaInput<T>::convert(v);
}

// The bits of a bf16 pair, lo in the low half (the lower depth index).
__device__ __forceinline__ uint32_t wgmma_pack_bf16(float lo, float hi) {
#if defined(FCN_EMU)
    return uint32_t(__nv_bfloat16(lo).bits) | uint32_t(__nv_bfloat16(hi).bits) << 16;
#else
    return uint32_t(__bfloat16_as_ushort(__float2bfloat16(lo))) |
           uint32_t(__bfloat16_as_ushort(__float2bfloat16(hi))) << 16;
#endif
}

// One consumer thread's A fragment for mma step j of a stage (of one m64
// half): As is the stage's x box [16 rows][32 channels][8 columns]; this
// thread's GEMM rows are pixel (row, column g) and (row + 1, g) (the ISA's
// rows g and g + 8 of its warp's 16), its depth the channels the ISA's
// fragment layout gives thread t = lane % 4 (tf32: t, t + 4; bf16 through
// kWgPermute).
template <typename T>
__device__ __forceinline__ void wgmma_conv_a(uint32_t (&a)[4], const float* As, int row, int g, int t, int j) {
    auto at = [&](int r, int c) { return smem_load(&As[(row + r) * (kWgChunk * kWgTileQ) + c * kWgTileQ + g]); };
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
        const int c = 16 * j + t;
        a[0] = wgmma_pack_bf16(at(0, c), at(0, c + 4));
        a[1] = wgmma_pack_bf16(at(1, c), at(1, c + 4));
        a[2] = wgmma_pack_bf16(at(0, c + 8), at(0, c + 12));
        a[3] = wgmma_pack_bf16(at(1, c + 8), at(1, c + 12));
    } else {
        const int c = 8 * j + t;
        a[0] = __float_as_uint(WmmaInput<T>::convert(at(0, c)));
        a[1] = __float_as_uint(WmmaInput<T>::convert(at(1, c)));
        a[2] = __float_as_uint(WmmaInput<T>::convert(at(0, c + 4)));
        a[3] = __float_as_uint(WmmaInput<T>::convert(at(1, c + 4)));
    }
}

// grid = (N * ceil(P/16) * ceil(Q/8), ceil(K/128), splits), block = 160,
// dynamic shared memory kWgSmemBytes<T>. map_x: x as (W, C, H, N), box
// 8 x 32 x 16 x 1, fp32, no swizzle; map_w: wr as (Cp, K, R*S), box
// 32 x 128 x 1, T's swizzle. Stage i of the block's depth range is tap
// i / (Cp / 32), channels 32 * (i % (Cp / 32)) ..
// Producer (thread 128): waits for a slot's empty barrier, arms its full
// barrier with the stage's bytes, issues B's and A's loads.
// Consumers: thread u owns, in m64 half h, the rows of warp u / 32, i.e.
// pixel rows 8 h + 2 (u / 32) + {0, 1} of the tile; per stage it waits for
// the full barrier, issues the stage's wgmmas (4 k8 steps for tf32, 2 k16
// for bf16, each for both halves, A loaded just before) and waits for them,
// then arrives on the empty barrier (all 128 consumer threads do: every
// read of the slot happens before its refill).
template <typename T>
__global__ void __launch_bounds__(kWgThreads, 1)
conv2d_wgmma(const __grid_constant__ TensorMap map_x, const __grid_constant__ TensorMap map_w,
             const float* __restrict__ b, float* __restrict__ y, ConvShape g, int mode) {
    using Conv = WgmmaConv<T>;
    constexpr int kSteps = kWgChunk / Conv::kK, kStages = Conv::kStages;
    FCN_DYNAMIC_SMEM(unsigned char, raw);
#if defined(__CUDA_ARCH__) && !defined(FCN_EMU)
    const unsigned raw_at = smem_address(raw);
#else
    const unsigned raw_at = unsigned(reinterpret_cast<uintptr_t>(raw));
#endif
    unsigned char* ring = raw + (1024 - raw_at % 1024) % 1024;  // the swizzle's 1024-byte repeat
    uint64_t* full = reinterpret_cast<uint64_t*>(ring + kStages * kWgStageBytes<T>);
    uint64_t* empty = full + kStages;

    const int tiles_q = ceil_div(g.Q, kWgTileQ), tiles = ceil_div(g.P, kWgTileP) * tiles_q;
    const int n = blockIdx.x / tiles, p0 = blockIdx.x % tiles / tiles_q * kWgTileP;
    const int q0 = blockIdx.x % tiles_q * kWgTileQ, k0 = blockIdx.y * kWgTileN;
    const int chunks = ceil_div(g.C, kWgChunk);
    const long long depth = (long long)g.R * g.S * chunks, z = blockIdx.z, splits = gridDim.z;
    const int begin = int(z * depth / splits), end = int((z + 1) * depth / splits);

    if (threadIdx.x == 0) {
        for (int s = 0; s < kStages; ++s) {
            mbarrier_init(&full[s], 1);
            mbarrier_init(&empty[s], kWgConsumers);
        }
        fence_proxy_async();  // the barriers' init is seen by the TMA unit
    }
    __syncthreads();

    if (threadIdx.x >= kWgConsumers) {  // the producer warp: one thread works, the rest leave
        if (threadIdx.x != kWgConsumers) return;
        prefetch_tensor_map(&map_x);
        prefetch_tensor_map(&map_w);
        for (int i = begin; i < end; ++i) {
            const int slot = (i - begin) % kStages;
            const unsigned parity = unsigned((i - begin) / kStages) & 1u;
            mbarrier_wait(&empty[slot], parity ^ 1u);  // the first round's "previous phase" has completed
            unsigned char* stage = ring + slot * kWgStageBytes<T>;
            const int rs = i / chunks, c0 = i % chunks * kWgChunk, r = rs / g.S, s = rs % g.S;
            mbarrier_arrive_expect_tx(&full[slot], kWgStageBytes<T>);
            tma_load_3d(stage, &map_w, &full[slot], c0, k0, rs);
            tma_load_4d(stage + kWgBBytes<T>, &map_x, &full[slot], q0 + s - g.pw, c0, p0 + r - g.ph, n);
        }
        return;
    }
    const int u = threadIdx.x, lane = u % kWarpSize, gq = lane / 4, tq = lane % 4;
    const int row = 2 * (u / kWarpSize);  // pixel row (of the tile) of GEMM row g in half 0; half 1: + 8
    float acc[2][kWgTileN / 2] = {};
    for (int i = begin; i < end; ++i) {
        const int slot = (i - begin) % kStages;
        mbarrier_wait(&full[slot], unsigned((i - begin) / kStages) & 1u);
        const unsigned char* stage = ring + slot * kWgStageBytes<T>;
        const float* As = reinterpret_cast<const float*>(stage + kWgBBytes<T>);
        // All of the stage's A fragments first: an in-flight wgmma's A registers must not change.
        uint32_t a[kSteps][2][4];
#pragma unroll
        for (int j = 0; j < kSteps; ++j)
#pragma unroll
            for (int h = 0; h < 2; ++h) wgmma_conv_a<T>(a[j][h], As, row + 8 * h, gq, tq, j);
        wgmma_fence();
#pragma unroll
        for (int j = 0; j < kSteps; ++j) {
            // K-major B: 8-row groups of the swizzle atom lie 8 rows x 32 channels apart;
            // step j starts 32 bytes further along each row.
            const uint64_t desc = wgmma_descriptor(stage + 32 * j, 16, 8 * kWgChunk * sizeof(typename Conv::Stored),
                                                   Conv::kDescSwizzle);
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                if constexpr (std::is_same_v<T, __nv_bfloat16>)
                    wgmma_bf16_rs<kWgTileN>(acc[h], a[j][h], desc, true);
                else
                    wgmma_tf32_rs<kWgTileN>(acc[h], a[j][h], desc, true);
            }
        }
        wgmma_commit_group();
        // The overload pins every accumulator read after the wait (the epilogue's included).
        wgmma_wait_group<0>(acc[0]);
        wgmma_wait_group<0>(acc[1]);
        mbarrier_arrive(&empty[slot]);
    }

    // Epilogue: accumulator i of half h is GEMM row g + 8 ((i / 2) % 2) of the half, i.e.
    // pixel (row + 8 h + (i / 2) % 2, column g), and channel 8 (i / 4) + 2 t + i % 2.
    const ConvOut out(y + int(blockIdx.z) * g.N * g.K * g.P * g.Q, g, mode);
    const int q = q0 + gq;
    if (q >= g.Q) return;
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int p = p0 + row + 8 * h + e;
            if (p >= g.P) continue;
            const int at = out.at(g, (n * g.P + p) * g.Q + q);
#pragma unroll
            for (int i = 0; i < kWgTileN / 2; ++i) {
                const int k = k0 + 8 * (i / 4) + 2 * tq + i % 2;
                if ((i / 2) % 2 != e || k >= g.K) continue;
                out.store(at + k * out.plane, acc[h][i] + (b ? __ldg(&b[k]) : 0.f));
            }
        }
}

}  // namespace fcn
