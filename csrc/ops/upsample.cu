#include <cstring>

#include "kernels/upsample.cuh"
#include "ops/launchers.h"

namespace fcn {

void launch_conv_transpose2d(const char* variant, const float* x, const float* w, const float* bias, float* y,
                             int N, int Cin, int H, int W, int Cout, int R, int S, int sy, int sx, int oy0, int ox0,
                             int Ho, int Wo, cudaStream_t stream) {
    const int total = N * Cout * Ho * Wo;
    const dim3 grid(unsigned(ceil_div((long long)total, (long long)kUpsampleThreads)));
    if (!std::strcmp(variant, "gather")) {
        launch("conv_transpose2d_gather", conv_transpose2d_gather<false>, grid, dim3(kUpsampleThreads), 0, stream, x,
               nullptr, w, bias, y, total, Cin, H, W, Cout, R, S, sy, sx, oy0, ox0, Ho, Wo);
    } else if (!std::strcmp(variant, "bilinear")) {
        launch("conv_transpose2d_bilinear", conv_transpose2d_gather<true>, grid, dim3(kUpsampleThreads), 0, stream,
               x, nullptr, w, bias, y, total, Cin, H, W, Cout, R, S, sy, sx, oy0, ox0, Ho, Wo);
    } else {
        throw std::invalid_argument(std::string("conv_transpose2d: unknown variant ") + variant);
    }
}

}  // namespace fcn
