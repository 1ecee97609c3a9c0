// launchers.h: every host launcher, one block per op family, in the order
// of csrc/bindings.cpp. A launcher takes raw device pointers (host pointers
// in the emulator build), sizes and a stream; the Python layer has already
// validated everything (fcn_cuda/_validate.py). It picks the grid, launches
// through fcn::launch and throws std::runtime_error on a launch error.
//
// The convention for a launcher's arguments, and its binding's:
//   (variant, shape, [splits,] inputs..., outputs..., workspace, [flags], stream)
// * The sizes of an op family are one struct of kernels/shapes.h (ConvShape,
//   TransposeShape, PoolShape, ScoreCropShape, CrfTermShape), taken as
//   `const ConvShape& g`. bindings.cpp binds each as a module_local py::class_
//   (_host and _cuda both load) whose constructor checks it; fcn_cuda/ops
//   builds it once from the validated arrays, e.g. be.ext.ConvShape(x.shape,
//   w.shape, stride, padding). A new variant adds no size arguments. The conv
//   kernels take the struct as it is; older kernels still take its ints.
// * An operand whose element type varies (conv2d's w: float32 or bf16) is a
//   `const void*` beside a WeightType, not a second entry point per type.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/shapes.h"

#if defined(FCN_EMU)
#include "emu/emu.h"
#else
#include <cuda_runtime_api.h>  // cudaStream_t and dim3, without the CUDA language
#endif

