// conv2d_small_c.cuh: y = relu?(conv2d(x, w) + b) as in conv2d.cuh, specialised
// for a shallow filter: C*R*S <= 64 taps, the shape of FCN's conv1_1
// (3 -> 64 channels, 3x3, padding 100: C*R*S = 27).
//
// Layout (float32, NCHW, C-contiguous), as in conv2d.cuh:
//   x: N x C x H x W    w: K x C x R x S    b: K (or null)    y: N x K x P x Q
//   P = (H + 2*ph - R) / sh + 1,  Q = (W + 2*pw - S) / sw + 1
//
// Why a variant of its own: in conv2d_igemm's GEMM view conv1_1's depth of 27
// fills two 16-deep stages (32, 5 of them zero), each a barrier and a round of
// shared-memory traffic for only 27 FMAs per pixel and channel; and with
// padding 100 almost half of the output pixels (at a 500 x 500 image, 698 x 698
// of them) have a window that lies wholly in the zero padding, so their value
// is just relu(b[k]), yet igemm gathers and multiplies zeros for them.
//
// Variant:
//   conv2d_small_c<kTaps>: the block stages the filters of its (up to) 64
//     output channels and their biases once in shared memory; each thread
//     gathers the C*R*S input taps of one output pixel once into registers
//     (zero outside the image, and zero from C*R*S up to kTaps) and reuses them
//     for every channel of the group, four channels at a time. A pixel whose
//     window lies wholly in the padding skips the loads and the FMAs and writes
//     relu?(b). Any N, H, W, K, stride and padding; C*R*S <= 64 (kTaps is
//     C*R*S rounded up to 8, 16, 32 or 64: the taps must be a compile-time
//     count to live in registers).
//
// What it should give on a GPU: docs/performance.md, rung 2.
#pragma once
#include "common.cuh"

