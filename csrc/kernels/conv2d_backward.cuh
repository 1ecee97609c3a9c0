// conv2d_backward.cuh: the gradients of y = relu?(conv2d(x, w) + b) (conv2d.cuh)
// for the hand-written backward pass. NCHW float32, C-contiguous.
//
//   x: N x C x H x W   w: K x C x R x S   dy (grad of y): N x K x P x Q
//
// Input gradient: dx = conv_transpose2d(dy, w, stride, padding), cropped to
// H x W. At stride 1 (all of FCN's convolutions) with padding p <= R - 1 it
// is conv2d(dy, w', padding R - 1 - p), w'[c][k][r][s] = w[k][c][R-1-r][S-1-s]
// (conv2d_flip_filters), run by conv2d_igemm with dy masked as it is gathered.
// Otherwise it is upsample.cuh's gather (w's K x C x R x S layout is
// conv_transpose2d's C_in x C_out x R x S, C_in = K); rows and columns that
// no window reached (PyTorch's implied output_padding) come out 0.
//
// Weight gradient, the implicit GEMM of conv2d.cuh read the other way round:
//   GEMM rows    = K      one output channel k
//   GEMM columns = C*R*S  one filter tap crs = (c, r, s)
//   GEMM depth   = N*P*Q  one output pixel m = (n, p, q)
//   dw[k][crs] = sum over m of dy[n][k][p][q] * im2col(x)[m][crs]
// The depth is long (487k pixels at conv1 of a 500x500 image) and the GEMM
// small (64 x 576), so the depth is split into chunks fixed by the shape:
// block (tile, split) writes its chunk's partial sum, and split_sum adds
// them in order. No atomics: the same bits on every run and worker count.
//
//   conv2d_grad_weight_igemm<kTileK>: kTileK channels x 64 taps per block
//     over one depth chunk, a 4 x 4 register block per thread (the layout of
//     conv2d_igemm). Any shape; the launcher picks the smallest kTileK in
//     {8, 16, 32, 64} that holds K (a function of the shape only).
//     <64>: 16 pixels per shared-memory stage, all 256 threads on one pixel.
//     <8>, <16>, <32>: the narrow layers (K = 8 filled 8 of 64 rows): a
//     narrow tile needs fewer than 256 threads, so 64 / kTileK pixel groups
//     each take a share of a stage (64 pixels for <8>, <16>; 32 for <32>),
//     added in group order at the end (docs/performance.md, rung 7).
//   split_sum: dw[i] = alpha * sum over splits of partial[split][i], in order.
//   bias_grad: db[k] = sum of dy over n, p, q; one block per channel and a
//     fixed-shape tree in shared memory.
//   relu_backward: dy * (y > 0), elementwise.
// The optional ReLU mask (the forward output y, same shape as dy) multiplies
// dy by (y > 0) where dy is read, in every kernel above that takes one.
#pragma once
#include "common.cuh"

