#include "kernels/loss.cuh"
#include "ops/launchers.h"

namespace fcn {

int softmax_xent_workspace(int pixels) {
    const int blocks = ceil_div(pixels, kXentThreads);
    return blocks + block_sum_partials(blocks);
}

void launch_softmax_xent(const float* scores, const int* labels, const float* weight, float* grad, float* workspace,
                         float* loss, int N, int C, int HW, int ignore, float inv_divisor, cudaStream_t stream) {
    const int pixels = N * HW, blocks = ceil_div(pixels, kXentThreads);
    launch("softmax_xent", softmax_xent, dim3(blocks), dim3(kXentThreads), 0, stream, scores, labels, weight, grad,
           workspace, pixels, C, HW, ignore, inv_divisor);
    launch_block_sum(workspace, workspace + blocks, loss, blocks, stream);
}

}  // namespace fcn
