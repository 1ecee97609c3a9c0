// preprocess.cuh: the reference's input transform, in one kernel.
//
//   out[n, 0, y, x] = img[n, y, x, 2] - mean_b     (B)
//   out[n, 1, y, x] = img[n, y, x, 1] - mean_g     (G)
//   out[n, 2, y, x] = img[n, y, x, 0] - mean_r     (R)
//
// img is N x H x W x 3 uint8 RGB (interleaved, HWC), out N x 3 x H x W
// float32 (planar, NCHW), values in 0..255 minus the mean (no scaling).
//   preprocess_rgb_to_bgr: one thread per pixel. The reads are bytes at
//     stride 3, so a warp reads 96 contiguous bytes; the three writes are
//     coalesced planes. Any size and any alignment of img.
#pragma once
#include <cstdint>

#include "common.cuh"

namespace fcn {

constexpr int kPreprocessThreads = 256;

// Thread g owns pixel g of the N * H*W pixels (image n = g / HW).
// grid = ceil(N * HW / 256) x 1, block = 256.
__global__ void __launch_bounds__(kPreprocessThreads)
preprocess_rgb_to_bgr(const uint8_t* __restrict__ img, float* __restrict__ out, int pixels, int HW, float mean_b,
                      float mean_g, float mean_r) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= pixels) return;
    const int n = g / HW;
    const int p = g - n * HW;
    const uint8_t* rgb = img + 3 * g;
    float* o = out + 3 * n * HW + p;
    o[0] = float(rgb[2]) - mean_b;
    o[HW] = float(rgb[1]) - mean_g;
    o[2 * HW] = float(rgb[0]) - mean_r;
}

}  // namespace fcn
