#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/elementwise.cuh"
#include "ops/launchers.h"

namespace fcn {

void launch_axpy(const char* variant, int n, float a, const float* x, float* y, cudaStream_t stream) {
    // About 4 steps per thread: enough independent loads in flight on a GPU,
    // and the emulator's per-thread cost (a few ns) is paid once per 4.
    if (!std::strcmp(variant, "float4")) {
        const int blocks = max(1, ceil_div(n / 4, 256 * 4));
        launch("axpy_float4", axpy_float4, dim3(blocks), dim3(256), 0, stream, n, a, x, y);
    } else if (!std::strcmp(variant, "scalar")) {
        launch("axpy_scalar", axpy_scalar, dim3(ceil_div(n, 256 * 4)), dim3(256), 0, stream, n, a, x, y);
    } else {
        throw std::invalid_argument(std::string("axpy: unknown variant ") + variant);
    }
}

}  // namespace fcn
