// crop.cuh: FCN's skip connections: crop a larger map to a smaller one and add.
// NCHW float32.
//
//   crop_add: out = a + b[:, :, oy:oy+H, ox:ox+W]; one thread per output.
//   score_crop_add: out = up + scale * (w . feat[:, :, oy:oy+H, ox:ox+W]) + bias,
//     the 1x1 score convolution (score_pool4, score_pool3; K classes from C
//     channels) evaluated only on the window that the crop keeps, fused with
//     the crop and the sum: neither the full score map nor its crop is ever
//     written. One thread per (pixel, 8 classes): each feature value it loads
//     feeds 8 FMAs; the weights it reads are the same for the whole warp
//     (one broadcast load). Any K (the last group is partly idle), any C.
#pragma once
#include "common.cuh"

namespace fcn {

constexpr int kCropThreads = 256;
constexpr int kScoreClasses = 8;  // classes per thread: 8 accumulators stay in registers

// grid = ceil(planes * H * W / 256), block = 256; thread i owns output i.
__global__ void crop_add(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ out,
                         int total, int H, int W, int Hb, int Wb, int oy, int ox) {
    const unsigned t = blockIdx.x * blockDim.x + threadIdx.x;  // unsigned: total may be close to INT_MAX
    if (t >= unsigned(total)) return;
    const int i = int(t);
    const int x = i % W, y = (i / W) % H, plane = i / (W * H);
    out[i] = a[i] + b[(plane * Hb + y + oy) * Wb + x + ox];
}

// grid = (ceil(H * W / 256), ceil(K / 8), N), block = 256. Thread (p, g, n)
// computes classes 8g .. 8g+7 of pixel p of image n.
__global__ void __launch_bounds__(kCropThreads)
score_crop_add(const float* __restrict__ up, const float* __restrict__ feat, const float* __restrict__ w,
               const float* __restrict__ bias, float* __restrict__ out, int K, int C, int H, int W, int Hf,
               int Wf, int oy, int ox, float scale) {
    const unsigned p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= unsigned(H * W)) return;
    const int y = int(p) / W, x = int(p) % W;
    const int k0 = blockIdx.y * kScoreClasses, n = blockIdx.z;
    const int plane = Hf * Wf;
    const float* f = feat + n * C * plane + (y + oy) * Wf + x + ox;
    // Classes past K read row K - 1 (in bounds) and are never written: no
    // branch in the inner loop.
    const float* wk[kScoreClasses];
#pragma unroll
    for (int j = 0; j < kScoreClasses; ++j) wk[j] = w + min(k0 + j, K - 1) * C;

    float acc[kScoreClasses] = {};
    for (int c = 0; c < C; ++c) {
        const float v = __ldg(f + c * plane);
#pragma unroll
        for (int j = 0; j < kScoreClasses; ++j) acc[j] = fmaf(__ldg(wk[j] + c), v, acc[j]);
    }
#pragma unroll
    for (int j = 0; j < kScoreClasses; ++j) {
        const int k = k0 + j;
        if (k >= K) break;
        const int o = ((n * K + k) * H + y) * W + x;
        out[o] = up[o] + (bias != nullptr ? __ldg(bias + k) : 0.f) + scale * acc[j];
    }
}

}  // namespace fcn
