// pool_backward.cuh: the gradient of max_pool2d (pool.cuh) from its argmax.
//
//   dx[plane][h][w] = sum of dy[plane][oh][ow] over the windows (oh, ow) that
//                     contain (h, w) and whose argmax indices[plane][oh][ow]
//                     is h * W + w
//
// Layout: dy and indices N*C planes of Ho x Wo (float32 / int32), dx N*C
// planes of H x W. Windows overlap when the kernel exceeds the stride, so an
// input can receive several gradients: scattering them would need float
// atomics and give run-to-run different sums. Gather form instead:
//
//   max_pool2d_backward: one thread per input element walks the (at most
//     ceil(kh / sh) x ceil(kw / sw)) windows that contain it, in row-major
//     order, and adds the gradients of those that chose it. No atomics, the
//     same bits every run, every dx element written (zeros included). An
//     index that lies outside its own window (not from max_pool2d with this
//     geometry) matches no input and is dropped; it is never dereferenced.
#pragma once
#include "common.cuh"

namespace fcn {

constexpr int kPoolBackwardThreads = 256;

// grid = ceil(planes * H * W / 256), block = 256; thread i owns dx element i
// (w fastest: a warp reads neighbouring windows of the same dy rows).
__global__ void __launch_bounds__(kPoolBackwardThreads)
max_pool2d_backward(const float* __restrict__ dy, const int* __restrict__ indices, float* __restrict__ dx,
                    int total, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw) {
    const unsigned t = blockIdx.x * blockDim.x + threadIdx.x;  // unsigned: total may be close to INT_MAX
    if (t >= unsigned(total)) return;
    const int i = int(t);
    const int w = i % W, h = (i / W) % H, plane = i / (W * H);
    // Windows oh with oh*sh <= h < oh*sh + kh, clipped to the output.
    const int oh0 = h < kh ? 0 : (h - kh) / sh + 1, oh1 = min(h / sh, Ho - 1);
    const int ow0 = w < kw ? 0 : (w - kw) / sw + 1, ow1 = min(w / sw, Wo - 1);
    const int self = h * W + w, base = plane * Ho * Wo;
    float acc = 0.f;
    for (int oh = oh0; oh <= oh1; ++oh)
        for (int ow = ow0; ow <= ow1; ++ow) {
            const int o = base + oh * Wo + ow;
            if (__ldg(indices + o) == self) acc += __ldg(dy + o);
        }
    dx[i] = acc;
}

}  // namespace fcn
