// dropout.cuh: element-wise dropout with a counter-based RNG, so no mask is
// ever stored: the backward pass recomputes it from (seed, step).
//
//   y[i] = keep(i) ? x[i] / (1 - p) : 0,   keep(i) = philox(i) >= threshold
//   threshold = floor(p * 2^32) (computed on the host), so P(keep) = 1 - p
//   to within 2^-32.
//
// philox4x32_10 is Random123's Philox4x32 with 10 rounds (Salmon et al.,
// SC'11): a bijection of a 128-bit counter under a 64-bit key built from
// 32x32->64-bit multiplies and xors, so it gives the same bits on a GPU and
// in the emulator (and in the tests' NumPy twin). Key = (seed, step): every
// training step draws a fresh mask; counter = (i / 4, 0, 0, 0): one call
// yields the four words of elements 4j .. 4j+3.
//
//   dropout: one thread per 4 elements (one Philox call), any n. The
//     backward pass is the same kernel applied to the gradient.
//   philox_probe: raw Philox outputs for given counters and keys, for the
//     known-answer tests.
#pragma once
#include "common.cuh"

namespace fcn {

struct Philox4 {
    unsigned v[4];
};

__host__ __device__ __forceinline__ Philox4 philox4x32_10(Philox4 ctr, unsigned k0, unsigned k1) {
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) k0 += 0x9E3779B9u, k1 += 0xBB67AE85u;  // the Weyl key schedule
        const unsigned long long p0 = 0xD2511F53ull * ctr.v[0], p1 = 0xCD9E8D57ull * ctr.v[2];
        const unsigned hi0 = unsigned(p0 >> 32), lo0 = unsigned(p0), hi1 = unsigned(p1 >> 32), lo1 = unsigned(p1);
        ctr = {{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
    }
    return ctr;
}

constexpr int kDropoutThreads = 256;

// grid = ceil(ceil(n / 4) / 256), block = 256; thread j owns elements
// 4j .. 4j+3 (the four words of Philox counter j).
__global__ void __launch_bounds__(kDropoutThreads)
dropout(const float* __restrict__ x, float* __restrict__ y, int n, unsigned seed, unsigned step, unsigned threshold,
        float scale) {
    const unsigned j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= unsigned(ceil_div(n, 4))) return;
    const Philox4 r = philox4x32_10({{j, 0u, 0u, 0u}}, seed, step);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        const int i = int(j * 4 + e);
        if (i < n) y[i] = r.v[e] >= threshold ? __ldg(x + i) * scale : 0.f;
    }
}

// One thread per vector: in[6j .. 6j+5] = counter (4 words), key (2 words);
// out[4j .. 4j+3] = Philox4x32-10 of it. grid = ceil(n / 256), block = 256.
__global__ void philox_probe(const unsigned* __restrict__ in, unsigned* __restrict__ out, int n) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    const unsigned* a = in + 6 * j;
    const Philox4 r = philox4x32_10({{a[0], a[1], a[2], a[3]}}, a[4], a[5]);
#pragma unroll
    for (int e = 0; e < 4; ++e) out[4 * j + e] = r.v[e];
}

}  // namespace fcn
