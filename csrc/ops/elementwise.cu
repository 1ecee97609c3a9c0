#include "kernels/elementwise.cuh"
#include "ops/launchers.h"

namespace fcn {

void launch_axpy(int n, float a, const float* x, float* y, cudaStream_t stream) {
    const int vectors = n / 4;
    const int blocks = max(1, min(ceil_div(vectors, 256), 1024));
    launch("axpy_float4", axpy_float4, dim3(blocks), dim3(256), 0, stream, n, a, x, y);
}

}  // namespace fcn
