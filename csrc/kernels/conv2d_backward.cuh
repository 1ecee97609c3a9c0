// conv2d_backward.cuh: the gradients of y = relu?(conv2d(x, w) + b) (conv2d.cuh)
// for the hand-written backward pass. NCHW float32, C-contiguous.
//
//   x: N x C x H x W   w: K x C x R x S   dy (grad of y): N x K x P x Q
//
// Input gradient: dx = conv_transpose2d(dy, w, stride, padding), cropped to
// H x W. At stride 1 (all of FCN's convolutions) with padding p <= R - 1,
// that is an ordinary convolution: dx = conv2d(dy, w', padding R - 1 - p)
// with w'[c][k][r][s] = w[k][c][R-1-r][S-1-s] (conv2d_flip_filters below), run
// by conv2d.cuh's conv2d_igemm with dy masked as it is gathered. Otherwise it
// is the gather kernel of upsample.cuh (w's K x C x R x S layout is exactly
// conv_transpose2d's C_in x C_out x R x S with C_in = K); rows and columns of
// x that no window reached (when (H + 2p - R) % s != 0, PyTorch's implied
// output_padding) have no taps there and come out 0. Emulator, CPU time,
// batch 4, 3x3 pad 1 with the ReLU mask: see docs/performance.md.
//
// Weight gradient, the implicit GEMM of conv2d.cuh read the other way round:
//   GEMM rows    = K      one output channel k
//   GEMM columns = C*R*S  one filter tap crs = (c, r, s)
//   GEMM depth   = N*P*Q  one output pixel m = (n, p, q)
//   dw[k][crs] = sum over m of dy[n][k][p][q] * im2col(x)[m][crs]
// The depth is long (a 500x500 image gives 487k pixels at conv1) and the
// GEMM small (64 x 576 there), so the depth is split into fixed chunks
// (split-K): block (tile, split) writes the partial sum of its chunk to a
// workspace and a second kernel adds the partials in split order. The chunk
// boundaries depend on the shape only, and there is no atomic anywhere, so
// the same inputs give the same bits on every run, any GPU, any emulator
// worker count.
//
//   conv2d_grad_weight_igemm: 64 channels x 64 taps per block over one depth
//     chunk, 16 pixels per shared-memory stage, 4 x 4 register block per
//     thread (the layout of conv2d_igemm). Any shape.
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

// Every size of one weight gradient (common.cuh's ConvShape; K x C x R x S
// is dw's shape). P, Q are given, not derived, so the same kernel serves
// conv_transpose2d's weight gradient (x and dy swap roles) and the
// crop-offset 1x1 score convolution (negative padding = crop offset).
using ConvGradShape = ConvShape;

constexpr int kGradTileK = 64;    // output channels per block (GEMM rows)
constexpr int kGradTileT = 64;    // filter taps per block (GEMM columns)
constexpr int kGradTileM = 16;    // pixels per shared-memory stage (GEMM depth)
constexpr int kGradThreads = 256;
// Rows padded to 68 floats: the loaders store 16 pixels of one column per
// half-warp, 68 floats apart, i.e. 4 banks apart (2-way conflict at worst
// instead of 16-way), and rows stay 16-byte aligned for float4 reads.
constexpr int kGradLd = 68;

