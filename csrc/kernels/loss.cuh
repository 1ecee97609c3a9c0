// loss.cuh: FCN's training loss, per-pixel softmax cross-entropy, and its
// gradient with respect to the scores, from one pass over the score map.
//
//   scores: N x C x H x W float32   labels: N x H x W int32 (0 <= l < C, or ignore)
//   weight: C class weights, or nullptr for all 1 (the reference)
//   loss  = sum over pixels with l != ignore of  weight[l] * (logsumexp_c(s) - s[l])
//           (then divided on the host by N, the reference's normalization,
//            or by the valid pixels' summed weight: their count when unweighted)
//   grad[n][c][p] = weight[l] * (softmax(s)[c] - [c == l]) * inv_divisor, 0 at ignored pixels
//
// softmax_xent: one thread per pixel walks its C channels (a warp reads 32
//   consecutive pixels of one channel: coalesced). The max and the sum of
//   exponentials come from one online pass (the sum is rescaled when the max
//   grows), so every exponent is <= 0 and logits of +-1e4 stay finite; a
//   second pass writes the gradient. The block sums its pixels' losses with a
//   fixed halving tree and writes one partial; reduce.cu's block_sum adds the
//   partials in a fixed order. No atomics: the same bits every run.
#pragma once
#include "common.cuh"

namespace fcn {

constexpr int kXentThreads = 256;

// grid = ceil(N * HW / 256), block = 256; thread i owns pixel i = n * HW + p.
__global__ void __launch_bounds__(kXentThreads)
softmax_xent(const float* __restrict__ scores, const int* __restrict__ labels, const float* __restrict__ weight,
             float* __restrict__ grad, float* __restrict__ partial, int pixels, int C, int HW, int ignore,
             float inv_divisor) {
    __shared__ float s[kXentThreads];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;  // Python leaves a block of int headroom
    float loss = 0.f;
    if (i < pixels) {
        const int n = i / HW, p = i % HW;
        const float* x = scores + n * C * HW + p;
        float* g = grad + n * C * HW + p;
        const int label = __ldg(labels + i);
        if (label == ignore) {
            for (int c = 0; c < C; ++c) g[c * HW] = 0.f;
        } else {
            float m = -INFINITY, sum = 0.f;
            for (int c = 0; c < C; ++c) {
                const float v = __ldg(x + c * HW);
                if (v > m) {
                    sum = sum * expf(m - v) + 1.f;  // expf(-inf) = 0 on the first channel
                    m = v;
                } else {
                    sum += expf(v - m);
                }
            }
            const float w = weight ? __ldg(weight + label) : 1.f;
            const float inv_sum = 1.f / sum, scale = w * inv_divisor;
            for (int c = 0; c < C; ++c) {
                const float prob = expf(__ldg(x + c * HW) - m) * inv_sum;
                g[c * HW] = (c == label ? prob - 1.f : prob) * scale;
            }
            loss = w * (logf(sum) + (m - __ldg(x + label * HW)));
        }
    }
    const float sum = block_tree_sum<kXentThreads>(s, loss);
    if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

}  // namespace fcn
