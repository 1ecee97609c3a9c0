// softmax.cuh: softmax and argmax over the channels of a score map.
//
//   probs[n, c, y, x]  = exp(x[n, c, y, x] - max_c) / sum_c' exp(x[n, c', y, x] - max_c)
//   labels[n, y, x]    = the lowest c with x[n, c, y, x] == max_c   (torch.argmax)
//
// Layout: x and probs are N x C x H x W float32, labels N x H x W int32. In
// NCHW the H*W pixels of one channel are contiguous and one pixel's channels
// lie H*W floats apart, so the reduction runs along the strided axis: one
// thread owns one pixel (or four) and walks its channels, while the 32 threads
// of a warp read 32 consecutive pixels of the same channel (coalesced). No
// thread talks to another: no shared memory, no barriers, no shuffles.
//
// One kernel template, channel_softmax<kPixels, kProbs, kLabels>, gives the
// three ops (softmax: probs only; argmax: labels only; softmax_argmax: both)
// in two variants:
//   scalar (kPixels = 1): one pixel per thread, any H*W.
//   float4 (kPixels = 4): four consecutive pixels per thread, 16-byte loads
//     and stores; H*W must be a multiple of 4 and x 16-byte aligned (so every
//     group of four starts on a 16-byte boundary in every channel).
//
// The max and the sum are found in ONE pass (online softmax: the running sum
// is rescaled whenever the running max grows), so argmax and the statistics
// read x once; softmax reads x a second time to write the probabilities.
// Every exponent is <= 0, so logits of any magnitude (+-1e4 and beyond) stay
// finite. Non-finite logits give torch's results exactly: a NaN anywhere in a
// pixel makes all its probabilities NaN and is its argmax (the first NaN);
// +inf makes the pixel's probabilities NaN (torch computes exp(inf - inf));
// -inf contributes 0, and a pixel of only -inf is NaN with label 0.
#pragma once
#include "common.cuh"

namespace fcn {

constexpr int kSoftmaxThreads = 256;

// The per-pixel running state of the online pass.
struct RunningMax {
    float max = -INFINITY;
    float sum = 0.f;  // sum of exp(x_c - max) over the channels seen so far
    int label = 0;
};

// Folds channel c's value v into the state. kSum = false (argmax alone)
// skips the exponentials.
template <bool kSum>
__device__ __forceinline__ void fold_channel(RunningMax& st, float v, int c) {
    // Strictly greater keeps the lowest index on ties; the first NaN wins
    // and then stays, because nothing compares greater than NaN.
    if (v > st.max || (isnan(v) && !isnan(st.max))) {
        // (v - v) is 0 for a finite v and NaN for +inf or NaN, which is what
        // torch's exp(max - max) term contributes for such a maximum.
        if (kSum) st.sum = st.sum * expf(st.max - v) + (1.f + (v - v));
        st.max = v;
        st.label = c;
    } else if (kSum) {
        // v == max also covers -inf == -inf, whose exp(v - max) would be a
        // premature NaN: it counts 1 now and is scaled to 0 once a finite max
        // arrives (exp(-inf - finite) = 0); a pixel of only -inf ends NaN below.
        st.sum += v == st.max ? 1.f : expf(v - st.max);
    }
}

// Thread g owns pixels p .. p + kPixels - 1 of image n, where g enumerates
// the groups of kPixels pixels image by image: groups = N * H*W / kPixels.
// grid = ceil(groups / 256) x 1, block = 256. probs / labels may be null
// when kProbs / kLabels is false.
template <int kPixels, bool kProbs, bool kLabels>
__global__ void __launch_bounds__(kSoftmaxThreads)
channel_softmax(const float* __restrict__ x, float* __restrict__ probs, int* __restrict__ labels, int groups, int C,
                int HW) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= groups) return;
    const int groups_per_image = HW / kPixels;
    const int n = g / groups_per_image;
    const int p = (g - n * groups_per_image) * kPixels;
    const int base = n * C * HW + p;  // channel 0 of the first pixel; channel c is c * HW further

    // Channel c of the kPixels pixels is vector c * stride of xs (and of ps): the alignment test, which the
    // emulator runs where lane_vectors is called, once per thread, not per channel.
    const int stride = HW / kPixels;
    const auto xs = lane_vectors<kPixels>(x + base);
    RunningMax st[kPixels];
    float v[kPixels];
    // The loads of consecutive channels are independent, so unrolling lets
    // several be in flight while the running state waits on each.
#pragma unroll 4
    for (int c = 0; c < C; ++c) {
        unpack_lanes(__ldg(xs + c * stride), v);
#pragma unroll
        for (int i = 0; i < kPixels; ++i) fold_channel<kProbs>(st[i], v[i], c);
    }

    if (kLabels) {
        int label[kPixels];
#pragma unroll
        for (int i = 0; i < kPixels; ++i) label[i] = st[i].label;
        *lane_vectors<kPixels>(labels + n * HW + p) = pack_lanes(label);
    }
    if (kProbs) {
        // A pixel of only -inf has max = -inf and exp(-inf - -inf) = NaN
        // below, as torch; every other pixel has sum >= 1 (its max counts 1).
        float inv_sum[kPixels];
#pragma unroll
        for (int i = 0; i < kPixels; ++i) inv_sum[i] = 1.f / st[i].sum;
        // Second read of x: on a GPU it mostly hits L2, which the first pass
        // just filled with these bytes.
        const auto ps = lane_vectors<kPixels>(probs + base);
#pragma unroll 4
        for (int c = 0; c < C; ++c) {
            unpack_lanes(__ldg(xs + c * stride), v);
#pragma unroll
            for (int i = 0; i < kPixels; ++i) v[i] = expf(v[i] - st[i].max) * inv_sum[i];
            ps[c * stride] = pack_lanes(v);
        }
    }
}

}  // namespace fcn
