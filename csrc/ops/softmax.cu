#include <cstring>

#include "kernels/softmax.cuh"
#include "ops/launchers.h"

namespace fcn {

namespace {

template <int kPixels, bool kProbs, bool kLabels>
void launch_channel_softmax(const char* name, const float* x, float* probs, int* labels, int N, int C, int HW,
                            cudaStream_t stream) {
    const int groups = N * (HW / kPixels);
    launch(name, channel_softmax<kPixels, kProbs, kLabels>, dim3(ceil_div(groups, kSoftmaxThreads)),
           dim3(kSoftmaxThreads), 0, stream, x, probs, labels, groups, C, HW);
}

template <int kPixels>
void launch_pixels(const char* variant, const float* x, float* probs, int* labels, int N, int C, int HW,
                   cudaStream_t stream) {
    const bool scalar = kPixels == 1;
    if (probs && labels) {
        launch_channel_softmax<kPixels, true, true>(scalar ? "softmax_argmax<scalar>" : "softmax_argmax<float4>", x,
                                                    probs, labels, N, C, HW, stream);
    } else if (probs) {
        launch_channel_softmax<kPixels, true, false>(scalar ? "softmax<scalar>" : "softmax<float4>", x, probs,
                                                     labels, N, C, HW, stream);
    } else if (labels) {
        launch_channel_softmax<kPixels, false, true>(scalar ? "argmax<scalar>" : "argmax<float4>", x, probs, labels,
                                                     N, C, HW, stream);
    } else {
        throw std::invalid_argument(std::string("softmax_argmax(") + variant + "): no output requested");
    }
}

}  // namespace

void launch_softmax_argmax(const char* variant, const float* x, float* probs, int* labels, int N, int C, int HW,
                           cudaStream_t stream) {
    if (!std::strcmp(variant, "scalar")) {
        launch_pixels<1>(variant, x, probs, labels, N, C, HW, stream);
    } else if (!std::strcmp(variant, "float4")) {
        if (HW % 4) throw std::invalid_argument("softmax_argmax(float4): H*W must be a multiple of 4");
        launch_pixels<4>(variant, x, probs, labels, N, C, HW, stream);
    } else {
        throw std::invalid_argument(std::string("softmax_argmax: unknown variant ") + variant);
    }
}

}  // namespace fcn