namespace fcn {

constexpr int kSmallCMaxTaps = 64;   // C*R*S limit: the taps of one pixel live in registers
constexpr int kSmallCGroup = 64;     // output channels per block (grid.y), staged in shared memory
constexpr int kSmallCThreads = 256;  // output pixels per block (grid.x)
constexpr int kSmallCStep = 4;       // channels computed together: four independent FMA chains

// grid = (ceil(N*P*Q / 256), ceil(K / 64)), block = 256.
// Block (bx, by) computes output pixels m = bx*256 .. +255 (m = (n, p, q)
// flattened, the GEMM row of conv2d.cuh) for channels k0 = by*64 .. k0+63.
// Thread t owns pixel m = bx*256 + t: consecutive threads hold consecutive q,
// so each channel's store of a warp is 32 consecutive floats (coalesced)
// wherever the warp does not straddle an image row boundary.
// Shared memory: ws[64][kTaps] (kTaps <= 64: 16 KB at most) and bs[64]; every
// lane of a warp reads the same ws element at the same time (a broadcast, no
// bank conflicts), as float4 because kTaps is a multiple of 4.
template <int kTaps>
__global__ void __launch_bounds__(kSmallCThreads)
conv2d_small_c(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
               float* __restrict__ y, ConvShape g, int relu) {
    __shared__ __align__(16) float ws[kSmallCGroup][kTaps];
    __shared__ float bs[kSmallCGroup];
    const int t = threadIdx.x;
    const int CRS = g.C * g.R * g.S, PQ = g.P * g.Q, M = g.N * PQ;
    const int k0 = blockIdx.y * kSmallCGroup, group = min(kSmallCGroup, g.K - k0);

    // Stage the group's filters, zero past C*R*S and past K, so the unrolled
    // tap loop needs no tests and a partial last quad of channels reads
    // zeros (only its stores are guarded). Consecutive
    // threads read consecutive taps of one filter row of w (coalesced).
    for (int e = t; e < kSmallCGroup * kTaps; e += kSmallCThreads) {
        const int kl = e / kTaps, i = e % kTaps;
        smem_store(&ws[kl][i], (kl < group && i < CRS) ? __ldg(&w[(k0 + kl) * CRS + i]) : 0.f);
    }
    if (t < kSmallCGroup) smem_store(&bs[t], (b && t < group) ? __ldg(&b[k0 + t]) : 0.f);
    __syncthreads();  // the only barrier: every thread passes it before any may leave

    const int m = blockIdx.x * kSmallCThreads + t;
    if (m >= M) return;
    const int n = m / PQ, pq = m % PQ, p = pq / g.Q, q = pq % g.Q;
    const int ih0 = p * g.sh - g.ph, iw0 = q * g.sw - g.pw;
    float* yp = y + (n * g.K + k0) * PQ + pq;  // channel k0 + kl of this pixel: yp[kl * PQ]

    // A window wholly in the padding: no taps to load, the sum is the bias.
    if (ih0 >= g.H || ih0 + g.R <= 0 || iw0 >= g.W || iw0 + g.S <= 0) {
        for (int kl = 0; kl < group; ++kl) {
            const float bias = smem_load(&bs[kl]);
            yp[kl * PQ] = relu ? fmaxf(bias, 0.f) : bias;
        }
        return;
    }

    // Gather tap i = (c, r, s) in GEMM-depth order, walking (c, r, s) and the
    // x offset incrementally: the loop is unrolled (tap[] stays in registers),
    // R and S are runtime values, so a carry is two compares, not a division.
    float tap[kTaps];
    {
        int c = 0, r = 0, s = 0;
        // x offset of tap (c, r, s). Unsigned: the walk runs on past the last
        // tap and starts left of or above the image, where only wrapping
        // arithmetic is defined; it is used only where the tap is inside.
        unsigned off = unsigned(n * g.C * g.H + ih0) * unsigned(g.W) + unsigned(iw0);
#pragma unroll
        for (int i = 0; i < kTaps; ++i) {
            const bool inside = c < g.C && unsigned(ih0 + r) < unsigned(g.H) && unsigned(iw0 + s) < unsigned(g.W);
            tap[i] = inside ? __ldg(&x[off]) : 0.f;
            ++s, ++off;
            if (s == g.S) s = 0, ++r, off += g.W - g.S;
            if (r == g.R) r = 0, ++c, off += (g.H - g.R) * g.W;
        }
    }

    // Four channels at a time: four independent accumulation chains, and each
    // float4 read of ws feeds four FMAs. yp walks along with kl: indexing
    // yp[(kl + j) * PQ] instead cost conv1_1's kTaps = 32 instance a spill at
    // ptxas's chosen 64 registers (sm_90).
    static_assert(kTaps % 4 == 0, "filter rows must be whole float4s");
    const float4* ws4 = as_vector<const float4>(&ws[0][0]);
    for (int kl = 0; kl < group; kl += kSmallCStep, yp += kSmallCStep * PQ) {
        float acc[kSmallCStep];
#pragma unroll
        for (int j = 0; j < kSmallCStep; ++j) acc[j] = smem_load(&bs[kl + j]);
#pragma unroll
        for (int i = 0; i < kTaps; i += 4) {
#pragma unroll
            for (int j = 0; j < kSmallCStep; ++j) {
                const float4 wv = smem_load(&ws4[(kl + j) * (kTaps / 4) + i / 4]);
                acc[j] = fmaf(wv.x, tap[i], acc[j]);
                acc[j] = fmaf(wv.y, tap[i + 1], acc[j]);
                acc[j] = fmaf(wv.z, tap[i + 2], acc[j]);
                acc[j] = fmaf(wv.w, tap[i + 3], acc[j]);
            }
        }
#pragma unroll
        for (int j = 0; j < kSmallCStep; ++j)
            if (kl + j < group) yp[j * PQ] = relu ? fmaxf(acc[j], 0.f) : acc[j];
    }
}

}  // namespace fcn
