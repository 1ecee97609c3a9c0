#include <cstring>

#include "kernels/upsample.cuh"
#include "ops/launchers.h"

namespace fcn {

void launch_conv_transpose2d(const char* variant, const TransposeShape& t, const float* x, const float* w,
                             const float* bias, float* y, cudaStream_t stream) {
    const int total = t.N * t.Cout * t.Ho * t.Wo;
    const dim3 grid(unsigned(ceil_div((long long)total, (long long)kUpsampleThreads)));
    if (!std::strcmp(variant, "gather")) {
        launch("conv_transpose2d_gather", conv_transpose2d_gather<false>, grid, dim3(kUpsampleThreads), 0, stream, x,
               nullptr, w, bias, y, total, t.Cin, t.H, t.W, t.Cout, t.R, t.S, t.sy, t.sx, t.oy0, t.ox0, t.Ho, t.Wo);
    } else if (!std::strcmp(variant, "bilinear")) {
        launch("conv_transpose2d_bilinear", conv_transpose2d_gather<true>, grid, dim3(kUpsampleThreads), 0, stream,
               x, nullptr, w, bias, y, total, t.Cin, t.H, t.W, t.Cout, t.R, t.S, t.sy, t.sx, t.oy0, t.ox0, t.Ho, t.Wo);
    } else {
        throw std::invalid_argument(std::string("conv_transpose2d: unknown variant ") + variant);
    }
}

}  // namespace fcn
