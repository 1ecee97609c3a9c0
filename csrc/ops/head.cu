#include "kernels/head.cuh"
#include "ops/launchers.h"

namespace fcn {

void launch_upsample_argmax(const float* x, const float* w, int* labels, float* probs, int N, int C, int H, int W,
                            int R, int S, int sy, int sx, int oy0, int ox0, int Ho, int Wo, cudaStream_t stream) {
    const int pixels = N * Ho * Wo;
    const dim3 grid(unsigned(ceil_div((long long)pixels, (long long)kHeadThreads))), block(kHeadThreads);
    if (probs) {
        launch("upsample_softmax_argmax", upsample_argmax<true>, grid, block, 0, stream, x, w, labels, probs, pixels,
               C, H, W, R, S, sy, sx, oy0, ox0, Ho, Wo);
    } else {
        launch("upsample_argmax", upsample_argmax<false>, grid, block, 0, stream, x, w, labels, probs, pixels, C, H,
               W, R, S, sy, sx, oy0, ox0, Ho, Wo);
    }
}

}  // namespace fcn
