#include "kernels/pool_backward.cuh"
#include "ops/launchers.h"

namespace fcn {

void launch_max_pool2d_backward(const float* dy, const int* indices, float* dx, int planes, int H, int W, int Ho,
                                int Wo, int kh, int kw, int sh, int sw, cudaStream_t stream) {
    const int total = planes * H * W;
    launch("max_pool2d_backward", max_pool2d_backward,
           dim3(unsigned(ceil_div((long long)total, (long long)kPoolBackwardThreads))), dim3(kPoolBackwardThreads), 0,
           stream, dy, indices, dx, total, H, W, Ho, Wo, kh, kw, sh, sw);
}

}  // namespace fcn
