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

void launch_score_feat_grad(const float* g, const float* w, float* dfeat, int N, int K, int C, int H, int W, int Hf,
                            int Wf, int oy, int ox, float scale, cudaStream_t stream) {
    const int total = N * C * Hf * Wf;
    launch("score_feat_grad", score_feat_grad,
           dim3(unsigned(ceil_div((long long)total, (long long)kCropBackwardThreads))), dim3(kCropBackwardThreads), 0,
           stream, g, w, dfeat, total, K, C, H, W, Hf, Wf, oy, ox, scale);
}

}  // namespace fcn
