#include "kernels/head.cuh"
#include "ops/launchers.h"

namespace fcn {

void launch_upsample_argmax(const TransposeShape& t, const float* x, const float* w, int* labels, float* probs,
                            cudaStream_t stream) {
    const int pixels = t.N * t.Ho * t.Wo;
    const dim3 grid(unsigned(ceil_div((long long)pixels, (long long)kHeadThreads))), block(kHeadThreads);
    if (probs) {
        launch("upsample_softmax_argmax", upsample_argmax<true>, grid, block, 0, stream, x, w, labels, probs, pixels,
               t.Cin, t.H, t.W, t.R, t.S, t.sy, t.sx, t.oy0, t.ox0, t.Ho, t.Wo);
    } else {
        launch("upsample_argmax", upsample_argmax<false>, grid, block, 0, stream, x, w, labels, probs, pixels, t.Cin,
               t.H, t.W, t.R, t.S, t.sy, t.sx, t.oy0, t.ox0, t.Ho, t.Wo);
    }
}

}  // namespace fcn