namespace fcn {

// grid = ceil(K*C*R*S / 256), block = 256: thread i writes element i of
// wf (C x K x R x S) = w (K x C x R x S) with channels swapped and taps
// reversed; RS = R*S. wf[c][k][rs'] = w[k][c][RS-1-rs'] reverses r and s
// together because (R-1-r)*S + (S-1-s) = RS-1 - (r*S + s).
__global__ void __launch_bounds__(256)
conv2d_flip_filters(const float* __restrict__ w, float* __restrict__ wf, int K, int C, int RS, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int rs = i % RS, k = i / RS % K, c = i / RS / K;
    wf[i] = __ldg(&w[(k * C + c) * RS + RS - 1 - rs]);
}

// Every size of one weight gradient (shapes.h's ConvShape; K x C x R x S
// is dw's shape). P, Q are given, not derived, so the same kernel serves
// conv_transpose2d's weight gradient (x and dy swap roles) and the
// crop-offset 1x1 score convolution (negative padding = crop offset).
using ConvGradShape = ConvShape;

constexpr int kGradTileT = 64;    // filter taps per block (GEMM columns)
constexpr int kGradThreads = 256;
// x rows padded to 68 floats: the loaders store the stage's pixels of one
// column from consecutive threads, 68 floats apart, i.e. 4 banks apart (2-way
// conflict per 16-pixel half-warp instead of 16-way; 4-way for a warp on a
// 32- or 64-pixel stage), and rows stay 16-byte aligned for float4 reads.
// dy rows are padded the same way (kTileK + 4).
constexpr int kGradLd = kGradTileT + 4;

// Pixels per shared-memory stage (GEMM depth): 16 for the 64-row tile; the
// narrow tiles' pixel groups each take only a share of a stage, so their
// stages are deeper (64 pixels: 40 KB / 45 KB of both tiles' two buffers,
// under the 48 KB of static shared memory) to keep 128 or more FMAs per
// thread between barriers. The emulator runs each barrier as a switch of all
// 256 fibers, so deeper stages were 1.5x faster there for K = 8.
constexpr int grad_stage_pixels(int tile_k) { return tile_k <= 16 ? 64 : tile_k == 32 ? 32 : 16; }

// kTileK (8, 16, 32 or 64) output channels x 64 taps per block; the launcher
// picks the smallest tile holding K, so narrow layers do not multiply zeros.
// grid = (ceil(C*R*S / 64), ceil(K / kTileK), splits), block = 256.
// Block (bx, by, z) computes dw rows k0 = kTileK*by .. +kTileK-1, columns
// t0 = 64*bx .. +63, summed over pixels [z * chunk, min(M, (z + 1) * chunk)),
// chunk a multiple of the stage depth TM = grad_stage_pixels(kTileK), and
// writes alpha * sum to out[z][k][crs].
// Loads of one TM-pixel stage: thread t handles pixel m = stage + t % TM
//   (decoded to n, p, q once per stage) for channels k0 + t/TM + i*(256/TM)
//   (dy: consecutive threads read consecutive pixels of one channel,
//   coalesced) and for taps t0 + t/TM + i*(256/TM) (x: neighbouring columns
//   of one row, strided by sw). The taps are fixed for the block, so their
//   (c, r, s) are decoded once.
// Compute: a kTileK x 64 tile needs kTileK*4 threads with a 4 x 4 register
//   block each, so the 256 threads form G = 64 / kTileK pixel groups (1 for
//   the 64-row tile, 8 for 8 rows). Thread t is lane l = t % (kTileK*4) of
//   group g = t / (kTileK*4): it owns channels k0 + 4*(l % (kTileK/4)) .. +3 x
//   taps t0 + 4*(l / (kTileK/4)) .. +3 and, per stage, the pixels
//   g*TM/G .. +TM/G-1; per pixel one float4 of each tile feeds 16 FMAs. At the
//   end the G partial blocks meet in shared memory and group 0 adds them in
//   group order: a fixed order, as deterministic as the rest.
template <int kTileK, bool kMasked>
__global__ void __launch_bounds__(kGradThreads)
conv2d_grad_weight_igemm(const float* __restrict__ x, const float* __restrict__ dy, const float* __restrict__ mask,
                         float* __restrict__ out, ConvGradShape g, int chunk, float alpha) {
    constexpr int kStageM = grad_stage_pixels(kTileK);
    constexpr int kGroupThreads = kTileK / 4 * (kGradTileT / 4);
    constexpr int kGroups = kGradThreads / kGroupThreads;
    constexpr int kGroupM = kStageM / kGroups;         // pixels of a stage per group
    constexpr int kSlotStride = kGradThreads / kStageM;  // loader rows / columns apart
    constexpr int kDySlots = kTileK / kSlotStride, kXSlots = kGradTileT / kSlotStride;
    constexpr int kLdK = kTileK + 4;
    static_assert(kGroups * kGroupThreads == kGradThreads && kGroupM * kGroups == kStageM, "tile must fit the block");
    static_assert(kDySlots * kSlotStride == kTileK, "dy tile must be a whole number of loads per thread");
    // Two stages of both tiles; the group reduction reuses the same memory.
    constexpr int kStageFloats = 2 * kStageM * (kLdK + kGradLd);
    constexpr int kReduceFloats = kGroups > 1 ? kGradThreads * 16 : 0;
    __shared__ __align__(16) float smem[kStageFloats > kReduceFloats ? kStageFloats : kReduceFloats];
    auto Ds = reinterpret_cast<float(*)[kStageM][kLdK]>(smem);
    auto Xs = reinterpret_cast<float(*)[kStageM][kGradLd]>(smem + 2 * kStageM * kLdK);

    const int t = threadIdx.x;
    const int PQ = g.P * g.Q, M = g.N * PQ, RS = g.R * g.S, CRS = g.C * RS;
    const int t0 = blockIdx.x * kGradTileT, k0 = blockIdx.y * kTileK;
    const int m_begin = blockIdx.z * chunk, m_end = min(M, m_begin + chunk);

    const int lm = t % kStageM, lcol = t / kStageM;
    // This thread's taps: x offset within image n (-1: past C*R*S) and (r, s)
    // for the padding test.
    int tap_off[kXSlots], tap_r[kXSlots], tap_s[kXSlots];
#pragma unroll
    for (int i = 0; i < kXSlots; ++i) {
        const int crs = t0 + lcol + i * kSlotStride;
        const int c = crs / RS, rs = crs % RS;
        tap_r[i] = rs / g.S;
        tap_s[i] = rs % g.S;
        tap_off[i] = crs < CRS ? c * g.H * g.W : -1;
    }

    float d_next[kDySlots], x_next[kXSlots];
    auto fetch = [&](int m0) {
        const int m = m0 + lm;
        const bool pixel = m < m_end;
        const int n = pixel ? m / PQ : 0, pq = m % PQ;
        const int ih0 = pq / g.Q * g.sh - g.ph, iw0 = pq % g.Q * g.sw - g.pw;
        const float* dyn = dy + n * g.K * PQ + pq;
#pragma unroll
        for (int i = 0; i < kDySlots; ++i) {
            const int k = k0 + lcol + i * kSlotStride;
            float v = 0.f;
            if (pixel && k < g.K) {
                v = __ldg(dyn + k * PQ);
                if (kMasked && !(__ldg(mask + (dyn - dy) + k * PQ) > 0.f)) v = 0.f;
            }
            d_next[i] = v;
        }
        const float* xn = x + n * g.C * g.H * g.W;
#pragma unroll
        for (int i = 0; i < kXSlots; ++i) {
            const int ih = ih0 + tap_r[i], iw = iw0 + tap_s[i];
            const bool inside =
                pixel && tap_off[i] >= 0 && unsigned(ih) < unsigned(g.H) && unsigned(iw) < unsigned(g.W);
            x_next[i] = inside ? __ldg(xn + tap_off[i] + ih * g.W + iw) : 0.f;
        }
    };

    const int group = t / kGroupThreads, lane = t % kGroupThreads;
    const int tk = lane % (kTileK / 4), tt = lane / (kTileK / 4);
    float acc[4][4] = {};
    fetch(m_begin);
    for (int m0 = m_begin, stage = 0; m0 < m_end; m0 += kStageM, stage ^= 1) {
        // Buffer `stage` was last read two stages ago, before the previous
        // barrier: one barrier per stage suffices.
#pragma unroll
        for (int i = 0; i < kDySlots; ++i) smem_store(&Ds[stage][lm][lcol + i * kSlotStride], d_next[i]);
#pragma unroll
        for (int i = 0; i < kXSlots; ++i) smem_store(&Xs[stage][lm][lcol + i * kSlotStride], x_next[i]);
        __syncthreads();
        if (m0 + kStageM < m_end) fetch(m0 + kStageM);  // in flight during the FMAs below
        // This thread's float4 of each pixel row.
        static_assert(kLdK % 4 == 0 && kGradLd % 4 == 0, "tile rows must be whole float4s");
        const float4* d4 = as_vector<const float4>(&Ds[stage][0][tk * 4]);
        const float4* x4 = as_vector<const float4>(&Xs[stage][0][tt * 4]);
#pragma unroll
        for (int j = group * kGroupM; j < (group + 1) * kGroupM; ++j) {
            const float4 a = smem_load(&d4[j * (kLdK / 4)]);
            const float4 b = smem_load(&x4[j * (kGradLd / 4)]);
            const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int u = 0; u < 4; ++u)
#pragma unroll
                for (int v = 0; v < 4; ++v) acc[u][v] = fmaf(av[u], bv[v], acc[u][v]);
        }
    }

