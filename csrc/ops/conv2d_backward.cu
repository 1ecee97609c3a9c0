#include <stdexcept>

#include "kernels/conv2d_backward.cuh"
#include "kernels/upsample.cuh"
#include "ops/launchers.h"

#include <string>

namespace fcn {

void launch_conv2d_grad_input(const ConvShape& g, const float* dy, const float* w, const float* mask, float* dx,
                              float* w_flipped, cudaStream_t stream) {
    if (w_flipped) {
        // A stride-1 convolution's input gradient is the full convolution of
        // dy with the flipped filters, i.e. padding R-1-ph, S-1-pw: dy is its
        // input (N x K x P x Q), dx its output (N x C x H x W).
        if (g.sh != 1 || g.sw != 1 || g.ph > g.R - 1 || g.pw > g.S - 1)
            throw std::invalid_argument("conv2d_grad_input: the flipped-filter path needs stride 1 and padding < R, S");
        const int n = g.K * g.C * g.R * g.S;
        launch("conv2d_flip_filters", conv2d_flip_filters, dim3(ceil_div(n, 256)), dim3(256), 0, stream, w, w_flipped,
               g.K, g.C, g.R * g.S, n);
        const ConvShape full{g.N, g.K, g.P, g.Q, g.C, g.R, g.S, g.H, g.W, 1, 1, g.R - 1 - g.ph, g.S - 1 - g.pw};
        launch_conv2d_masked_input(full, dy, mask, w_flipped, dx, stream);
        return;
    }
    // The H x W window at (ph, pw) of the full transposed convolution of dy.
    const int total = g.N * g.C * g.H * g.W;
    const dim3 grid(unsigned(ceil_div((long long)total, (long long)kUpsampleThreads)));
    if (mask) {
        launch("conv2d_grad_input<masked>", conv_transpose2d_gather<false, true>, grid, dim3(kUpsampleThreads), 0,
               stream, dy, mask, w, (const float*)nullptr, dx, total, g.K, g.P, g.Q, g.C, g.R, g.S, g.sh, g.sw, g.ph,
               g.pw, g.H, g.W);
    } else {
        launch("conv2d_grad_input", conv_transpose2d_gather<false, false>, grid, dim3(kUpsampleThreads), 0, stream,
               dy, (const float*)nullptr, w, (const float*)nullptr, dx, total, g.K, g.P, g.Q, g.C, g.R, g.S, g.sh,
               g.sw, g.ph, g.pw, g.H, g.W);
    }
}

// The smallest tile that holds K output channels: a narrow layer (the
// bundled model's K = 8 at conv1) would otherwise fill 8 of 64 rows.
int conv2d_grad_weight_tile_k(int K) { return K <= 8 ? 8 : K <= 16 ? 16 : K <= 32 ? 32 : 64; }

static int grad_weight_chunk(int M, int K, int splits) {
    const int stage = grad_stage_pixels(conv2d_grad_weight_tile_k(K));
    return ceil_div(ceil_div(M, splits), stage) * stage;
}

// Enough blocks to fill a large GPU (about 1024), at least 256 pixels of
// depth per block, at most 256 splits. A function of the shape alone (as is
// the tile), so the summation order (and the bits) never depend on the machine.
int conv2d_grad_weight_splits(int M, int K, int CRS) {
    const int tiles = ceil_div(K, conv2d_grad_weight_tile_k(K)) * ceil_div(CRS, kGradTileT);
    const int splits = max(1, min(min(ceil_div(1024, tiles), ceil_div(M, 256)), 256));
    return ceil_div(M, grad_weight_chunk(M, K, splits));
}

template <int kTileK>
static void launch_grad_weight_tile(const float* x, const float* dy, const float* mask, float* out,
                                    const ConvGradShape& g, int splits, int chunk, float alpha, cudaStream_t stream) {
    // Static: the launch may keep the name (error reports) after this returns.
    static const std::string plain = "conv2d_grad_weight_igemm<" + std::to_string(kTileK) + ">",
                             masked = "conv2d_grad_weight_igemm<" + std::to_string(kTileK) + ",masked>";
    const dim3 grid(ceil_div(g.C * g.R * g.S, kGradTileT), ceil_div(g.K, kTileK), splits);
    if (mask) {
        launch(masked.c_str(), conv2d_grad_weight_igemm<kTileK, true>, grid, dim3(kGradThreads), 0,
               stream, x, dy, mask, out, g, chunk, alpha);
    } else {
        launch(plain.c_str(), conv2d_grad_weight_igemm<kTileK, false>, grid, dim3(kGradThreads), 0, stream,
               x, dy, mask, out, g, chunk, alpha);
    }
}

void launch_conv2d_grad_weight(const ConvShape& g, const float* x, const float* dy, const float* mask, float* dw,
                               float* workspace, float alpha, cudaStream_t stream) {
    const int K = g.K, M = g.N * g.P * g.Q, CRS = g.C * g.R * g.S;
    const int splits = conv2d_grad_weight_splits(M, K, CRS);
    const int chunk = grad_weight_chunk(M, K, splits);
    // One split writes dw directly; several write the workspace first.
    float* out = splits == 1 ? dw : workspace;
    const float a = splits == 1 ? alpha : 1.f;
    switch (conv2d_grad_weight_tile_k(K)) {
        case 8: launch_grad_weight_tile<8>(x, dy, mask, out, g, splits, chunk, a, stream); break;
        case 16: launch_grad_weight_tile<16>(x, dy, mask, out, g, splits, chunk, a, stream); break;
        case 32: launch_grad_weight_tile<32>(x, dy, mask, out, g, splits, chunk, a, stream); break;
        default: launch_grad_weight_tile<64>(x, dy, mask, out, g, splits, chunk, a, stream); break;
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
