// metrics.cuh: the confusion matrix that every segmentation metric comes from.
//
//   hist[gt][pred] += 1 for every pixel with 0 <= gt < C (gt == 255, VOC's
//   "ignore", and any other out-of-range label are skipped; a prediction
//   outside 0..C-1 is counted in no cell either).
// Layout: gt and pred are n int32 labels each; hist is C x C uint64.
//
//   confusion_matrix: each block counts its grid-strided pixels into a
//     C x C histogram in shared memory (C <= 64 so it fits in 32 KB of ints),
//     then adds its non-zero cells to the global 64-bit histogram. Shared
//     atomics keep the contended counting on-chip; the global atomics are
//     integer adds, so the result is exact and independent of block order.
#pragma once
#include "common.cuh"

namespace fcn {

constexpr int kMaxMetricClasses = 64;

// grid = min(ceil(n / 256), 256) blocks, block = 256, dynamic smem = C*C ints.
__global__ void __launch_bounds__(256)
confusion_matrix(const int* __restrict__ gt, const int* __restrict__ pred, int n, int C,
                 unsigned long long* __restrict__ hist) {
    FCN_DYNAMIC_SMEM(unsigned, local);
    for (int i = threadIdx.x; i < C * C; i += blockDim.x) smem_store(&local[i], 0u);
    __syncthreads();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const int g = gt[i], p = pred[i];
        if (unsigned(g) < unsigned(C) && unsigned(p) < unsigned(C)) atomicAdd(&local[g * C + p], 1u);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < C * C; i += blockDim.x) {
        const unsigned count = smem_load(&local[i]);
        if (count) atomicAdd(&hist[i], (unsigned long long)count);
    }
}

}  // namespace fcn
