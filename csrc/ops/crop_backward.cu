#include "kernels/crop_backward.cuh"
#include "ops/launchers.h"

namespace fcn {

void launch_crop_backward(const float* g, float* db, int planes, int H, int W, int Hb, int Wb, int oy, int ox,
                          cudaStream_t stream) {
    const int total = planes * Hb * Wb;
    launch("crop_backward", crop_backward,
           dim3(unsigned(ceil_div((long long)total, (long long)kCropBackwardThreads))), dim3(kCropBackwardThreads), 0,
           stream, g, db, total, H, W, Hb, Wb, oy, ox);
}

void launch_score_feat_grad(const ScoreCropShape& g, const float* grad_out, const float* w, float* dfeat, float scale,
                            cudaStream_t stream) {
    const int total = g.N * g.C * g.Hf * g.Wf;
    launch("score_feat_grad", score_feat_grad,
           dim3(unsigned(ceil_div((long long)total, (long long)kCropBackwardThreads))), dim3(kCropBackwardThreads), 0,
           stream, grad_out, w, dfeat, total, g.K, g.C, g.H, g.W, g.Hf, g.Wf, g.oy, g.ox, scale);
}

}  // namespace fcn
