// scan.cuh: the exclusive prefix sum of n ints, out[i] = in[0] + ... + in[i-1], in place. The radix sort
// (sort.cuh) places its keys with it, and the dense CRF numbers its lattice vertices with it.
//
// Layout: one int array of n; the sums must fit an int (fcn_cuda.basics.exclusive_scan takes counts >= 0
// whose total does).
//
// One variant, in three kinds of launches (ops/scan.cu, launch_exclusive_scan):
//   scan_runs        each thread sums one run of kScanItems consecutive ints;
//   (the run sums)   scanned recursively by the same three launches, until they fit one block;
//   scan_runs_apply  each thread rewrites its run from its run's offset;
//   scan_block       n <= kScanTile: one block scans it all, a warp shuffle scan and shared warp sums.
// scan_runs and scan_runs_apply never synchronise, so the emulator runs them as plain loops. Integer sums do
// not depend on their order: the result is exact on every run and for any number of emulator workers.
#pragma once
#include "common.cuh"

namespace fcn {

constexpr int kScanThreads = 256;
constexpr int kScanItems = 16;                         // consecutive ints per thread
constexpr int kScanTile = kScanThreads * kScanItems;  // what one block scans

// One thread per run t of kScanItems ints; grid ceil(runs / 256). sums[t] = the run's sum.
__global__ void __launch_bounds__(kScanThreads)
scan_runs(const int* __restrict__ data, int n, int* __restrict__ sums) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const long long begin = (long long)t * kScanItems;
    if (begin >= n) return;
    const int end = int(min((long long)n, begin + kScanItems));
    int s = 0;
    for (int i = int(begin); i < end; ++i) s += data[i];
    sums[t] = s;
}

// One thread per run, as scan_runs; offsets = the exclusive scan of the run sums. data becomes its
// exclusive scan.
__global__ void __launch_bounds__(kScanThreads)
scan_runs_apply(int* __restrict__ data, int n, const int* __restrict__ offsets) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const long long begin = (long long)t * kScanItems;
    if (begin >= n) return;
    const int end = int(min((long long)n, begin + kScanItems));
    int run = offsets[t];
    for (int i = int(begin); i < end; ++i) {
        const int v = data[i];
        data[i] = run;
        run += v;
    }
}

// One block of kScanThreads for n <= kScanTile ints: thread k scans ints [k*kScanItems, (k+1)*kScanItems);
// a shuffle scan within each warp and the 8 warp sums add the runs before it. *total (when given) = the
// sum of all n.
__global__ void __launch_bounds__(kScanThreads) scan_block(int* data, int n, int* total) {
    __shared__ int warp_sums[kScanThreads / kWarpSize];
    const int begin = threadIdx.x * kScanItems, end = min(n, begin + kScanItems);
    int own = 0;
    for (int i = begin; i < end; ++i) own += data[i];
    const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
    int inclusive = own;
#pragma unroll
    for (int offset = 1; offset < kWarpSize; offset *= 2) {
        const int up = __shfl_up_sync(0xffffffffu, inclusive, offset);
        if (lane >= offset) inclusive += up;
    }
    if (lane == kWarpSize - 1) smem_store(&warp_sums[warp], inclusive);
    __syncthreads();
    int run = inclusive - own, sum = 0;
#pragma unroll
    for (int w = 0; w < kScanThreads / kWarpSize; ++w) {
        const int sum_w = smem_load(&warp_sums[w]);
        run += w < warp ? sum_w : 0;
        sum += sum_w;
    }
    for (int i = begin; i < end; ++i) {
        const int v = data[i];
        data[i] = run;
        run += v;
    }
    if (total && threadIdx.x == 0) *total = sum;
}

}  // namespace fcn
