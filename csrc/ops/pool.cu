#include "kernels/pool.cuh"
#include "ops/launchers.h"

namespace fcn {

void launch_max_pool2d(const PoolShape& g, const float* x, float* y, int* indices, cudaStream_t stream) {
    const int total = g.planes * g.Ho * g.Wo;
    launch("max_pool2d", max_pool2d, dim3(unsigned(ceil_div((long long)total, (long long)kPoolThreads))),
           dim3(kPoolThreads), 0, stream, x, y, indices, total, g.H, g.W, g.Ho, g.Wo, g.kh, g.kw, g.sh, g.sw);
}

}  // namespace fcn
