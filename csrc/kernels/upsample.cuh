// upsample.cuh: transposed convolution (PyTorch's conv_transpose2d with
// groups 1, no dilation / output_padding), NCHW float32, weight
// C_in x C_out x R x S. FCN's upscore layers (k4 s2, k16 s8, k32 s16, k64 s32).
//
// Gather form. Input pixel iy adds x[iy] * w[r] to output row u = s * iy + r
// of the full (unpadded) output, (H - 1) * s + R rows. Scattering it that way
// makes R x S writes per input and needs atomics; instead each output finds
// its own taps: r = u mod s + j * s and iy = u / s - j for j = 0, 1, ...
// while r < R and 0 <= iy < H. That is at most ceil(R / s) x ceil(S / s)
// taps per input channel (2 x 2 for FCN's k = 2s), no atomics, and the same
// bits on every run.
// The kernel computes an Ho x Wo window of the full output starting at
// (oy0, ox0): padding p is the window at offset p, and the final upsample of
// FCN computes only the window its crop keeps. A window may reach past the
// full output: outputs there have no taps and come out 0 (bias aside), which
// conv2d's input gradient relies on for PyTorch's implied output_padding.
//
//   conv_transpose2d_gather<false> ("gather"): any weights; C_in x taps FMAs
//     per output.
//   conv_transpose2d_gather<true> ("bilinear"): per-channel weights
//     (w[i, j] == 0 for i != j, C_in == C_out), as FCN's frozen bilinear
//     upsampling: only ci = co contributes, 1/C of the work. Off-diagonal
//     weights are never read, so a NaN/inf input does not spread to other
//     channels through 0 * inf as in the dense operation.
//
// head.cuh runs the "bilinear" gather (taps_of, accumulate_taps) fused with
// the softmax / argmax over channels: FCN's last stage, without storing the
// full-resolution scores.
//
// The same gather is conv2d's input gradient (conv2d_backward.cuh): with
// kMasked, x is multiplied on the fly by (mask > 0) (the ReLU of the forward
// convolution, mask = its output y, same shape as x), so the masked gradient
// is never written. mask is ignored (may be null) without kMasked.
#pragma once
#include "common.cuh"

namespace fcn {

constexpr int kUpsampleThreads = 256;

// The taps of one output coordinate u along one axis: r = first + j * s meets
// input (in0 - j) for j in [lo, hi] (empty when hi < lo).
struct Taps {
    int first, in0, lo, hi;
};

__device__ __forceinline__ Taps taps_of(int u, int s, int R, int H) {
    Taps t;
    t.first = u % s;
    t.in0 = u / s;
    t.lo = max(0, t.in0 - H + 1);
    // t.first >= R: no tap at all (and (R - 1 - first) / s would truncate to 0)
    t.hi = t.first < R ? min(t.in0, (R - 1 - t.first) / s) : -1;
    return t;
}

// acc plus the taps (ty, tx) of one input plane xp (H x W, row length W) with
// one R x S filter wp, in a fixed order (rows, then columns, one fmaf each):
// every kernel that gathers through it (head.cuh too) gets the same bits for
// the same output. kMasked: x taken as 0 where mp (x's shape) is not > 0.
template <bool kMasked>
__device__ __forceinline__ float accumulate_taps(float acc, const float* __restrict__ xp,
                                                 const float* __restrict__ mp, const float* __restrict__ wp,
                                                 const Taps& ty, const Taps& tx, int W, int S, int sy, int sx) {
    for (int jy = ty.lo; jy <= ty.hi; ++jy) {
        const int row = (ty.in0 - jy) * W;
        const float* wrow = wp + (ty.first + jy * sy) * S;
        for (int jx = tx.lo; jx <= tx.hi; ++jx) {
            float v = __ldg(xp + row + tx.in0 - jx);
            if (kMasked && !(__ldg(mp + row + tx.in0 - jx) > 0.f)) v = 0.f;
            acc = fmaf(v, __ldg(wrow + tx.first + jx * sx), acc);
        }
    }
    return acc;
}

// grid = ceil(N * C_out * Ho * Wo / 256), block = 256; thread i owns output i
// (ox fastest: a warp shares input rows and reads at most s distinct weights
// per tap row, both cached). bias may be null.
template <bool kDiagonal, bool kMasked = false>
__global__ void __launch_bounds__(kUpsampleThreads)
conv_transpose2d_gather(const float* __restrict__ x, const float* __restrict__ mask, const float* __restrict__ w,
                        const float* __restrict__ bias, float* __restrict__ y, int total, int Cin, int H, int W,
                        int Cout, int R, int S, int sy, int sx, int oy0, int ox0, int Ho, int Wo) {
    const unsigned t = blockIdx.x * blockDim.x + threadIdx.x;  // unsigned: total may be close to INT_MAX
    if (t >= unsigned(total)) return;
    const int i = int(t);
    const int ox = i % Wo, oy = (i / Wo) % Ho;
    const int co = (i / (Wo * Ho)) % Cout, n = i / (Wo * Ho * Cout);
    const Taps ty = taps_of(oy + oy0, sy, R, H);
    const Taps tx = taps_of(ox + ox0, sx, S, W);

    float acc = 0.f;
    const int ci_begin = kDiagonal ? co : 0, ci_end = kDiagonal ? co + 1 : Cin;
    for (int ci = ci_begin; ci < ci_end; ++ci) {
        const float* xp = x + (n * Cin + ci) * H * W;
        acc = accumulate_taps<kMasked>(acc, xp, kMasked ? mask + (xp - x) : nullptr, w + (ci * Cout + co) * R * S,
                                       ty, tx, W, S, sy, sx);
    }
    y[i] = bias != nullptr ? acc + __ldg(bias + co) : acc;
}

}  // namespace fcn
