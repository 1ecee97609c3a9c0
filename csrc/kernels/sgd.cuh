// sgd.cuh: the reference's SGD update with momentum and weight decay, in place.
//
//   v = momentum * v + lr * (g + weight_decay * w);   w = w - v
//
// (Caffe's form: the learning rate is folded into the velocity.) The caller
// passes the effective lr and decay of each parameter (FCN: biases 2x lr, no
// decay). sgd_step: one thread per element, any n.
#pragma once
#include "common.cuh"

namespace fcn {

// grid = ceil(n / 256), block = 256.
__global__ void sgd_step(float* __restrict__ w, const float* __restrict__ g, float* __restrict__ v, int n, float lr,
                         float momentum, float weight_decay) {
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;  // unsigned: n may be close to INT_MAX
    if (i >= unsigned(n)) return;
    const float wi = w[i];
    const float vi = fmaf(momentum, v[i], lr * fmaf(weight_decay, wi, __ldg(g + i)));
    v[i] = vi;
    w[i] = wi - vi;
}

}  // namespace fcn
