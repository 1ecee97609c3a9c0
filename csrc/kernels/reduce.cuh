// reduce.cuh: sums, the first rung for anything that combines threads.
//
//   block_sum: each block reduces a grid-strided slice through shared memory
//     (a tree of __syncthreads-separated halvings) and writes one partial;
//     a second launch of one block sums the partials. No atomics, so the
//     result has the same bits every run.
//   warp_segment_sum<mode>: sums of `width` consecutive floats (width 8, 16 or
//     32) with warp shuffles only, one variant per shuffle kind:
//       xor  butterfly: every lane ends with the sum;
//       down lane i adds lane i + d: the first lane of the segment ends with it;
//       up   lane i adds lane i - d: the last lane ends with it;
//       idx  lane i adds lane (i + d) mod width: every lane ends with it.
//     Lanes whose source is outside the segment keep their own value (PTX
//     semantics), which is why down and up leave the sum at one end.
//   warp_shuffle: one raw shuffle per lane, to check those semantics.
#pragma once
#include "common.cuh"

namespace fcn {

enum ShuffleKind { kShflIdx = 0, kShflUp = 1, kShflDown = 2, kShflXor = 3 };

// block = kBlockSumThreads threads, grid = number of partials.
constexpr int kBlockSumThreads = 256;
__global__ void block_sum(const float* __restrict__ x, float* __restrict__ partial, int n) {
    __shared__ float s[kBlockSumThreads];
    float v = 0.f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) v += x[i];
    const float sum = block_tree_sum<kBlockSumThreads>(s, v);
    if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

__device__ __forceinline__ float shuffle(ShuffleKind kind, float v, int arg, int width) {
    switch (kind) {
        case kShflIdx: return __shfl_sync(0xffffffffu, v, arg, width);
        case kShflUp: return __shfl_up_sync(0xffffffffu, v, unsigned(arg), width);
        case kShflDown: return __shfl_down_sync(0xffffffffu, v, unsigned(arg), width);
        default: return __shfl_xor_sync(0xffffffffu, v, arg, width);
    }
}

// One thread per input float; n is a multiple of 32 so every warp is whole
// (all 32 lanes must take part in a full-mask shuffle).
// grid = n / 256 (rounded up) x 1, block = 256.
template <ShuffleKind kKind>
__global__ void warp_segment_sum(const float* __restrict__ x, float* __restrict__ sums, int n, int width) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int lane_in_segment = (threadIdx.x % kWarpSize) % width;
    float v = i < n ? x[i] : 0.f;
    for (int d = width / 2; d > 0; d /= 2) {
        const int arg = kKind == kShflIdx ? lane_in_segment + d : d;  // idx wraps inside the segment
        v += shuffle(kKind, v, arg, width);
    }
    const int owner = kKind == kShflUp ? width - 1 : 0;  // the lane that is sure to hold the sum
    if (i < n && lane_in_segment == owner) sums[i / width] = v;
}

// y[i] = the value lane i receives from one shuffle. n is a multiple of 32.
__global__ void warp_shuffle(const float* __restrict__ x, float* __restrict__ y, int n, int kind, int arg,
                             int width) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const float v = i < n ? x[i] : 0.f;
    const float r = shuffle(ShuffleKind(kind), v, arg, width);
    if (i < n) y[i] = r;
}

}  // namespace fcn