namespace fcn {

// The element type of a convolution's filters.
enum class WeightType { fp32, bf16 };

// ---- elementwise.cu  (variant: "scalar", or "float4" with x and y 16-byte aligned)
void launch_axpy(const char* variant, int n, float a, const float* x, float* y, cudaStream_t stream);

// ---- reduce.cu
// partial must hold block_sum_partials(n) floats; out receives the sum.
int block_sum_partials(int n);
void launch_block_sum(const float* x, float* partial, float* out, int n, cudaStream_t stream);
void launch_warp_segment_sum(const float* x, float* sums, int n, int kind, int width, cudaStream_t stream);
void launch_warp_shuffle(const float* x, float* y, int n, int kind, int arg, int width, cudaStream_t stream);

// ---- gemm.cu  (variant: "naive", "tiled", "wmma_tf32", "wmma_f16", "wmma_bf16")
void launch_gemm(const char* variant, const float* A, const float* B, float* C, int M, int N, int K,
                 cudaStream_t stream);

// ---- metrics.cu  (hist: C x C, accumulated into; C <= 64)
void launch_confusion_matrix(const int* gt, const int* pred, int n, int C, unsigned long long* hist,
                             cudaStream_t stream);

// ---- probes.cu
// FCN_CUDA_SYNC_LAUNCHES as fcn::launch reads it (common.cuh); throws on a value other than 0 or 1.
bool launch_sync_enabled();
void launch_barrier_rotate(const float* x, float* y, int n, int rounds, cudaStream_t stream);
void launch_divergent_barrier(float* y, cudaStream_t stream);
void launch_early_exit_barrier(float* y, cudaStream_t stream);
void launch_missing_lane_shuffle(float* y, cudaStream_t stream);
void launch_deadlock_probe(float* y, cudaStream_t stream);
void launch_atomics_probe(const int* v, int n, int bins, int cas_threads, int* counts, int* maximum, int* cas_count,
                          float* fsum, cudaStream_t stream);
void launch_atomic_sum(const float* x, int n, float* out, cudaStream_t stream);
void launch_tf32_round(const float* x, float* y, int n, cudaStream_t stream);
void launch_index_probe(int* out, dim3 grid, dim3 block, cudaStream_t stream);
void launch_dynamic_smem_probe(const float* x, float* y, unsigned* misalignment, int blocks, int threads,
                               cudaStream_t stream);
void launch_out_of_bounds_probe(const float* x, float* y, int n, int kind, cudaStream_t stream);
void launch_race_probe(float* y, int kind, bool ordered, cudaStream_t stream);
void launch_failing_block_probe(float* y, int blocks, int threads, int fail, cudaStream_t stream);
void launch_cp_async_probe(const float* src, float* out, int bytes, int src_bytes, bool cg, int mode,
                           cudaStream_t stream);
void launch_ldmatrix_probe(const std::uint16_t* m, const int* rows, std::uint32_t* out, int num, bool trans,
                           cudaStream_t stream);
void launch_mma_probe(const std::uint32_t* a, const std::uint32_t* b, const float* c, float* d, int kind,
                      cudaStream_t stream);
void launch_smem_bank_probe(float* out, int stride, int width, bool store, int repeat, cudaStream_t stream);

// ---- probes_sm90.cu  (the Hopper instructions' probes; kernels/probes_sm90.cuh)
void launch_mbarrier_trace_probe(int* out, cudaStream_t stream);
void launch_mbarrier_pipeline_probe(const float* x, float* y, int rounds, bool consumer_waits, cudaStream_t stream);
void launch_mbarrier_fault_probe(int kind, float* y, cudaStream_t stream);
void launch_tma_load_probe(const void* global, bool bf16, int map_rank, const uint64_t* dims, const uint64_t* strides,
                           const uint32_t* box, int swizzle, int rank, const int* coords, unsigned expect_bytes,
                           int dst_offset, unsigned bytes, int fault, unsigned char* out, cudaStream_t stream);
void launch_tma_ring_probe(const float* x, float* y, int rounds, bool consumer_waits, cudaStream_t stream);

// ---- probes_wgmma.cu  (the warpgroup MMA's probes; kernels/probes_wgmma.cuh)
// a, b: (offset past the 1024-aligned base, LBO, SBO, swizzle) of each operand's descriptor.
struct WgmmaProbeArgs {
    int n;
    bool bf16, rs;
    const unsigned char* image;
    int image_bytes;
    int a[4], b[4];
    const std::uint32_t* a_regs;  // 4 per thread of the warpgroup (RS form)
    const float* d_init;          // N / 2 per thread
    float *out, *out2;            // N / 2 per thread
    bool accumulate;
    int mode, threads;
};
void launch_wgmma_probe(const WgmmaProbeArgs& args, cudaStream_t stream);
// a, b: 64 x 32 floats each (B as its K-major rows); out: 128 x 32.
void launch_wgmma_tma_probe(const float* a, const float* b, float* out, bool tma_early, cudaStream_t stream);
void launch_wgmma_descriptor_probe(const int* op, std::uint64_t* out, cudaStream_t stream);

// ---- scan.cu  (exclusive prefix sum of ints; kernels/scan.cuh)
// data (n ints, their partial sums within int) becomes its exclusive scan in place; *total (when non-null) =
// the sum of all n. workspace: scan_workspace(n) ints (none, may be null, when 0).
int scan_workspace(int n);
void launch_exclusive_scan(int* data, int n, int* workspace, int* total, cudaStream_t stream);

// ---- sort.cu  (stable radix sort of key-value pairs; kernels/sort.cuh)
// Sorts n (key, value) pairs by the low `bits` bits of the keys, stably; the _alt buffers (n each) are the
// other half of each pass's ping-pong. Returns 1 when the result is in the _alt buffers, 0 when in keys /
// vals. workspace: sort_pairs_workspace(n) ints.
int sort_pairs_workspace(int n);
int launch_sort_pairs(unsigned long long* keys, int* vals, unsigned long long* keys_alt, int* vals_alt,
                      int* workspace, int n, int bits, cudaStream_t stream);

// ---- conv2d.cu
// g: every size of the convolution (x N x C x H x W, w K x C x R x S, y N x K x P x Q). w is float32, or with
// wt = bf16 the K x C x R x S bf16 bit patterns of launch_conv2d_to_bf16, which only variant "igemm_bf16"
// reads (bit for bit what it gives on the float32 w). b may be null.
// variant: ops.CONV2D_VARIANTS ("direct", "igemm", "small_c", "igemm_tf32", "igemm_bf16").
void launch_conv2d(const char* variant, const ConvShape& g, const float* x, const void* w, WeightType wt,
                   const float* b, float* y, bool relu, cudaStream_t stream);
// max_pool2d(relu(conv2d(...)), 2, 2, ceil_mode=True) without storing the conv output. variant: "igemm",
// "igemm_tf32", "igemm_bf16"; y is N x K x ceil(P/2) x ceil(Q/2).
void launch_conv2d_relu_maxpool(const char* variant, const ConvShape& g, const float* x, const void* w,
                                WeightType wt, const float* b, float* y, cudaStream_t stream);
// Split-K for variant "igemm", "igemm_tf32", "igemm_bf16": the depth in `splits` (>= 1) ranges, their partial
// outputs in workspace (splits x N x K x P x Q floats), summed in split order into y with bias and ReLU.
void launch_conv2d_split(const char* variant, const ConvShape& g, int splits, const float* x, const void* w,
                         WeightType wt, const float* b, float* y, float* workspace, bool relu, cudaStream_t stream);
// The wgmma variants ("wgmma_tf32", "wgmma_bf16"; sm_90a, any host): mode 0 plain, 1 ReLU, 2 ReLU + the
// 2 x 2 max pool (y N x K x ceil(P/2) x ceil(Q/2), splits 1). w_reordered holds R*S x K x
// conv2d_wgmma_channels(g) elements (floats for tf32, bf16 for bf16), rewritten on every call; with
// splits > 1 the partials go to workspace (splits x N x K x P x Q floats) and are summed in split order.
// Stride 1, W a multiple of 4, x 16-byte aligned (checked in Python).
int conv2d_wgmma_channels(const ConvShape& g);
// Whether the wgmma kernels' code for the current GPU is sm_90a's (a one-thread probe; always on the host).
bool conv2d_wgmma_code_loaded();
void launch_conv2d_wgmma(const char* variant, const ConvShape& g, int splits, int mode, const float* x,
                         const float* w, const float* b, float* y, void* w_reordered, float* workspace,
                         cudaStream_t stream);
// w_bf16[i] = w[i] rounded to bf16 (nearest even), the rounding igemm_bf16 applies to fp32 weights; n elements.
void launch_conv2d_to_bf16(const float* w, std::uint16_t* w_bf16, int n, cudaStream_t stream);
// y = conv2d(x * (x_mask > 0), w) with the fp32 igemm, no bias or ReLU (x_mask: x's shape; where
// !(x_mask > 0), x reads as 0): conv2d_grad_input's stride-1 path.
void launch_conv2d_masked_input(const ConvShape& g, const float* x, const float* x_mask, const float* w, float* y,
                                cudaStream_t stream);

// ---- head.cu  (fused final upsample + crop + softmax/argmax)
// x: N x C x H x W coarse scores, w: C x C x R x S per-channel (only w[c, c] read; t.Cin = t.Cout = C).
// labels (N x Ho x Wo) = argmax over c of t's window of conv_transpose2d(x, w); probs (N x C x Ho x Wo, may
// be null) its softmax over c.
void launch_upsample_argmax(const TransposeShape& t, const float* x, const float* w, int* labels, float* probs,
                            cudaStream_t stream);

// ---- pool.cu
// indices may be null (no argmax wanted).
void launch_max_pool2d(const PoolShape& g, const float* x, float* y, int* indices, cudaStream_t stream);

// ---- upsample.cu  (conv_transpose2d, bilinear)
// variant: "gather", "bilinear" (diagonal weights). Computes t's Ho x Wo window at (oy0, ox0) of the full
// (H - 1) * s + R output; padding p is the window at offset p. bias may be null.
void launch_conv_transpose2d(const char* variant, const TransposeShape& t, const float* x, const float* w,
                             const float* bias, float* y, cudaStream_t stream);

// ---- crop.cu  (crop_add, fused score head)
void launch_crop_add(const float* a, const float* b, float* out, int planes, int H, int W, int Hb, int Wb, int oy,
                     int ox, cudaStream_t stream);
// out = up + scale * (w . feat's window) + bias; bias may be null.
void launch_score_crop_add(const ScoreCropShape& g, const float* up, const float* feat, const float* w,
                           const float* bias, float* out, float scale, cudaStream_t stream);

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

// ---- backward  (conv2d_backward.cu, pool_backward.cu, crop_backward.cu, loss.cu, dropout.cu, sgd.cu)
// dx (N x C x H x W) = conv2d's input gradient from dy (N x K x P x Q). mask (the forward ReLU output,
// N x K x P x Q) may be null: dy * (mask > 0). With w_flipped (C x K x R x S floats of workspace, non-null
// only for stride 1 and padding <= R-1, S-1): w flipped there, then a convolution of dy by it
// (launch_conv2d_masked_input); else upsample.cuh's gather kernel on the H x W window at (ph, pw).
void launch_conv2d_grad_input(const ConvShape& g, const float* dy, const float* w, const float* mask, float* dx,
                              float* w_flipped, cudaStream_t stream);
// The number of depth splits of conv2d_grad_weight for M = N*P*Q pixels: workspace must hold
// splits * K * C*R*S floats when splits > 1 (unused, may be null, when 1).
int conv2d_grad_weight_splits(int M, int K, int CRS);
// dw (K x C x R x S) = alpha * sum over n, p, q of dy x im2col(x); g.P, g.Q need not be conv_out's (negative
// padding is an offset: the cropped score convolution).
void launch_conv2d_grad_weight(const ConvShape& g, const float* x, const float* dy, const float* mask, float* dw,
                               float* workspace, float alpha, cudaStream_t stream);
// db (K) = sum of dy (N x K x PQ) over n and the pixels; mask may be null.
void launch_bias_grad(const float* dy, const float* mask, float* db, int N, int K, int PQ, cudaStream_t stream);
void launch_relu_backward(const float* dy, const float* y, float* dx, int n, cudaStream_t stream);
void launch_max_pool2d_backward(const PoolShape& g, const float* dy, const int* indices, float* dx,
                                cudaStream_t stream);
void launch_crop_backward(const float* g, float* db, int planes, int H, int W, int Hb, int Wb, int oy, int ox,
                          cudaStream_t stream);
// dfeat (N x C x Hf x Wf) = scale * w^T grad_out inside the window, 0 outside.
void launch_score_feat_grad(const ScoreCropShape& g, const float* grad_out, const float* w, float* dfeat, float scale,
                            cudaStream_t stream);
// workspace: softmax_xent_workspace(N * HW) floats; loss: one float (the weighted sum over valid pixels);
// weight: C floats, or nullptr for all 1.
int softmax_xent_workspace(int pixels);
void launch_softmax_xent(const float* scores, const int* labels, const float* weight, float* grad, float* workspace,
                         float* loss, int N, int C, int HW, int ignore, float inv_divisor, cudaStream_t stream);
void launch_dropout(const float* x, float* y, int n, unsigned long long offset, unsigned seed, unsigned step,
                    unsigned threshold, float scale, cudaStream_t stream);
void launch_philox_probe(const unsigned* in, unsigned* out, int n, cudaStream_t stream);
void launch_sgd_step(float* w, const float* g, float* v, int n, float lr, float momentum, float weight_decay,
                     cudaStream_t stream);

// ---- crf.cu  (dense CRF: fcn_cuda.dense_crf; kernels/crf.cuh)
// d: 2 (Gaussian term: x, y) or 5 (bilateral: x, y, R, G, B). A lattice of an H x W image has P points (N = H*W
// pixels, and pydensecrf's padding point of feature 0 when P = N + 1) and (d+1) * P entries e = r*P + point.
// The bits of the lattice's sort keys, and whether pydensecrf's 16-bit keys hold them (fcn_cuda refuses otherwise).
int crf_key_bits(int d, int H, int W, float sxy, float srgb, bool* fits_int16);
// Per entry: barycentric weight, sort key, and the entry itself (what the sort carries along).
void launch_crf_lattice_points(const CrfTermShape& t, const unsigned char* img, float* bary, unsigned long long* keys,
                               int* entries, cudaStream_t stream);
// The entries are sorted with launch_sort_pairs. first[i]: how many distinct keys come before sorted entry i;
// *count = the number of vertices M; workspace: scan_workspace(n) ints.
void launch_crf_vertex_count(const unsigned long long* keys, int n, int* first, int* workspace, int* count,
                             cudaStream_t stream);
// The lattice's tables from the sorted entries: vertex_start (M + 1), vertex_keys (M), vertex_of ((d+1) * P,
// by entry), splat_pixel / splat_weight ((d+1) * P, sorted order), neighbours ((d+1) x M int pairs).
void launch_crf_lattice_tables(const CrfTermShape& t, const unsigned long long* keys, const int* entries,
                               const int* first, int M, const float* bary, int* vertex_start,
                               unsigned long long* vertex_keys, int* vertex_of, int* splat_pixel,
                               float* splat_weight, int* neighbours, cudaStream_t stream);
// A built lattice, as the filtering launchers read it (N = H*W of its term).
struct CrfLatticeView {
    int d, N, P, M;
    const float* bary;
    const int* vertex_of;
    const int* vertex_start;
    const int* splat_pixel;
    const float* splat_weight;
    const int* neighbours;
};
// norm (N) = 1 / sqrt(K 1 + 1e-20); values_a / values_b: M + 1 floats each.
void launch_crf_lattice_norm(const CrfLatticeView& L, float* values_a, float* values_b,
                             float* norm, cudaStream_t stream);
// t_out = t_in + compat * norm . K (norm . Q), Q and t pixel-major N x V (V: 1, 2 or a multiple of 4);
// values_a / values_b: (M + 1) * V floats each. t_out may be t_in.
void launch_crf_lattice_message(const CrfLatticeView& L, const float* norm, const float* Q, int V, float compat,
                                float* values_a, float* values_b, const float* t_in, float* t_out,
                                cudaStream_t stream);
// probs: C x N -> t0 (N x V) = log clip(probs, 1e-5, 1) and Q (N x V) = its softmax.
void launch_crf_unary(const float* probs, int N, int C, int V, float* t0, float* Q, cudaStream_t stream);
// Q (N x V) = softmax(t) over the first C lanes; or, with out (C x N) given, written there instead.
// y = the CRF's own exp (log false) or log (log true) of x, elementwise (their tests).
void launch_crf_math_probe(const float* x, float* y, int n, bool log, cudaStream_t stream);
void launch_crf_softmax(const float* t, int N, int C, int V, float* Q, float* out, cudaStream_t stream);
// The naive rung: features f (N x d) and norm (N), then the exact message of one term.
void launch_crf_naive_setup(const unsigned char* img, int H, int W, int d, float sxy, float srgb, float* f,
                            float* norm, cudaStream_t stream);
void launch_crf_naive_message(const float* f, const float* norm, int d, int N, const float* Q, int C, int V,
                              float compat, const float* t_in, float* t_out, cudaStream_t stream);

}  // namespace fcn
