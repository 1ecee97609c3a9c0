// elementwise.cuh: the barrier-free rung of the ladder.
//
//   axpy: y = a * x + y over n floats, in two variants:
//     axpy_scalar: one float per thread per step, grid-stride; any x and y.
//     axpy_float4: each thread moves 16 bytes per load (float4), grid-stride
//       over n / 4 vectors; a scalar tail handles n % 4. x and y must be
//       16-byte aligned: fresh CuPy and NumPy allocations are, a view such as
//       x[1:] is not (ops picks axpy_scalar for it).
// No thread ever waits for another, which is the case the emulator runs as
// a plain loop (no fiber switches): its speed is the emulator's ceiling.
#pragma once
#include "common.cuh"

namespace fcn {

// One float per thread per step; grid = ceil_div(n, 256 * 4) x 1, block = 256. unsigned: the last step
// takes i past n by up to a quarter of n, beyond INT_MAX for n near it.
__global__ void axpy_scalar(int n, float a, const float* __restrict__ x, float* __restrict__ y) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < unsigned(n); i += gridDim.x * blockDim.x)
        y[i] = fmaf(a, x[i], y[i]);
}

// One thread per float4; the grid strides so a modest grid covers any n.
// grid = ceil_div(n / 4, 256 * 4) x 1 (about 4 vectors per thread), block = 256.
__global__ void axpy_float4(int n, float a, const float* __restrict__ x, float* __restrict__ y) {
    // a in every lane: each step is one four-wide FMA (the form in which g++
    // also vectorizes the emulated lanes; with a scalar a it may not).
    const float4 a4 = make_float4(a, a, a, a);
    const int vectors = n / 4;
    const float4* x4 = as_vector<const float4>(x);
    float4* y4 = as_vector<float4>(y);
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < vectors; i += gridDim.x * blockDim.x) {
        const float4 xv = x4[i];
        float4 yv = y4[i];
        yv.x = fmaf(a4.x, xv.x, yv.x);
        yv.y = fmaf(a4.y, xv.y, yv.y);
        yv.z = fmaf(a4.z, xv.z, yv.z);
        yv.w = fmaf(a4.w, xv.w, yv.w);
        y4[i] = yv;
    }
    // The last n % 4 elements, one per thread of block 0.
    const int tail = vectors * 4 + threadIdx.x;
    if (blockIdx.x == 0 && tail < n) y[tail] = fmaf(a, x[tail], y[tail]);
}

}  // namespace fcn
