#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/conv2d.cuh"
#include "kernels/conv2d_mma.cuh"
#include "kernels/conv2d_small_c.cuh"
#include "kernels/conv2d_wgmma.cuh"
#include "ops/launchers.h"
#include "ops/tensor_map.h"

namespace fcn {

namespace {

template <int TM, int TN>
void launch_igemm_tile(int splits, const float* x, const float* x_mask, const float* w, const float* b, float* y,
                       const ConvShape& g, int mode, cudaStream_t stream) {
    const dim3 grid(ceil_div(g.N * g.P * g.Q, TM), ceil_div(g.K, TN), splits);
    launch("conv2d_igemm", conv2d_igemm<TM, TN>, grid, dim3(kConvThreads), 0, stream, x, x_mask, w, b, y, g, mode);
}

// conv2d_igemm at the tile that wastes least on K channels: 256 pixels x 16
// channels, 128 x 32, or 64 x 64.
void launch_fp32_igemm(int splits, const float* x, const float* x_mask, const float* w, const float* b, float* y,
                       const ConvShape& g, int mode, cudaStream_t stream) {
    if (g.K <= 16)
        launch_igemm_tile<256, 16>(splits, x, x_mask, w, b, y, g, mode, stream);
    else if (g.K <= 32)
        launch_igemm_tile<128, 32>(splits, x, x_mask, w, b, y, g, mode, stream);
    else
        launch_igemm_tile<kConvTileM, kConvTileN>(splits, x, x_mask, w, b, y, g, mode, stream);
}

// The wmma kernels' grid: 64 x 64 tiles, pixel tiles on grid.x (up to
// 2^31 - 1 blocks), channel tiles on grid.y (at most 65535), splits on z.
dim3 wmma_grid(const ConvShape& g, int splits) {
    return dim3(ceil_div(g.N * g.P * g.Q, kConvTileM), ceil_div(g.K, kConvTileN), splits);
}

template <bool kBf16, int BM, int BN, typename Wt>
void launch_mma_tile(int splits, const float* x, const Wt* w, const float* b, float* y, const ConvShape& g,
                     int mode, cudaStream_t stream) {
    const dim3 grid(ceil_div(g.N * g.P * g.Q, BM), ceil_div(g.K, BN), splits);
    const char* name = !kBf16 ? "conv2d_mma_tf32" : std::is_same_v<Wt, float> ? "conv2d_mma_bf16" : "conv2d_mma_bf16w";
    launch(name, conv2d_mma<kBf16, BM, BN, Wt>, grid, dim3(kMmaThreads), kMmaSmemBytes<BM, BN>, stream, x, w, b, y, g,
           mode);
}

// conv2d_mma at 128 x 128 where that still gives a wave of blocks (132, an
// H100's SMs) and pads K no further than 64 x 64 does (K = 64, conv1's,
// would leave half of each warp's channels empty), else at 64 x 64. Either
// tile sums each output in the same order, so the choice never changes a bit.
template <bool kBf16, typename Wt>
void launch_mma(int splits, const float* x, const Wt* w, const float* b, float* y, const ConvShape& g, int mode,
                cudaStream_t stream) {
    const int channel_tiles = ceil_div(g.K, kMmaBigTile);
    const long long big = (long long)ceil_div(g.N * g.P * g.Q, kMmaBigTile) * channel_tiles * splits;
    if (big >= 132 && 2 * channel_tiles == ceil_div(g.K, kMmaSmallTile))
        launch_mma_tile<kBf16, kMmaBigTile, kMmaBigTile>(splits, x, w, b, y, g, mode, stream);
    else
        launch_mma_tile<kBf16, kMmaSmallTile, kMmaSmallTile>(splits, x, w, b, y, g, mode, stream);
}

// Calls f with w as the element type wt names: float, or the bf16 bit
// patterns conv2d_to_bf16 wrote, as __nv_bfloat16 (launchers.h has no CUDA
// types, so they cross the bindings untyped).
template <typename F>
void with_weights(const void* w, WeightType wt, F&& f) {
    if (wt == WeightType::bf16) f(static_cast<const __nv_bfloat16*>(w));
    else f(static_cast<const float*>(w));
}

// Launches one of the implicit-GEMM tile kernels (the fp32 one, a wmma one
// or an mma one) with `splits` depth splits (grid.z) and epilogue `mode`; false for a
// variant that is not one of them.
bool launch_igemm(const char* variant, int splits, const float* x, const float* w, const float* b, float* y,
                  const ConvShape& g, int mode, cudaStream_t stream) {
    if (!std::strcmp(variant, "igemm")) {
        launch_fp32_igemm(splits, x, nullptr, w, b, y, g, mode, stream);
    } else if (!std::strcmp(variant, "igemm_tf32")) {
        launch("conv2d_igemm_tf32", conv2d_igemm_wmma<nvcuda::wmma::precision::tf32>, wmma_grid(g, splits),
               dim3(kConvThreads), 0, stream, x, w, b, y, g, mode);
    } else if (!std::strcmp(variant, "igemm_bf16")) {
        launch("conv2d_igemm_bf16", conv2d_igemm_wmma<__nv_bfloat16>, wmma_grid(g, splits), dim3(kConvThreads), 0,
               stream, x, w, b, y, g, mode);
    } else if (!std::strcmp(variant, "mma_tf32")) {
        launch_mma<false>(splits, x, w, b, y, g, mode, stream);
    } else if (!std::strcmp(variant, "mma_bf16")) {
        launch_mma<true>(splits, x, w, b, y, g, mode, stream);
    } else {
        return false;
    }
    return true;
}

// The same for weights already rounded to bf16: igemm_bf16 and mma_bf16 read them.
bool launch_igemm(const char* variant, int splits, const float* x, const __nv_bfloat16* w, const float* b, float* y,
                  const ConvShape& g, int mode, cudaStream_t stream) {
    if (!std::strcmp(variant, "igemm_bf16"))
        launch("conv2d_igemm_bf16w", conv2d_igemm_wmma<__nv_bfloat16, __nv_bfloat16>, wmma_grid(g, splits),
               dim3(kConvThreads), 0, stream, x, w, b, y, g, mode);
    else if (!std::strcmp(variant, "mma_bf16"))
        launch_mma<true>(splits, x, w, b, y, g, mode, stream);
    else
        return false;
    return true;
}

// conv2d_relu_maxpool and split-K for either weight type (float or bf16).
template <typename Wt>
void relu_maxpool(const char* variant, const float* x, const Wt* w, const float* b, float* y, const ConvShape& g,
                  cudaStream_t stream) {
    const int pooled = g.N * g.K * ((g.P + 1) / 2) * ((g.Q + 1) / 2);
    // The epilogue max-accumulates into y: start every cell at +0 (stream order runs this first).
    launch("conv2d_zero", conv2d_zero, dim3(ceil_div(pooled, 256)), dim3(256), 0, stream, y, pooled);
    if (!launch_igemm(variant, 1, x, w, b, y, g, kConvReluMaxPool, stream))
        throw std::invalid_argument(std::string("conv2d_relu_maxpool: no variant ") + variant + " for these weights");
}

template <typename Wt>
void split(const char* variant, const float* x, const Wt* w, const float* b, float* y, float* workspace, int splits,
           const ConvShape& g, bool relu, cudaStream_t stream) {
    // Split z of every C tile on grid.z (at most 65535, checked in Python); the
    // partials go to the workspace raw: bias and ReLU wait for their sum.
    if (!launch_igemm(variant, splits, x, w, nullptr, workspace, g, kConvPlain, stream))
        throw std::invalid_argument(std::string("conv2d: split-K needs an igemm variant for these weights, got ") +
                                    variant);
    const int total = g.N * g.K * g.P * g.Q;
    launch("conv2d_split_sum", conv2d_split_sum, dim3(ceil_div(total, 256)), dim3(256), 0, stream,
           (const float*)workspace, b, y, total, splits, g.K, g.P * g.Q, int(relu));
}

// conv2d_wgmma<T> into y with epilogue `mode` over `splits` depth ranges
// (grid.z), after reordering w into wr (conv2d_wgmma_weights: R*S x K x Cp).
template <typename T>
void launch_wgmma(const char* name, const ConvShape& g, int splits, int mode, const float* x, const float* w,
                  const float* b, float* y, void* wr, cudaStream_t stream) {
    using S = typename WgmmaConv<T>::Stored;
    const int rs = g.R * g.S, cp = conv2d_wgmma_channels(g);
    S* wr_typed = static_cast<S*>(wr);
    launch("conv2d_wgmma_weights", conv2d_wgmma_weights<T>, dim3(ceil_div(rs * g.K * cp, 256)), dim3(256), 0, stream,
           w, wr_typed, g.K, g.C, rs, cp);
    // x as (W, C, H, N): the box is 8 columns x 32 channels x 16 rows of one image.
    const uint64_t f = sizeof(float), xd[4] = {uint64_t(g.W), uint64_t(g.C), uint64_t(g.H), uint64_t(g.N)};
    const uint64_t xs[3] = {uint64_t(g.H) * g.W * f, uint64_t(g.W) * f, uint64_t(g.C) * g.H * g.W * f};
    const uint32_t xb[4] = {kWgTileQ, kWgChunk, kWgTileP, 1};
    const TensorMap map_x = encode_tensor_map(TmaElement::f32, 4, x, xd, xs, xb, 0);
    // wr as (Cp, K, R*S): the box is 32 input channels x 128 output channels of one tap.
    const uint64_t wd[3] = {uint64_t(cp), uint64_t(g.K), uint64_t(rs)};
    const uint64_t ws[2] = {uint64_t(cp) * sizeof(S), uint64_t(g.K) * cp * sizeof(S)};
    const uint32_t wb[3] = {kWgChunk, kWgTileN, 1};
    const TensorMap map_w = encode_tensor_map(std::is_same_v<S, float> ? TmaElement::f32 : TmaElement::bf16, 3,
                                              wr_typed, wd, ws, wb, WgmmaConv<T>::kSwizzle);
    const dim3 grid(g.N * ceil_div(g.P, kWgTileP) * ceil_div(g.Q, kWgTileQ), ceil_div(g.K, kWgTileN), splits);
    launch(name, conv2d_wgmma<T>, grid, dim3(kWgThreads), kWgSmemBytes<T>, stream, map_x, map_w, b, y, g, mode);
}

}  // namespace

int conv2d_wgmma_channels(const ConvShape& g) { return ceil_div(g.C, kWgChunk) * kWgChunk; }

namespace {
// 1 where the code the driver loaded for this GPU is sm_90a's: a fatbinary
// may hold plain sm_90 code instead (FCN_CUDA_ARCH naming 90 without 90a),
// in which the wgmma kernels are traps.
__global__ void conv2d_wgmma_code_probe(int* out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    *out = 1;
#else
    *out = 0;
#endif
}
}  // namespace

bool conv2d_wgmma_code_loaded() {
#if defined(FCN_EMU)
    return true;  // the emulator runs the wgmma kernels on any host
#else
    auto check = [](cudaError_t e, const char* what) {
        if (e != cudaSuccess)
            throw std::runtime_error(std::string("conv2d_wgmma_code_loaded: ") + what + ": " + cudaGetErrorString(e));
    };
    int* d = nullptr;
    int loaded = 0;
    check(cudaMalloc(&d, sizeof(int)), "cudaMalloc");
    try {
        launch("conv2d_wgmma_code_probe", conv2d_wgmma_code_probe, dim3(1), dim3(1), 0, cudaStream_t(0), d);
        check(cudaMemcpy(&loaded, d, sizeof(int), cudaMemcpyDeviceToHost), "cudaMemcpy");
    } catch (...) {
        cudaFree(d);
        throw;
    }
    cudaFree(d);
    return loaded == 1;
#endif
}

void launch_conv2d_wgmma(const char* variant, const ConvShape& g, int splits, int mode, const float* x,
                         const float* w, const float* b, float* y, void* w_reordered, float* workspace,
                         cudaStream_t stream) {
    const bool bf16 = !std::strcmp(variant, "wgmma_bf16");
    if (!bf16 && std::strcmp(variant, "wgmma_tf32"))
        throw std::invalid_argument(std::string("conv2d: no wgmma variant ") + variant);
    auto run = [&](float* out, const float* bias, int m) {
        if (bf16)
            launch_wgmma<__nv_bfloat16>("conv2d_wgmma_bf16", g, splits, m, x, w, bias, out, w_reordered, stream);
        else
            launch_wgmma<nvcuda::wmma::precision::tf32>("conv2d_wgmma_tf32", g, splits, m, x, w, bias, out,
                                                        w_reordered, stream);
    };
    if (mode == kConvReluMaxPool) {
        const int pooled = g.N * g.K * ((g.P + 1) / 2) * ((g.Q + 1) / 2);
        launch("conv2d_zero", conv2d_zero, dim3(ceil_div(pooled, 256)), dim3(256), 0, stream, y, pooled);
        run(y, b, mode);
    } else if (splits == 1) {
        run(y, b, mode);
    } else {
        run(workspace, nullptr, kConvPlain);
        const int total = g.N * g.K * g.P * g.Q;
        launch("conv2d_split_sum", conv2d_split_sum, dim3(ceil_div(total, 256)), dim3(256), 0, stream,
               (const float*)workspace, b, y, total, splits, g.K, g.P * g.Q, int(mode == kConvRelu));
    }
}

void launch_conv2d(const char* variant, const ConvShape& g, const float* x, const void* w, WeightType wt,
                   const float* b, float* y, bool relu, cudaStream_t stream) {
    const int mode = relu ? kConvRelu : kConvPlain;
    if (wt == WeightType::bf16) {
        if (!launch_igemm(variant, 1, x, static_cast<const __nv_bfloat16*>(w), b, y, g, mode, stream))
            throw std::invalid_argument(std::string("conv2d: bf16 weights need variant igemm_bf16 or mma_bf16, got ") +
                                        variant);
        return;
    }
    const float* wf = static_cast<const float*>(w);
    if (!std::strcmp(variant, "direct")) {
        launch("conv2d_direct", conv2d_direct, dim3(ceil_div(g.N * g.K * g.P * g.Q, 256)), dim3(256), 0, stream, x,
               wf, b, y, g, int(relu));
    } else if (!std::strcmp(variant, "small_c")) {
        // The taps of a pixel live in registers: their count must be a compile-time bound.
        const int crs = g.C * g.R * g.S;
        if (crs > kSmallCMaxTaps) throw std::invalid_argument("conv2d small_c: C*R*S of w exceeds 64");
        auto kernel = crs <= 8 ? conv2d_small_c<8> : crs <= 16 ? conv2d_small_c<16>
                    : crs <= 32 ? conv2d_small_c<32> : conv2d_small_c<kSmallCMaxTaps>;
        launch("conv2d_small_c", kernel, dim3(ceil_div(g.N * g.P * g.Q, kSmallCThreads), ceil_div(g.K, kSmallCGroup)),
               dim3(kSmallCThreads), 0, stream, x, wf, b, y, g, int(relu));
    } else if (!launch_igemm(variant, 1, x, wf, b, y, g, mode, stream)) {
        throw std::invalid_argument(std::string("conv2d: unknown variant ") + variant);
    }
}

void launch_conv2d_relu_maxpool(const char* variant, const ConvShape& g, const float* x, const void* w,
                                WeightType wt, const float* b, float* y, cudaStream_t stream) {
    with_weights(w, wt, [&](auto wp) { relu_maxpool(variant, x, wp, b, y, g, stream); });
}

void launch_conv2d_split(const char* variant, const ConvShape& g, int splits, const float* x, const void* w,
                         WeightType wt, const float* b, float* y, float* workspace, bool relu, cudaStream_t stream) {
    with_weights(w, wt, [&](auto wp) { split(variant, x, wp, b, y, workspace, splits, g, relu, stream); });
}

void launch_conv2d_to_bf16(const float* w, std::uint16_t* w_bf16, int n, cudaStream_t stream) {
    launch("conv2d_to_bf16", conv2d_to_bf16, dim3(ceil_div(n, 256)), dim3(256), 0, stream, w,
           reinterpret_cast<__nv_bfloat16*>(w_bf16), n);
}

void launch_conv2d_masked_input(const ConvShape& g, const float* x, const float* x_mask, const float* w, float* y,
                                cudaStream_t stream) {
    launch_fp32_igemm(1, x, x_mask, w, nullptr, y, g, kConvPlain, stream);
}

}  // namespace fcn
