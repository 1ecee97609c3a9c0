#include <stdexcept>

#include "kernels/conv2d_backward.cuh"
#include "kernels/upsample.cuh"
#include "ops/launchers.h"

namespace fcn {

void launch_conv2d_grad_input(const float* dy, const float* w, const float* mask, float* dx, float* w_flipped,
                              int N, int K, int P, int Q, int C, int H, int W, int R, int S, int sh, int sw, int ph,
                              int pw, cudaStream_t stream) {
    if (w_flipped) {
        // A stride-1 convolution's input gradient is the full convolution of
        // dy with the flipped filters, i.e. padding R-1-ph, S-1-pw.
        if (sh != 1 || sw != 1 || ph > R - 1 || pw > S - 1)
            throw std::invalid_argument("conv2d_grad_input: the flipped-filter path needs stride 1 and padding < R, S");
        const int n = K * C * R * S;
        launch("conv2d_flip_filters", conv2d_flip_filters, dim3(ceil_div(n, 256)), dim3(256), 0, stream, w, w_flipped,
               K, C, R * S, n);
        launch_conv2d_masked_input(dy, mask, w_flipped, dx, N, K, P, Q, C, R, S, R - 1 - ph, S - 1 - pw, stream);
        return;
    }
    // The H x W window at (ph, pw) of the full transposed convolution of dy.
    const int total = N * C * H * W;
    const dim3 grid(unsigned(ceil_div((long long)total, (long long)kUpsampleThreads)));
    if (mask) {
        launch("conv2d_grad_input<masked>", conv_transpose2d_gather<false, true>, grid, dim3(kUpsampleThreads), 0,
               stream, dy, mask, w, (const float*)nullptr, dx, total, K, P, Q, C, R, S, sh, sw, ph, pw, H, W);
    } else {
        launch("conv2d_grad_input", conv_transpose2d_gather<false, false>, grid, dim3(kUpsampleThreads), 0, stream,
               dy, (const float*)nullptr, w, (const float*)nullptr, dx, total, K, P, Q, C, R, S, sh, sw, ph, pw, H,
               W);
    }
}

// Enough blocks to fill a large GPU (about 1024), at least 256 pixels of
// depth per block, at most 256 splits. A function of the shape alone, so the
// summation order (and the bits) never depend on the machine.
int conv2d_grad_weight_splits(int M, int K, int CRS) {
    const int tiles = ceil_div(K, kGradTileK) * ceil_div(CRS, kGradTileT);
    const int splits = max(1, min(min(ceil_div(1024, tiles), ceil_div(M, 256)), 256));
    const int chunk = ceil_div(ceil_div(M, splits), kGradTileM) * kGradTileM;
    return ceil_div(M, chunk);
}

void launch_conv2d_grad_weight(const float* x, const float* dy, const float* mask, float* dw, float* workspace,
                               int N, int C, int H, int W, int K, int R, int S, int P, int Q, int sh, int sw, int ph,
                               int pw, float alpha, cudaStream_t stream) {
    const ConvGradShape g{N, C, H, W, K, R, S, P, Q, sh, sw, ph, pw};
    const int M = N * P * Q, CRS = C * R * S;
    const int splits = conv2d_grad_weight_splits(M, K, CRS);
    const int chunk = ceil_div(ceil_div(M, splits), kGradTileM) * kGradTileM;
    // One split writes dw directly; several write the workspace first.
    float* out = splits == 1 ? dw : workspace;
    const float a = splits == 1 ? alpha : 1.f;
    const dim3 grid(ceil_div(CRS, kGradTileT), ceil_div(K, kGradTileK), splits);
    if (mask) {
        launch("conv2d_grad_weight_igemm<masked>", conv2d_grad_weight_igemm<true>, grid, dim3(kGradThreads), 0,
               stream, x, dy, mask, out, g, chunk, a);
    } else {
        launch("conv2d_grad_weight_igemm", conv2d_grad_weight_igemm<false>, grid, dim3(kGradThreads), 0, stream, x,
               dy, mask, out, g, chunk, a);
    }
    if (splits > 1) {
        const int n = K * CRS;
        launch("split_sum", split_sum, dim3(unsigned(ceil_div((long long)n, 256LL))), dim3(256), 0, stream,
               (const float*)workspace, dw, n, splits, alpha);
    }
}

void launch_bias_grad(const float* dy, const float* mask, float* db, int N, int K, int PQ, cudaStream_t stream) {
    if (mask) {
        launch("bias_grad<masked>", bias_grad<true>, dim3(K), dim3(kBiasGradThreads), 0, stream, dy, mask, db, N, K,
               PQ);
    } else {
        launch("bias_grad", bias_grad<false>, dim3(K), dim3(kBiasGradThreads), 0, stream, dy, mask, db, N, K, PQ);
    }
}

void launch_relu_backward(const float* dy, const float* y, float* dx, int n, cudaStream_t stream) {
    launch("relu_backward", relu_backward, dim3(unsigned(ceil_div((long long)n, 256LL))), dim3(256), 0, stream, dy,
           y, dx, n);
}

}  // namespace fcn
