// crop_backward.cuh: gradients of crop.cuh's skip connections, NCHW float32.
//
//   crop_backward: crop_add's gradient for b: db = g inside the window
//     [oy, oy+H) x [ox, ox+W) of b, 0 elsewhere. One thread per element of
//     db, so the zeros are written by the same pass (no separate memset).
//   score_feat_grad: score_crop_add's gradient for feat:
//     dfeat[n][c][y][x] = scale * sum_k w[k][c] * g[n][k][y-oy][x-ox] inside
//     the window, 0 outside: a 1x1 transposed convolution onto the window.
//     One thread per element of dfeat walks the K classes (21 for VOC; w's
//     column c is the same for a whole warp: broadcast loads).
// The weight and bias gradients of the score layer are reductions over the
// pixels: conv2d_backward.cuh's conv2d_grad_weight_igemm (a 1x1 filter with
// the crop offset as negative padding) and bias_grad.
#pragma once
#include "common.cuh"

namespace fcn {

constexpr int kCropBackwardThreads = 256;

// grid = ceil(planes * Hb * Wb / 256), block = 256; thread i owns db element i.
__global__ void crop_backward(const float* __restrict__ g, float* __restrict__ db, int total, int H, int W, int Hb,
                              int Wb, int oy, int ox) {
    const unsigned t = blockIdx.x * blockDim.x + threadIdx.x;  // unsigned: total may be close to INT_MAX
    if (t >= unsigned(total)) return;
    const int i = int(t);
    const int y = (i / Wb) % Hb - oy, x = i % Wb - ox, plane = i / (Wb * Hb);
    db[i] = unsigned(y) < unsigned(H) && unsigned(x) < unsigned(W) ? __ldg(g + (plane * H + y) * W + x) : 0.f;
}

// grid = ceil(N * C * Hf * Wf / 256), block = 256; thread i owns dfeat element i.
__global__ void __launch_bounds__(kCropBackwardThreads)
score_feat_grad(const float* __restrict__ g, const float* __restrict__ w, float* __restrict__ dfeat, int total,
                int K, int C, int H, int W, int Hf, int Wf, int oy, int ox, float scale) {
    const unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= unsigned(total)) return;
    const int i = int(t);
    const int y = (i / Wf) % Hf - oy, x = i % Wf - ox;
    const int c = (i / (Wf * Hf)) % C, n = i / (Wf * Hf * C);
    float acc = 0.f;
    if (unsigned(y) < unsigned(H) && unsigned(x) < unsigned(W)) {
        const float* gp = g + n * K * H * W + y * W + x;
        for (int k = 0; k < K; ++k) acc = fmaf(__ldg(w + k * C + c), __ldg(gp + k * H * W), acc);
    }
    dfeat[i] = scale * acc;
}

}  // namespace fcn
