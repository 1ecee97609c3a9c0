// gemm.cuh: C = A * B for row-major float matrices, A: M x K, B: K x N.
//
// The seed of the convolution's implicit GEMM, in three rungs:
//   sgemm_naive:  one thread per C element, K dot-product reads straight
//                 from global memory. The baseline.
//   sgemm_tiled:  a 64 x 64 C tile per block of 256 threads, K walked in
//                 steps of 16 through shared memory; each thread keeps a
//                 4 x 4 register block of C, so every shared-memory value it
//                 loads feeds 4 FMAs. Any M, N, K (edges are zero-filled).
//   gemm_wmma<T>: tensor cores through nvcuda::wmma: a 32 x 32 C tile per
//                 block of 4 warps, each warp one 16 x 16 accumulator.
//                 T = precision::tf32 (m16n16k8, inputs rounded with
//                 __float_to_tf32), __half or __nv_bfloat16 (m16n16k16).
//                 Any M, N, K.
#pragma once
#include "common.cuh"
#include "wmma_input.cuh"

namespace fcn {

// grid = (ceil(N / 16), ceil(M / 16)), block = (16, 16): thread (x, y) owns C[row, col].
__global__ void sgemm_naive(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
                            int M, int N, int K) {
    const int row = blockIdx.y * blockDim.y + threadIdx.y;
    const int col = blockIdx.x * blockDim.x + threadIdx.x;  // x fastest: a warp reads B and writes C coalesced
    if (row >= M || col >= N) return;
    float acc = 0.f;
    for (int k = 0; k < K; ++k) acc = fmaf(A[row * K + k], B[k * N + col], acc);
    C[row * N + col] = acc;
}

constexpr int kTileM = 64, kTileN = 64, kTileK = 16, kThreadM = 4, kThreadN = 4;
constexpr int kTiledThreads = (kTileM / kThreadM) * (kTileN / kThreadN);  // 256

// grid = (ceil(N / 64), ceil(M / 64)), block = 256.
// Thread t computes rows ty*4 .. ty*4+3 and columns tx*4 .. tx*4+3 of the
// block's tile, with tx = t % 16, ty = t / 16.
__global__ void __launch_bounds__(kTiledThreads)
sgemm_tiled(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, int M, int N, int K) {
    // A is stored transposed (k-major) so the inner loop reads 4 consecutive
    // rows of A as one contiguous run, like B's 4 consecutive columns.
    __shared__ float As[kTileK][kTileM];
    __shared__ float Bs[kTileK][kTileN];
    const int t = threadIdx.x;
    const int tx = t % (kTileN / kThreadN), ty = t / (kTileN / kThreadN);
    const int row0 = blockIdx.y * kTileM, col0 = blockIdx.x * kTileN;

    float acc[kThreadM][kThreadN] = {};
    for (int k0 = 0; k0 < K; k0 += kTileK) {
        // 64 x 16 floats of A and 16 x 64 of B: 4 of each per thread.
        // Consecutive threads read consecutive k of A / columns of B.
        for (int i = t; i < kTileM * kTileK; i += kTiledThreads) {
            const int r = i / kTileK, k = i % kTileK;
            const int gr = row0 + r, gk = k0 + k;
            smem_store(&As[k][r], (gr < M && gk < K) ? A[gr * K + gk] : 0.f);
        }
        for (int i = t; i < kTileK * kTileN; i += kTiledThreads) {
            const int k = i / kTileN, c = i % kTileN;
            const int gk = k0 + k, gc = col0 + c;
            smem_store(&Bs[k][c], (gk < K && gc < N) ? B[gk * N + gc] : 0.f);
        }
        __syncthreads();  // the tile is complete before anyone reads it
#pragma unroll
        for (int k = 0; k < kTileK; ++k) {
            float a[kThreadM], b[kThreadN];
#pragma unroll
            for (int i = 0; i < kThreadM; ++i) a[i] = smem_load(&As[k][ty * kThreadM + i]);
#pragma unroll
            for (int j = 0; j < kThreadN; ++j) b[j] = smem_load(&Bs[k][tx * kThreadN + j]);
#pragma unroll
            for (int i = 0; i < kThreadM; ++i)
#pragma unroll
                for (int j = 0; j < kThreadN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();  // everyone is done reading before the next tile overwrites it
    }
#pragma unroll
    for (int i = 0; i < kThreadM; ++i) {
        const int r = row0 + ty * kThreadM + i;
#pragma unroll
        for (int j = 0; j < kThreadN; ++j) {
            const int c = col0 + tx * kThreadN + j;
            if (r < M && c < N) C[r * N + c] = acc[i][j];
        }
    }
}

constexpr int kWmmaTile = 32;  // block tile: 2 x 2 warps of 16 x 16

// grid = (ceil(N / 32), ceil(M / 32)), block = 128 (4 warps).
// Warp w owns the 16 x 16 sub-tile (w / 2, w % 2) of the block's 32 x 32 tile.
// A and B tiles are staged in shared memory already converted to the input
// type, zero-filled past the matrix edges, so the fragment loads never need
// bounds checks; C goes out through shared memory for the same reason.
template <typename T>
__global__ void __launch_bounds__(128)
gemm_wmma(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, int M, int N, int K) {
    using namespace nvcuda;
    using In = WmmaInput<T>;
    using S = typename In::Stored;
    constexpr int kK = In::kK;
    // wmma loads and stores want 256-bit aligned tile pointers.
    __shared__ __align__(32) S As[kWmmaTile][kK];
    __shared__ __align__(32) S Bs[kK][kWmmaTile];
    __shared__ __align__(32) float Cs[kWmmaTile][kWmmaTile];
    const int t = threadIdx.x, warp = t / kWarpSize;
    const int wr = (warp / 2) * 16, wc = (warp % 2) * 16;
    const int row0 = blockIdx.y * kWmmaTile, col0 = blockIdx.x * kWmmaTile;

    wmma::fragment<wmma::accumulator, 16, 16, kK, float> acc;
    wmma::fill_fragment(acc, 0.f);
    for (int k0 = 0; k0 < K; k0 += kK) {
        for (int i = t; i < kWmmaTile * kK; i += blockDim.x) {
            const int r = i / kK, k = i % kK;
            const int gr = row0 + r, gk = k0 + k;
            smem_store(&As[r][k], In::convert((gr < M && gk < K) ? A[gr * K + gk] : 0.f));
        }
        for (int i = t; i < kK * kWmmaTile; i += blockDim.x) {
            const int k = i / kWmmaTile, c = i % kWmmaTile;
            const int gk = k0 + k, gc = col0 + c;
            smem_store(&Bs[k][c], In::convert((gk < K && gc < N) ? B[gk * N + gc] : 0.f));
        }
        __syncthreads();
        wmma::fragment<wmma::matrix_a, 16, 16, kK, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, kK, T, wmma::row_major> b;
        wmma::load_matrix_sync(a, &As[wr][0], kK);
        wmma::load_matrix_sync(b, &Bs[0][wc], kWmmaTile);
        wmma::mma_sync(acc, a, b, acc);
        __syncthreads();
    }
    wmma::store_matrix_sync(&Cs[wr][wc], acc, kWmmaTile, wmma::mem_row_major);
    __syncthreads();
    for (int i = t; i < kWmmaTile * kWmmaTile; i += blockDim.x) {
        const int r = i / kWmmaTile, c = i % kWmmaTile;
        if (row0 + r < M && col0 + c < N) C[(row0 + r) * N + col0 + c] = smem_load(&Cs[r][c]);
    }
}

}  // namespace fcn
