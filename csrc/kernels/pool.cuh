// pool.cuh: max pooling, NCHW float32, no padding (FCN's pool1..pool5 are
// kernel 2, stride 2, ceil mode).
//
//   max_pool2d: one thread per output element scans its kh x kw window,
//     clipped to the input: in ceil mode the last window may hang over the
//     bottom/right edge (the Python layer sizes the output with PyTorch's rule,
//     so every window starts inside the input). Optionally it also writes the
//     argmax as an int32 flat index h * W + w within its (n, c) plane, as
//     torch's return_indices does; the backward pass scatters through it.
//     Ties keep the first maximum in row-major scan order; a NaN beats every
//     number and a later NaN beats an earlier one (PyTorch's
//     `val > max || isnan(val)`), so NaN propagates with torch's index.
#pragma once
#include "common.cuh"

namespace fcn {

constexpr int kPoolThreads = 256;

// grid = ceil(planes * Ho * Wo / 256), block = 256; thread i owns output i
// (ow fastest, so a warp reads neighbouring windows of the same rows).
// indices may be null.
__global__ void max_pool2d(const float* __restrict__ x, float* __restrict__ y, int* __restrict__ indices,
                           int total, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw) {
    // unsigned: the last block may run past total, which can be close to INT_MAX
    const unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= unsigned(total)) return;
    const int i = int(t);
    const int ow = i % Wo, oh = (i / Wo) % Ho, plane = i / (Wo * Ho);
    const int h0 = oh * sh, w0 = ow * sw;
    const int h1 = min(h0 + kh, H), w1 = min(w0 + kw, W);
    const float* p = x + plane * H * W;
    float best = -INFINITY;
    int arg = h0 * W + w0;  // torch's index when the whole window is -inf
    for (int h = h0; h < h1; ++h) {
        for (int w = w0; w < w1; ++w) {
            const float v = p[h * W + w];
            if (v > best || v != v) {  // v != v: NaN
                best = v;
                arg = h * W + w;
            }
        }
    }
    y[i] = best;
    if (indices != nullptr) indices[i] = arg;
}

}  // namespace fcn
