// launchers.h: every host launcher, one block per op family, in the order
// of csrc/bindings.cpp. A launcher takes raw device pointers (host pointers
// in the emulator build), sizes and a stream; the Python layer has already
// validated everything (fcn_cuda/_validate.py). It picks the grid, launches
// through fcn::launch and throws std::runtime_error on a launch error.
#pragma once
#include <cstddef>

#if defined(FCN_EMU)
#include "emu/emu.h"
#else
#include <cuda_runtime_api.h>  // cudaStream_t and dim3, without the CUDA language
#endif

namespace fcn {

// ---- elementwise.cu
void launch_axpy(int n, float a, const float* x, float* y, cudaStream_t stream);

// ---- reduce.cu
// partial must hold block_sum_partials(n) floats; out receives the sum.
int block_sum_partials(int n);
void launch_block_sum(const float* x, float* partial, float* out, int n, cudaStream_t stream);
void launch_warp_segment_sum(const float* x, float* sums, int n, int kind, int width, cudaStream_t stream);
void launch_warp_shuffle(const float* x, float* y, int n, int kind, int arg, int width, cudaStream_t stream);

// ---- gemm.cu  (variant: "naive", "tiled", "wmma_tf32", "wmma_bf16")
void launch_gemm(const char* variant, const float* A, const float* B, float* C, int M, int N, int K,
                 cudaStream_t stream);

// ---- probes.cu
void launch_barrier_rotate(const float* x, float* y, int n, int rounds, cudaStream_t stream);
void launch_divergent_barrier(float* y, cudaStream_t stream);
void launch_missing_lane_shuffle(float* y, cudaStream_t stream);
void launch_atomics_probe(const int* v, int n, int bins, int* counts, int* maximum, int* cas_count, float* fsum,
                          cudaStream_t stream);
void launch_index_probe(int* out, dim3 grid, dim3 block, cudaStream_t stream);
void launch_dynamic_smem_probe(const float* x, float* y, unsigned* misalignment, int blocks, int threads,
                               cudaStream_t stream);
void launch_out_of_bounds_probe(const float* x, float* y, int n, int kind, cudaStream_t stream);

// ---- conv2d.cu

// ---- pool.cu

// ---- upsample.cu  (conv_transpose2d, bilinear)

// ---- crop.cu  (crop_add, fused score head)

// ---- softmax.cu  (softmax, argmax)
// variant: "scalar" or "float4" (H*W a multiple of 4, x 16-byte aligned).
// probs (N x C x H x W) and labels (N x H x W) may each be null (not both):
// softmax, argmax or both from one pass over x.
void launch_softmax_argmax(const char* variant, const float* x, float* probs, int* labels, int N, int C, int HW,
                           cudaStream_t stream);

// ---- preprocess.cu
// img: N x H x W x 3 uint8 RGB -> out: N x 3 x H x W float32 BGR minus the mean.
void launch_preprocess(const unsigned char* img, float* out, int N, int HW, float mean_b, float mean_g,
                       float mean_r, cudaStream_t stream);

}  // namespace fcn
