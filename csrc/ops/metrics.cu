#include "kernels/metrics.cuh"
#include "ops/launchers.h"

namespace fcn {

void launch_confusion_matrix(const int* gt, const int* pred, int n, int C, unsigned long long* hist,
                             cudaStream_t stream) {
    const int blocks = max(1, min(ceil_div(n, 256), 256));
    launch("confusion_matrix", confusion_matrix, dim3(blocks), dim3(256), size_t(C) * C * sizeof(unsigned), stream,
           gt, pred, n, C, hist);
}

}  // namespace fcn
