#include "kernels/preprocess.cuh"
#include "ops/launchers.h"

namespace fcn {

void launch_preprocess(const unsigned char* img, float* out, int N, int HW, float mean_b, float mean_g, float mean_r,
                       cudaStream_t stream) {
    const int pixels = N * HW;
    launch("preprocess_rgb_to_bgr", preprocess_rgb_to_bgr, dim3(ceil_div(pixels, kPreprocessThreads)),
           dim3(kPreprocessThreads), 0, stream, img, out, pixels, HW, mean_b, mean_g, mean_r);
}

}  // namespace fcn