    if constexpr (kGroups > 1) {
        // red[group][u*4 + v][lane]: lanes contiguous, so the stores and
        // loads below are conflict-free. The barrier first: the last stage's
        // buffers are still being read.
        float* red = smem;
        __syncthreads();
#pragma unroll
        for (int u = 0; u < 4; ++u)
#pragma unroll
            for (int v = 0; v < 4; ++v) smem_store(&red[(group * 16 + u * 4 + v) * kGroupThreads + lane], acc[u][v]);
        __syncthreads();
        if (group != 0) return;
        for (int h = 1; h < kGroups; ++h)
#pragma unroll
            for (int u = 0; u < 4; ++u)
#pragma unroll
                for (int v = 0; v < 4; ++v) acc[u][v] += smem_load(&red[(h * 16 + u * 4 + v) * kGroupThreads + lane]);
    }

    float* o = out + blockIdx.z * g.K * CRS;
#pragma unroll
    for (int u = 0; u < 4; ++u) {
        const int k = k0 + tk * 4 + u;
        if (k >= g.K) break;
#pragma unroll
        for (int v = 0; v < 4; ++v) {
            const int crs = t0 + tt * 4 + v;
            if (crs < CRS) o[k * CRS + crs] = alpha * acc[u][v];
        }
    }
}

