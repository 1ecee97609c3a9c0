#include <cstring>

#include "kernels/gemm.cuh"
#include "ops/launchers.h"

namespace fcn {

void launch_gemm(const char* variant, const float* A, const float* B, float* C, int M, int N, int K,
                 cudaStream_t stream) {
    if (!std::strcmp(variant, "naive")) {
        launch("sgemm_naive", sgemm_naive, dim3(ceil_div(N, 16), ceil_div(M, 16)), dim3(16, 16), 0, stream, A, B, C,
               M, N, K);
    } else if (!std::strcmp(variant, "tiled")) {
        launch("sgemm_tiled", sgemm_tiled, dim3(ceil_div(N, kTileN), ceil_div(M, kTileM)), dim3(kTiledThreads), 0,
               stream, A, B, C, M, N, K);
    } else if (!std::strcmp(variant, "wmma_tf32")) {
        launch("gemm_wmma<tf32>", gemm_wmma<nvcuda::wmma::precision::tf32>,
               dim3(ceil_div(N, kWmmaTile), ceil_div(M, kWmmaTile)), dim3(128), 0, stream, A, B, C, M, N, K);
    } else if (!std::strcmp(variant, "wmma_f16")) {
        launch("gemm_wmma<f16>", gemm_wmma<__half>, dim3(ceil_div(N, kWmmaTile), ceil_div(M, kWmmaTile)), dim3(128), 0,
               stream, A, B, C, M, N, K);
    } else if (!std::strcmp(variant, "wmma_bf16")) {
        launch("gemm_wmma<bf16>", gemm_wmma<__nv_bfloat16>, dim3(ceil_div(N, kWmmaTile), ceil_div(M, kWmmaTile)),
               dim3(128), 0, stream, A, B, C, M, N, K);
    } else {
        throw std::invalid_argument(std::string("gemm: unknown variant ") + variant);
    }
}

}  // namespace fcn
