#include "kernels/crop.cuh"
#include "ops/launchers.h"

namespace fcn {

void launch_crop_add(const float* a, const float* b, float* out, int planes, int H, int W, int Hb, int Wb, int oy,
                     int ox, cudaStream_t stream) {
    const int total = planes * H * W;
    launch("crop_add", crop_add, dim3(unsigned(ceil_div((long long)total, (long long)kCropThreads))),
           dim3(kCropThreads), 0, stream, a, b, out, total, H, W, Hb, Wb, oy, ox);
}

void launch_score_crop_add(const ScoreCropShape& g, const float* up, const float* feat, const float* w,
                           const float* bias, float* out, float scale, cudaStream_t stream) {
    const dim3 grid(unsigned(ceil_div(g.H * g.W, kCropThreads)), unsigned(ceil_div(g.K, kScoreClasses)),
                    unsigned(g.N));
    launch("score_crop_add", score_crop_add, grid, dim3(kCropThreads), 0, stream, up, feat, w, bias, out, g.K, g.C,
           g.H, g.W, g.Hf, g.Wf, g.oy, g.ox, scale);
}

}  // namespace fcn
