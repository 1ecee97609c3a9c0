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
// training step draws a fresh mask. Element i of x sits at g = offset + i in
// the batch; counter = (g / 4 mod 2^32, g / 4 / 2^32, 0, 0): one call yields
// the four words of elements 4j .. 4j+3. The offset lets a data-parallel rank
// holding images k.. of a batch draw the very masks a one-process run draws
// for them (offset = k * the elements of one image); 0 otherwise.
//
//   dropout: one thread per Philox counter (4 elements), any n and offset.
//     The backward pass is the same kernel applied to the gradient.
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

// grid = ceil(ceil((offset % 4 + n) / 4) / 256), block = 256; thread t owns
// Philox counter j = offset / 4 + t, the batch elements 4j .. 4j+3, of which
// those in offset .. offset + n - 1 are x's (all four but at x's two ends).
__global__ void __launch_bounds__(kDropoutThreads)
dropout(const float* __restrict__ x, float* __restrict__ y, int n, unsigned long long offset, unsigned seed,
        unsigned step, unsigned threshold, float scale) {
    const unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    const int lead = int(offset % 4);  // x[0]'s word within its counter
    // Unsigned: lead + n + 3 <= 2^31 + 5 cannot wrap, where int arithmetic overflows for n near INT_MAX.
    if (t >= (unsigned(lead) + unsigned(n) + 3u) / 4u) return;
    const unsigned long long j = offset / 4 + t;
    const Philox4 r = philox4x32_10({{unsigned(j), unsigned(j >> 32), 0u, 0u}}, seed, step);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        const long long i = 4ll * t + e - lead;
        if (i >= 0 && i < n) y[i] = r.v[e] >= threshold ? __ldg(x + i) * scale : 0.f;
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
