#include "kernels/sgd.cuh"
#include "ops/launchers.h"

namespace fcn {

void launch_sgd_step(float* w, const float* g, float* v, int n, float lr, float momentum, float weight_decay,
                     cudaStream_t stream) {
    launch("sgd_step", sgd_step, dim3(unsigned(ceil_div((long long)n, 256LL))), dim3(256), 0, stream, w, g, v, n, lr,
           momentum, weight_decay);
}

}  // namespace fcn
