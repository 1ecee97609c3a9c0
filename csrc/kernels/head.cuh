// head.cuh: FCN's last stage in one kernel. The final bilinear upsample (a
// per-channel transposed convolution, stride s, R x S filter), the crop that
// follows it and the softmax / argmax over the classes, from the coarse score
// map straight to the full-resolution result:
//
//   up[n, c, y, x]    = conv_transpose2d(x, w, s)[n, c, oy0 + y, ox0 + x]   (w per-channel)
//   labels[n, y, x]   = the lowest c with up[n, c, y, x] == max_c            (torch.argmax)
//   probs[n, c, y, x] = exp(up[n, c, y, x] - max_c) / sum_c' exp(up[n, c', y, x] - max_c)
//
// Layout: x (the coarse scores) N x C x H x W, w C x C x R x S of which only
// the diagonal filters w[c, c] are read, labels N x Ho x Wo int32, probs
// N x C x Ho x Wo float32.
//
// Unfused, the upsample writes N x C x Ho x Wo floats (21 x 500 x 500 floats
// = 21 MB per VOC-sized image) that argmax reads back once and softmax twice.
// Here one pixel's C upsampled values exist one at a time, in a register,
// while they are folded into the running max / sum; the coarse map (C x h x w,
// 64x smaller at stride 8) is what the warps actually read, from cache.
//
//   upsample_argmax<kProbs> (the one variant): one thread per output pixel.
//     Per channel it gathers the <= ceil(R/s) x ceil(S/s) taps (2 x 2 for
//     FCN's k = 2s) with upsample.cuh's taps_of / accumulate_taps, the code
//     and order of the 'bilinear' gather, so every value is bit-identical to
//     ops.conv_transpose2d_window's; the fold is softmax.cuh's fold_channel,
//     so labels equal ops.argmax on those values exactly (ties, NaN, inf).
//     kProbs: a second pass recomputes each value (C x 4 FMAs on cached data)
//     instead of holding C values per thread, which for a runtime C would
//     mean local memory; w must be per-channel (checked in Python).
#pragma once
#include "common.cuh"
#include "softmax.cuh"
#include "upsample.cuh"

namespace fcn {

constexpr int kHeadThreads = 256;

// grid = ceil(N * Ho * Wo / 256), block = 256; thread i owns output pixel i
// (ox fastest: per channel a warp's 32 pixels read a handful of neighbouring
// coarse values, 32 / s + ceil(S / s) + 1 at most per tap row, shared through
// the cache, and its label / probability stores are coalesced). probs may be
// null when kProbs is false.
template <bool kProbs>
__global__ void __launch_bounds__(kHeadThreads)
upsample_argmax(const float* __restrict__ x, const float* __restrict__ w, int* __restrict__ labels,
                float* __restrict__ probs, int pixels, int C, int H, int W, int R, int S, int sy, int sx, int oy0,
                int ox0, int Ho, int Wo) {
    const unsigned t = blockIdx.x * blockDim.x + threadIdx.x;  // unsigned: pixels may be close to INT_MAX
    if (t >= unsigned(pixels)) return;
    const int i = int(t);
    const int HWo = Ho * Wo;
    const int n = i / HWo, p = i - n * HWo;
    const int oy = p / Wo, ox = p - oy * Wo;
    // The taps depend on the position only: found once, used for every channel.
    const Taps ty = taps_of(oy + oy0, sy, R, H);
    const Taps tx = taps_of(ox + ox0, sx, S, W);
    const int plane = H * W;
    const int diag = (C + 1) * R * S;  // from filter w[c, c] to w[c + 1, c + 1]
    const float* xn = x + n * C * plane;

    RunningMax st;
    for (int c = 0; c < C; ++c)
        fold_channel<kProbs>(st, accumulate_taps<false>(0.f, xn + c * plane, nullptr, w + c * diag, ty, tx, W, S,
                                                        sy, sx), c);
    labels[i] = st.label;

    if (kProbs) {
        // As channel_softmax: a pixel of only -inf gets exp(-inf - -inf) =
        // NaN below, as torch; every other pixel has sum >= 1.
        const float inv_sum = 1.f / st.sum;
        float* out = probs + n * C * HWo + p;
        for (int c = 0; c < C; ++c) {
            const float v = accumulate_taps<false>(0.f, xn + c * plane, nullptr, w + c * diag, ty, tx, W, S, sy, sx);
            out[c * HWo] = expf(v - st.max) * inv_sum;
        }
    }
}

}  // namespace fcn