// grid = ceil(n / 256), block = 256; thread i adds element i of every split
// in split order.
__global__ void split_sum(const float* __restrict__ partial, float* __restrict__ out, int n, int splits,
                          float alpha) {
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;  // unsigned: n may be close to INT_MAX
    if (i >= unsigned(n)) return;
    float acc = 0.f;
    for (int s = 0; s < splits; ++s) acc += __ldg(partial + s * n + int(i));
    out[i] = alpha * acc;
}

constexpr int kBiasGradThreads = 256;

// grid = K, block = 256. Block k sums channel k of dy: thread t takes pixels
// t, t + 256, ... of every image (coalesced), then a fixed halving tree.
template <bool kMasked>
__global__ void __launch_bounds__(kBiasGradThreads)
bias_grad(const float* __restrict__ dy, const float* __restrict__ mask, float* __restrict__ db, int N, int K,
          int PQ) {
    __shared__ float s[kBiasGradThreads];
    const int k = blockIdx.x;
    float acc = 0.f;
    for (int n = 0; n < N; ++n) {
        const int base = (n * K + k) * PQ;
        for (int i = threadIdx.x; i < PQ; i += kBiasGradThreads) {
            const float v = __ldg(dy + base + i);
            acc += (!kMasked || __ldg(mask + base + i) > 0.f) ? v : 0.f;
        }
    }
    smem_store(&s[threadIdx.x], acc);
    __syncthreads();
    for (int stride = kBiasGradThreads / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) {
            const float sum = smem_load(&s[threadIdx.x]) + smem_load(&s[threadIdx.x + stride]);
            smem_store(&s[threadIdx.x], sum);
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) db[k] = smem_load(&s[0]);
}

// grid = ceil(n / 256), block = 256; one element per thread.
__global__ void relu_backward(const float* __restrict__ dy, const float* __restrict__ y, float* __restrict__ dx,
                              int n) {
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= unsigned(n)) return;
    dx[i] = __ldg(y + i) > 0.f ? __ldg(dy + i) : 0.f;
}

}  // namespace fcn
