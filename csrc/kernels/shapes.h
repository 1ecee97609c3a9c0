// shapes.h: the size structs that cross from Python to the kernels whole, one per op family. Plain C++
// (no CUDA): common.cuh gives them to every kernel, ops/launchers.h to the launchers and the bindings,
// which build them from Python (fcn_cuda/ops validates the arrays first).
#pragma once

namespace fcn {

// Every size of one convolution (conv2d.cuh, conv2d_small_c.cuh, conv2d_backward.cuh). Padding may be
// negative in the weight gradient: an offset into x (the cropped 1x1 score convolution), which is why P
// and Q are stored, not derived.
struct ConvShape {
    int N, C, H, W;  // x
    int K, R, S;     // w (K x C x R x S)
    int P, Q;        // y's spatial size
    int sh, sw;      // stride
    int ph, pw;      // padding
};

// A convolution's output size along one axis: (size + 2 pad - kernel) / stride + 1.
constexpr int conv_out(int size, int kernel, int stride, int pad) { return (size + 2 * pad - kernel) / stride + 1; }

}  // namespace fcn
