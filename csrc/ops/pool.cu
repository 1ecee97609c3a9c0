#include "kernels/pool.cuh"
#include "ops/launchers.h"

namespace fcn {

void launch_max_pool2d(const float* x, float* y, int* indices, int planes, int H, int W, int Ho, int Wo, int kh,
                       int kw, int sh, int sw, cudaStream_t stream) {
    const int total = planes * Ho * Wo;
    launch("max_pool2d", max_pool2d, dim3(unsigned(ceil_div((long long)total, (long long)kPoolThreads))),
           dim3(kPoolThreads), 0, stream, x, y, indices, total, H, W, Ho, Wo, kh, kw, sh, sw);
}

}  // namespace fcn
