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

// Every size of one transposed convolution computed on a window (upsample.cuh, head.cuh): x N x Cin x H x W,
// w Cin x Cout x R x S, stride (sy, sx); y is the Ho x Wo window at (oy0, ox0) of the full
// (H - 1) sy + R by (W - 1) sx + S output (padding p is the window at offset p).
struct TransposeShape {
    int N, Cin, H, W;  // x
    int Cout, R, S;    // w (Cin x Cout x R x S)
    int sy, sx;        // stride
    int oy0, ox0;      // the window's origin in the full output
    int Ho, Wo;        // the window's size
};

// Every size of one max pooling (pool.cuh, pool_backward.cuh): `planes` H x W planes of x (N*C), each
// pooled to Ho x Wo by a kh x kw window at stride (sh, sw); Ho, Wo are given (ceil_mode or not).
struct PoolShape {
    int planes, H, W;
    int Ho, Wo;
    int kh, kw;
    int sh, sw;
};

// Every size of FCN's fused score layer (crop.cuh, crop_backward.cuh): out N x K x H x W (the upsampled
// scores) plus the 1x1 scoring (w K x C) of the H x W window at (oy, ox) of feat N x C x Hf x Wf.
struct ScoreCropShape {
    int N, K, C;
    int H, W;
    int Hf, Wf;
    int oy, ox;
};

// One term of the dense CRF (crf.cuh) over an H x W image: d = 2 features (x, y) / sxy, the Gaussian term,
// or d = 5, (x, y) / sxy and (R, G, B) / srgb, the bilateral term. Its lattice has P points: the H*W pixels,
// and pydensecrf's padding point of feature 0 when P = H*W + 1.
struct CrfTermShape {
    int d, H, W, P;
    float sxy, srgb;
};

// A convolution's output size along one axis: (size + 2 pad - kernel) / stride + 1.
constexpr int conv_out(int size, int kernel, int stride, int pad) { return (size + 2 * pad - kernel) / stride + 1; }

}  // namespace fcn