// grid = (ceil(C*R*S / 64), ceil(K / 64), splits), block = 256.
// Block (bx, by, z) computes dw rows k0 = 64*by .. +63, columns t0 = 64*bx ..
// +63, summed over pixels [z * chunk, min(M, (z + 1) * chunk)), chunk a
// multiple of 16, and writes alpha * sum to out[z][k][crs].
// Loads of one 16-pixel stage: thread t handles pixel m = stage + t % 16
//   (decoded to n, p, q once per stage) for channels k0 + t/16 + {0,16,32,48}
//   (dy: a half-warp reads 16 consecutive pixels of one channel, coalesced)
//   and for taps t0 + t/16 + {0,16,32,48} (x: 16 neighbouring columns of one
//   row, strided by sw). The taps are fixed for the block, so their (c, r, s)
//   are decoded once.
// Compute: thread t owns channels k0 + 4*(t%16) .. +3 x taps t0 + 4*(t/16)
//   .. +3: per pixel one float4 of each tile feeds 16 FMAs.
template <bool kMasked>
__global__ void __launch_bounds__(kGradThreads)
conv2d_grad_weight_igemm(const float* __restrict__ x, const float* __restrict__ dy, const float* __restrict__ mask,
                         float* __restrict__ out, ConvGradShape g, int chunk, float alpha) {
    __shared__ __align__(16) float Ds[2][kGradTileM][kGradLd];
    __shared__ __align__(16) float Xs[2][kGradTileM][kGradLd];
    const int t = threadIdx.x;
    const int PQ = g.P * g.Q, M = g.N * PQ, RS = g.R * g.S, CRS = g.C * RS;
    const int t0 = blockIdx.x * kGradTileT, k0 = blockIdx.y * kGradTileK;
    const int m_begin = blockIdx.z * chunk, m_end = min(M, m_begin + chunk);

    constexpr int kSlots = kGradTileK * kGradTileM / kGradThreads;  // 4 loads of each tile per thread
    constexpr int kSlotStride = kGradThreads / kGradTileM;          // 16 rows / columns apart
    const int lm = t % kGradTileM, lcol = t / kGradTileM;
    // This thread's taps: x offset within image n (-1: past C*R*S) and (r, s)
    // for the padding test.
    int tap_off[kSlots], tap_r[kSlots], tap_s[kSlots];
#pragma unroll
    for (int i = 0; i < kSlots; ++i) {
        const int crs = t0 + lcol + i * kSlotStride;
        const int c = crs / RS, rs = crs % RS;
        tap_r[i] = rs / g.S;
        tap_s[i] = rs % g.S;
        tap_off[i] = crs < CRS ? c * g.H * g.W : -1;
    }

    float d_next[kSlots], x_next[kSlots];
    auto fetch = [&](int m0) {
        const int m = m0 + lm;
        const bool pixel = m < m_end;
        const int n = pixel ? m / PQ : 0, pq = m % PQ;
        const int ih0 = pq / g.Q * g.sh - g.ph, iw0 = pq % g.Q * g.sw - g.pw;
        const float* dyn = dy + n * g.K * PQ + pq;
#pragma unroll
        for (int i = 0; i < kSlots; ++i) {
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
        for (int i = 0; i < kSlots; ++i) {
            const int ih = ih0 + tap_r[i], iw = iw0 + tap_s[i];
            const bool inside =
                pixel && tap_off[i] >= 0 && unsigned(ih) < unsigned(g.H) && unsigned(iw) < unsigned(g.W);
            x_next[i] = inside ? __ldg(xn + tap_off[i] + ih * g.W + iw) : 0.f;
        }
    };

    const int tk = t % (kGradTileK / 4), tt = t / (kGradTileK / 4);
    float acc[4][4] = {};
    fetch(m_begin);
    for (int m0 = m_begin, stage = 0; m0 < m_end; m0 += kGradTileM, stage ^= 1) {
        // Buffer `stage` was last read two stages ago, before the previous
        // barrier: one barrier per stage suffices.
#pragma unroll
        for (int i = 0; i < kSlots; ++i) {
            Ds[stage][lm][lcol + i * kSlotStride] = d_next[i];
            Xs[stage][lm][lcol + i * kSlotStride] = x_next[i];
        }
        __syncthreads();
        if (m0 + kGradTileM < m_end) fetch(m0 + kGradTileM);  // in flight during the FMAs below
#pragma unroll
        for (int j = 0; j < kGradTileM; ++j) {
            const float4 a = *reinterpret_cast<const float4*>(&Ds[stage][j][tk * 4]);
            const float4 b = *reinterpret_cast<const float4*>(&Xs[stage][j][tt * 4]);
            const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int u = 0; u < 4; ++u)
#pragma unroll
                for (int v = 0; v < 4; ++v) acc[u][v] = fmaf(av[u], bv[v], acc[u][v]);
        }
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
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int stride = kBiasGradThreads / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) db[k] = s[0];
}

// grid = ceil(n / 256), block = 256; one element per thread.
__global__ void relu_backward(const float* __restrict__ dy, const float* __restrict__ y, float* __restrict__ dx,
                              int n) {
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= unsigned(n)) return;
    dx[i] = __ldg(y + i) > 0.f ? __ldg(dy + i) : 0.f;
}

}  // namespace fcn
