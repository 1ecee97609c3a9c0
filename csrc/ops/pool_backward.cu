#include "kernels/pool_backward.cuh"
#include "ops/launchers.h"

namespace fcn {

void launch_max_pool2d_backward(const PoolShape& g, const float* dy, const int* indices, float* dx,
                                cudaStream_t stream) {
    const int total = g.planes * g.H * g.W;
    launch("max_pool2d_backward", max_pool2d_backward,
           dim3(unsigned(ceil_div((long long)total, (long long)kPoolBackwardThreads))), dim3(kPoolBackwardThreads), 0,
           stream, dy, indices, dx, total, g.H, g.W, g.Ho, g.Wo, g.kh, g.kw, g.sh, g.sw);
}

}  // namespace fcn
