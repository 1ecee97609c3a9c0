#include <cstring>
#include <string>

#include "kernels/softmax.cuh"
#include "ops/launchers.h"

namespace fcn {

namespace {

template <int kPixels>
void launch_channel_softmax(const char* variant, const float* x, float* probs, int* labels, int N, int C, int HW,
                            cudaStream_t stream) {
    const int groups = N * (HW / kPixels);
    const dim3 grid(ceil_div(groups, kSoftmaxThreads)), block(kSoftmaxThreads);
    const std::string op = probs ? (labels ? "softmax_argmax" : "softmax") : "argmax";
    const std::string name = op + "<" + variant + ">";
    if (probs && labels) {
        launch(name.c_str(), channel_softmax<kPixels, true, true>, grid, block, 0, stream, x, probs, labels, groups, C,
               HW);
    } else if (probs) {
        launch(name.c_str(), channel_softmax<kPixels, true, false>, grid, block, 0, stream, x, probs, labels, groups,
               C, HW);
    } else if (labels) {
        launch(name.c_str(), channel_softmax<kPixels, false, true>, grid, block, 0, stream, x, probs, labels, groups,
               C, HW);
    } else {
        throw std::invalid_argument("softmax_argmax: neither probs nor labels given");
    }
}

}  // namespace

void launch_softmax_argmax(const char* variant, const float* x, float* probs, int* labels, int N, int C, int HW,
                           cudaStream_t stream) {
    if (!std::strcmp(variant, "scalar")) {
        launch_channel_softmax<1>(variant, x, probs, labels, N, C, HW, stream);
    } else if (!std::strcmp(variant, "float4")) {
        if (HW % 4) throw std::invalid_argument("softmax_argmax(float4): H*W must be a multiple of 4");
        launch_channel_softmax<4>(variant, x, probs, labels, N, C, HW, stream);
    } else {
        throw std::invalid_argument(std::string("softmax_argmax: unknown variant ") + variant);
    }
}

}  // namespace fcn
