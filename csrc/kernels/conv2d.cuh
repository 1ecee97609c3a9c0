// conv2d.cuh: y = relu?(conv2d(x, w) + b), PyTorch's F.conv2d (cross-correlation,
// zero padding, no dilation, one group), with the ReLU optional.
//
// Layout (float32, NCHW, C-contiguous):
//   x: N x C x H x W    w: K x C x R x S    b: K (or null)    y: N x K x P x Q
//   P = (H + 2*ph - R) / sh + 1,  Q = (W + 2*pw - S) / sw + 1
//   y[n][k][p][q] = b[k] + sum over c, r, s of
//                   w[k][c][r][s] * x[n][c][p*sh - ph + r][q*sw - pw + s]   (0 outside x)
//
// The implicit GEMM view, in NCHW:
//   GEMM M = N*P*Q  rows:    one output pixel   m  = (n, p, q)
//   GEMM N = K      columns: one output channel k
//   GEMM K = C*R*S  depth:   one filter tap     kk = (c, r, s)
//   A[m][kk] = x[n][c][p*sh - ph + r][q*sw - pw + s]   im2col(x), gathered on the fly, never stored
//   B[kk][k] = w[k][kk]                                w is K x CRS row-major, so B is w transposed
//   C[m][k]  = y[n][k][p][q]                           column k of C is the feature map of channel k
//
// Variants (the ladder; on a GPU: docs/performance.md, rungs 1, 4-8; rung 9 is conv2d_mma.cuh):
//   conv2d_direct: one thread per output reads its C*R*S taps from global memory. Any shape.
//   conv2d_igemm: gemm.cuh's sgemm_tiled over the GEMM view: a 64 x 64 C tile per block of 256
//     threads, depth in 16-deep stages through double-buffered shared memory, the next stage
//     prefetched into registers, a 4 x 4 register block per thread, bias and ReLU in the epilogue.
//     Narrow layers take a tile of the same 4096 outputs: 128 x 32 for K <= 32, 256 x 16 for
//     K <= 16. An optional mask zeroes x where !(mask > 0) as A is gathered (conv2d_backward.cuh's
//     input gradient). Any shape; K <= 65535 * 64.
//   conv2d_igemm_wmma<T> (igemm_tf32, igemm_bf16): conv2d_igemm's pipeline (conv2d_igemm_stages)
//     with the FMA block swapped for wmma: 8 warps each own two 16 x 16 fp32 accumulators, fed from
//     As[kk][m] (column-major A) and Bs[kk][k] (row-major B). Operands are rounded once, when
//     staged (tf32: 10 mantissa bits; bf16: 7, fp32's range). Any shape.
//   igemm_bf16 on bf16 weights (ops.Bf16Weights, made by conv2d_to_bf16): the B loader reads bf16
//     and stages it as it is: bit for bit igemm_bf16 on the fp32 w, half the weight bytes. Inference.
//   Split-K (every igemm variant): grid.z cuts the depth into ranges of whole stages
//     (conv2d_split_depth); each writes a partial sum to a splits x N x K x P x Q workspace, and
//     conv2d_split_sum adds them in order, then bias and ReLU: the same bits on every run.
//
// Epilogues (ConvOut, shared by the igemm variants): plain, ReLU, or ReLU + FCN's 2x2 stride-2
// ceil-mode max pool, writing only the pooled map: each max(v, 0) is atomicMax'ed as an int into a
// cell conv2d_zero set to +0. Non-negative floats order like their bits (v is never -0: sums start
// at +0; fmaxf maps a NaN sum to 0 as max_pool2d(relu) does), so the result equals
// max_pool2d(conv2d(relu=True)) bit for bit, on every run.
#pragma once
#include <type_traits>

#include "common.cuh"
#include "wmma_input.cuh"

namespace fcn {

// ---------------------------------------------------------------- direct

// grid = ceil(N*K*P*Q / 256), block = 256.
// Thread i computes y's element i in NCHW order, so consecutive threads write
// consecutive q (coalesced stores) and read neighbouring columns of x.
__global__ void __launch_bounds__(256)
conv2d_direct(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
              float* __restrict__ y, ConvShape g, int relu) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;  // Python leaves a block of int headroom
    if (i >= g.N * g.K * g.P * g.Q) return;
    const int q = i % g.Q, p = i / g.Q % g.P, k = i / (g.Q * g.P) % g.K, n = i / (g.Q * g.P * g.K);
    const int ih0 = p * g.sh - g.ph, iw0 = q * g.sw - g.pw;
    // Clip the filter window to the image once, so the tap loops need no tests.
    const int r0 = max(0, -ih0), r1 = min(g.R, g.H - ih0);
    const int s0 = max(0, -iw0), s1 = min(g.S, g.W - iw0);
    float acc = 0.f;
    for (int c = 0; c < g.C; ++c) {
        const int xc = (n * g.C + c) * g.H;  // first row of x's channel c
        const int wc = (k * g.C + c) * g.R;  // first row of w's filter (k, c)
        for (int r = r0; r < r1; ++r)
            for (int s = s0; s < s1; ++s)
                acc = fmaf(__ldg(&w[(wc + r) * g.S + s]), __ldg(&x[(xc + ih0 + r) * g.W + iw0 + s]), acc);
    }
    if (b) acc += __ldg(&b[k]);
    y[i] = relu ? fmaxf(acc, 0.f) : acc;
}

// ---------------------------------------------------------------- igemm

constexpr int kConvTileM = 64;  // output pixels per block (GEMM rows); conv2d_igemm also 128, 256
constexpr int kConvTileN = 64;  // output channels per block (GEMM columns); conv2d_igemm also 32, 16
constexpr int kConvTileK = 16;  // filter taps per shared-memory stage (GEMM depth)
constexpr int kConvThreads = 256;
// Bs rows are padded by 16 bytes (4 floats, 8 bf16): the transposing store
// below writes 16 consecutive taps of one channel per half-warp, which
// without padding would all land in one bank; with 68 floats per row they
// spread over 8 banks x 2 channels (2-way at worst), and every row stays a
// multiple of 16 bytes, as float4 loads and wmma's ldm want.
template <typename S, int kTileN = kConvTileN>
constexpr int kConvLdB = kTileN + 16 / int(sizeof(S));

// A filter tap kk = (c, r, s) kept as its three coordinates, so walking along
// the GEMM depth costs two compares instead of two integer divisions.
struct Tap {
    int c, r, s;
};

__device__ __forceinline__ Tap tap_of(int kk, int R, int S) {
    const int rs = kk % (R * S);
    return {kk / (R * S), rs / S, rs % S};
}

// t + step, where step = tap_of(d) for some distance d: each coordinate
// carries at most once because both addends are below the bound.
__device__ __forceinline__ Tap tap_add(Tap t, Tap step, int R, int S) {
    t.s += step.s;
    t.r += step.r;
    t.c += step.c;
    if (t.s >= S) t.s -= S, ++t.r;
    if (t.r >= R) t.r -= R, ++t.c;
    return t;
}

// conv2d_igemm stages plain floats (wmma_input.cuh's interface, no rounding).
struct Fp32Input {
    using Stored = float;
    __device__ static float convert(float v) { return v; }
};

// Split-K: with gridDim.z = splits > 1, block z of the igemm kernels walks
// only stages [z * stages / splits, (z + 1) * stages / splits) of the
// ceil(C*R*S / 16) stages of the depth and writes its partial C tile to
// y + z * N*K*P*Q, where the launcher passes the workspace as y, with no bias
// and no ReLU; conv2d_split_sum then adds the splits in order. The stages are
// dealt out as evenly as integers allow (none empty while splits <= stages),
// and the boundaries depend on the shape and the split count only.
struct DepthRange {
    int begin, end;
};

__device__ __forceinline__ DepthRange conv2d_split_depth(int CRS) {
    const long long stages = ceil_div(CRS, kConvTileK), z = blockIdx.z, splits = gridDim.z;
    return {int(z * stages / splits) * kConvTileK, min(CRS, int((z + 1) * stages / splits) * kConvTileK)};
}

// The pipeline every igemm variant shares: it walks the depth range
// [kk_begin, kk_end) of the block's C tile (pixels m0 .. m0+TM-1 x channels
// k0 .. k0+TN-1; TM x TN is 64 x 64, or conv2d_igemm's 128 x 32 or 256 x 16)
// in 16-deep stages, and calls math(stage) once As[stage] (tap x pixel) and
// Bs[stage] (tap x channel) hold the stage, converted by In::convert. The
// weights w are fp32 (Wt = float), rounded by In::convert as they are staged,
// or already stored in In's type (Wt = In::Stored: bf16 weights from
// conv2d_to_bf16), staged as they are: the same bits either way, since the
// rounding is one function of the fp32 value wherever it runs.
// kk_begin is a multiple of 16 and kk_end one too or C*R*S (a split of
// conv2d_split_depth, or the whole depth). With a mask (x's shape, or null),
// A's values where !(mask > 0) are gathered as 0. All 256 threads of the
// block must call it.
// Loads of one stage (16 * TM / 256 values of A and 16 * TN / 256 of B per
// thread; 4 and 4 for the 64 x 64 tile):
//   A: thread t gathers pixel m0 + t % TM for taps t / TM + {0, 256 / TM, ...}:
//      a warp reads 32 consecutive output pixels of one tap, i.e. consecutive
//      (strided by sw) columns of one row of x: coalesced. Each thread keeps
//      its pixel for the whole loop, so (n, p, q) is decoded once.
//   B: thread t reads tap t % 16 of channels t / 16 + {0, 16, 32, 48}: a
//      half-warp reads 16 consecutive weights (64 bytes in fp32, 32 in bf16)
//      of one filter row of w (coalesced), stored transposed to Bs[tap][channel].
// The next stage is prefetched into registers while math runs on the
// current one; with two shared buffers one barrier per stage suffices.
template <typename In, int TM, int TN, typename Wt, typename Math>
__device__ __forceinline__ void conv2d_igemm_stages(
    const float* __restrict__ x, const float* __restrict__ mask, const Wt* __restrict__ w, const ConvShape& g,
    int m0, int k0, int kk_begin, int kk_end, typename In::Stored (&As)[2][kConvTileK][TM],
    typename In::Stored (&Bs)[2][kConvTileK][kConvLdB<typename In::Stored, TN>], Math&& math) {
    static_assert(TM * TN == kConvTileM * kConvTileN && TN >= kConvThreads / kConvTileK && TM <= kConvThreads,
                  "whole loads per thread");
    constexpr bool kStagedWeights = !std::is_same_v<Wt, float>;  // w holds what Bs holds
    static_assert(!kStagedWeights || std::is_same_v<Wt, typename In::Stored>, "w is fp32 or in the staged type");
    const int t = threadIdx.x;
    const int PQ = g.P * g.Q, M = g.N * PQ, CRS = g.C * g.R * g.S;

    // A loader: this thread's pixel, its receptive field's corner, and its taps.
    const int am = m0 + t % TM;
    const int an = am / PQ, ap = am % PQ / g.Q, aq = am % g.Q;
    const int ih0 = ap * g.sh - g.ph, iw0 = aq * g.sw - g.pw;
    const int xn = an * g.C * g.H * g.W;  // offset of image n (== x's size past the last pixel)
    const bool a_pixel = am < M;
    constexpr int kSlots = kConvTileK * TM / kConvThreads;  // taps per thread per stage (4 for TM = 64)
    constexpr int kSlotStride = kConvThreads / TM;          // ... this many apart
    const Tap slot_step = tap_of(kSlotStride, g.R, g.S);
    const Tap stage_step = tap_of(kConvTileK, g.R, g.S);
    Tap tap = tap_of(kk_begin + t / TM, g.R, g.S);  // slot 0 of the current stage

    // B loader: tap t % 16 of channels k0 + t / 16 + 16 * i.
    constexpr int kBSlots = kConvTileK * TN / kConvThreads;
    const int bkk = t % kConvTileK, bk = t / kConvTileK;

    float a_next[kSlots];
    Wt b_next[kBSlots];
    // Fetch the stage starting at depth kk0 (slot 0 at `tap`) into registers.
    // Past the depth, tap.c reaches C, so one test zero-fills both the depth
    // tail and (with the row/column tests) the padding.
    auto fetch = [&](int kk0) {
        Tap u = tap;
#pragma unroll
        for (int i = 0; i < kSlots; ++i) {
            const int ih = ih0 + u.r, iw = iw0 + u.s;
            const bool inside = a_pixel && u.c < g.C && unsigned(ih) < unsigned(g.H) && unsigned(iw) < unsigned(g.W);
            const int at = xn + (u.c * g.H + ih) * g.W + iw;
            a_next[i] = inside && (!mask || __ldg(&mask[at]) > 0.f) ? __ldg(&x[at]) : 0.f;
            u = tap_add(u, slot_step, g.R, g.S);
        }
#pragma unroll
        for (int i = 0; i < kBSlots; ++i) {
            const int k = k0 + bk + i * (kConvThreads / kConvTileK), kk = kk0 + bkk;
            b_next[i] = (k < g.K && kk < CRS) ? __ldg(&w[k * CRS + kk]) : Wt(0.f);
        }
    };

    fetch(kk_begin);
    for (int kk0 = kk_begin, stage = 0; kk0 < kk_end; kk0 += kConvTileK, stage ^= 1) {
        // Buffer `stage` was last read two stages ago, before the previous
        // barrier, so it can be overwritten without waiting.
#pragma unroll
        for (int i = 0; i < kSlots; ++i)
            smem_store(&As[stage][t / TM + i * kSlotStride][t % TM], In::convert(a_next[i]));
#pragma unroll
        for (int i = 0; i < kBSlots; ++i) {
            auto* dst = &Bs[stage][bkk][bk + i * (kConvThreads / kConvTileK)];
            if constexpr (kStagedWeights)
                smem_store(dst, b_next[i]);
            else
                smem_store(dst, In::convert(b_next[i]));
        }
        __syncthreads();  // the stage is complete before anyone reads it
        if (kk0 + kConvTileK < kk_end) {
            // Issue the next stage's global loads now; their latency hides
            // behind the math below.
            tap = tap_add(tap, stage_step, g.R, g.S);
            fetch(kk0 + kConvTileK);
        }
        math(stage);
    }
}

// ---------------------------------------------------------------- the igemm epilogue

// What the igemm variants do with v = C[m][k] + b[k] (their `mode` argument;
// 0 and 1 are conv2d's relu flag).
enum ConvEpilogue : int {
    kConvPlain = 0,        // y[n][k][p][q] = v                  y: N x K x P x Q
    kConvRelu = 1,         // y[n][k][p][q] = max(v, 0)
    kConvReluMaxPool = 2,  // y[n][k][p/2][q/2] = max over its 2 x 2 window of max(v, 0)
                           //                              y: N x K x ceil(P/2) x ceil(Q/2), all +0 beforehand
};

// y's layout for one mode: the value of pixel m, channel k goes to
// y[at(m) + k * plane], so a thread decodes each of its pixels once.
struct ConvOut {
    float* y;
    int mode, plane, Qo;  // plane: y's elements per channel; Qo: y's row length

    __device__ ConvOut(float* y_, const ConvShape& g, int mode_) : y(y_), mode(mode_) {
        const bool pool = mode == kConvReluMaxPool;
        Qo = pool ? (g.Q + 1) / 2 : g.Q;
        plane = (pool ? (g.P + 1) / 2 : g.P) * Qo;
    }
    __device__ int at(const ConvShape& g, int m) const {
        const int PQ = g.P * g.Q, n = m / PQ, pq = m % PQ;
        if (mode != kConvReluMaxPool) return n * g.K * plane + pq;
        return n * g.K * plane + pq / g.Q / 2 * Qo + pq % g.Q / 2;
    }
    __device__ void store(int i, float v) const {
        if (mode == kConvPlain) {
            y[i] = v;
            return;
        }
        const float r = fmaxf(v, 0.f);
        if (mode == kConvRelu)
            y[i] = r;
        else if (__float_as_int(r) > 0)  // a +0 cannot raise the cell: skip the atomic (half of them after ReLU)
            atomicMax(reinterpret_cast<int*>(y) + i, __float_as_int(r));
    }
};

// grid = ceil(n / 256), block = 256: y[i] = +0, the pooled epilogue's start
// (the smallest value a ReLU output can have).
__global__ void __launch_bounds__(256) conv2d_zero(float* __restrict__ y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;  // Python leaves a block of int headroom
    if (i < n) y[i] = 0.f;
}

constexpr int kConvThreadM = 4, kConvThreadN = 4;
static_assert((kConvTileM / kConvThreadM) * (kConvTileN / kConvThreadN) == kConvThreads, "one 4 x 4 block per thread");

// grid = (ceil(N*P*Q / TM), ceil(K / TN), splits), block = 256; TM x TN is
// 64 x 64, 128 x 32 or 256 x 16 (the launcher's pick for K).
// The block computes the C tile of pixels m0 .. m0+TM-1 x channels
// k0 .. k0+TN-1 through conv2d_igemm_stages, over its split's depth
// (conv2d_split_depth), with x masked by x_mask where that is not null.
// Compute: thread t owns pixels m0 + tm*4 .. +3 and channels k0 + tn*4 .. +3
//   (tm = t % (TM/4), tn = t / (TM/4)): per tap, one float4 of As and one of
//   Bs feed 16 FMAs, 256 per stage.
template <int TM, int TN>
__global__ void __launch_bounds__(kConvThreads)
conv2d_igemm(const float* __restrict__ x, const float* __restrict__ x_mask, const float* __restrict__ w,
             const float* __restrict__ b, float* __restrict__ y, ConvShape g, int mode) {
    __shared__ __align__(16) float As[2][kConvTileK][TM];
    __shared__ __align__(16) float Bs[2][kConvTileK][kConvLdB<float, TN>];
    const int t = threadIdx.x;
    const int PQ = g.P * g.Q, M = g.N * PQ;
    const int m0 = blockIdx.x * TM, k0 = blockIdx.y * TN;
    const int tm = t % (TM / kConvThreadM), tn = t / (TM / kConvThreadM);

    const DepthRange depth = conv2d_split_depth(g.C * g.R * g.S);
    y += int(blockIdx.z) * M * g.K;  // this split's partial C (split 0: y itself)

    float acc[kConvThreadM][kConvThreadN] = {};
    conv2d_igemm_stages<Fp32Input, TM, TN>(x, x_mask, w, g, m0, k0, depth.begin, depth.end, As, Bs, [&](int stage) {
        // This thread's column of each tile as float4s, one row (tap) apart.
        static_assert(TM % 4 == 0 && kConvLdB<float, TN> % 4 == 0, "tile rows must be whole float4s");
        const float4* a4 = as_vector<const float4>(&As[stage][0][tm * kConvThreadM]);
        const float4* b4 = as_vector<const float4>(&Bs[stage][0][tn * kConvThreadN]);
#pragma unroll
        for (int k = 0; k < kConvTileK; ++k) {
            const float4 a = smem_load(&a4[k * (TM / 4)]);
            const float4 bv = smem_load(&b4[k * (kConvLdB<float, TN> / 4)]);
            const float av[kConvThreadM] = {a.x, a.y, a.z, a.w};
            const float bw[kConvThreadN] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
            for (int i = 0; i < kConvThreadM; ++i)
#pragma unroll
                for (int j = 0; j < kConvThreadN; ++j) acc[i][j] = fmaf(av[i], bw[j], acc[i][j]);
        }
    });

    // Epilogue: C[m][k] + b[k] goes to y through ConvOut (plain, ReLU, or ReLU + pool).
    const ConvOut out(y, g, mode);
    float bias[kConvThreadN];
#pragma unroll
    for (int j = 0; j < kConvThreadN; ++j) {
        const int k = k0 + tn * kConvThreadN + j;
        bias[j] = (b && k < g.K) ? __ldg(&b[k]) : 0.f;
    }
#pragma unroll
    for (int i = 0; i < kConvThreadM; ++i) {
        const int m = m0 + tm * kConvThreadM + i;
        if (m >= M) break;
        const int at = out.at(g, m);
#pragma unroll
        for (int j = 0; j < kConvThreadN; ++j) {
            const int k = k0 + tn * kConvThreadN + j;
            if (k >= g.K) break;
            out.store(at + k * out.plane, acc[i][j] + bias[j]);
        }
    }
}

// ---------------------------------------------------------------- igemm_wmma

constexpr int kConvWarpTileN = 32;                // a warp's 16 x 32 strip of the C tile ...
constexpr int kConvWarpFrags = kConvWarpTileN / 16;  // ... as two 16 x 16 accumulators
// Cs rows (one per channel) padded like Bs: 16-byte multiples for wmma's
// store, and the column-major fragment stores spread over the banks.
constexpr int kConvLdC = kConvTileM + 4;

// grid = (ceil(N*P*Q / 64), ceil(K / 64), splits), block = 256 (8 warps).
// T = precision::tf32 or __nv_bfloat16 (wmma_input.cuh). The block computes
// the same C tile and split as conv2d_igemm, through the same
// conv2d_igemm_stages, with As and Bs held in T's storage type (rounded
// once, when staged). Wt: w's element type, float, or __nv_bfloat16 with
// T = __nv_bfloat16 (weights rounded beforehand by conv2d_to_bf16).
// Compute: warp v owns pixels m0 + (v % 4) * 16 .. +15 x channels
//   k0 + (v / 4) * 32 .. +31, two 16 x 16 float accumulators; per stage it
//   loads one A fragment (As is column-major A, ldm 64) and two B fragments
//   (Bs is row-major B) per 8-deep (tf32) or 16-deep (bf16) mma step.
// Epilogue: the accumulators go to Cs[channel][pixel] in shared memory (a
//   fragment's lane layout is unspecified), then thread t writes pixel
//   m0 + t % 64 of channels t / 64 + 4i through ConvOut (bias added): a warp
//   stores 32 consecutive pixels of one channel.
template <typename T, typename Wt = float>
__global__ void __launch_bounds__(kConvThreads)
conv2d_igemm_wmma(const float* __restrict__ x, const Wt* __restrict__ w, const float* __restrict__ b,
                  float* __restrict__ y, ConvShape g, int mode) {
    using namespace nvcuda;
    using In = WmmaInput<T>;
    using S = typename In::Stored;
    constexpr int kK = In::kK;
    // wmma fragment pointers must be 32-byte aligned: every fragment corner
    // below is 16 elements along a row and kK or 16 rows down, and the row
    // pitches (64 and kConvLdB<S> of S, kConvLdC floats) keep those 32-byte
    // multiples.
    __shared__ __align__(32) S As[2][kConvTileK][kConvTileM];
    __shared__ __align__(32) S Bs[2][kConvTileK][kConvLdB<S>];
    __shared__ __align__(32) float Cs[kConvTileN][kConvLdC];
    const int t = threadIdx.x, warp = t / kWarpSize;
    const int PQ = g.P * g.Q, M = g.N * PQ;
    const int m0 = blockIdx.x * kConvTileM, k0 = blockIdx.y * kConvTileN;
    const int wm = (warp % (kConvTileM / 16)) * 16, wn = (warp / (kConvTileM / 16)) * kConvWarpTileN;
    static_assert(kConvTileM / 16 * (kConvTileN / kConvWarpTileN) * kWarpSize == kConvThreads,
                  "8 warps cover the tile");

    const DepthRange depth = conv2d_split_depth(g.C * g.R * g.S);
    y += int(blockIdx.z) * M * g.K;  // this split's partial C (split 0: y itself)

    wmma::fragment<wmma::accumulator, 16, 16, kK, float> acc[kConvWarpFrags];
#pragma unroll
    for (int j = 0; j < kConvWarpFrags; ++j) wmma::fill_fragment(acc[j], 0.f);
    conv2d_igemm_stages<In, kConvTileM, kConvTileN>(x, nullptr, w, g, m0, k0, depth.begin, depth.end, As, Bs,
                                                    [&](int stage) {
#pragma unroll
        for (int kk = 0; kk < kConvTileK; kk += kK) {
            wmma::fragment<wmma::matrix_a, 16, 16, kK, T, wmma::col_major> a;
            wmma::load_matrix_sync(a, &As[stage][kk][wm], kConvTileM);
#pragma unroll
            for (int j = 0; j < kConvWarpFrags; ++j) {
                wmma::fragment<wmma::matrix_b, 16, 16, kK, T, wmma::row_major> bf;
                wmma::load_matrix_sync(bf, &Bs[stage][kk][wn + 16 * j], kConvLdB<S>);
                wmma::mma_sync(acc[j], a, bf, acc[j]);
            }
        }
    });

#pragma unroll
    for (int j = 0; j < kConvWarpFrags; ++j)
        wmma::store_matrix_sync(&Cs[wn + 16 * j][wm], acc[j], kConvLdC, wmma::mem_col_major);
    __syncthreads();  // the whole C tile is in Cs
    const int ml = t % kConvTileM, m = m0 + ml;
    if (m >= M) return;
    const ConvOut out(y, g, mode);
    const int at = out.at(g, m);
    for (int kl = t / kConvTileM; kl < kConvTileN && k0 + kl < g.K; kl += kConvThreads / kConvTileM) {
        const int k = k0 + kl;
        out.store(at + k * out.plane, smem_load(&Cs[kl][ml]) + (b ? __ldg(&b[k]) : 0.f));
    }
}

// ---------------------------------------------------------------- bf16 weights

// grid = ceil(n / 256), block = 256: w16[i] = w[i] rounded to bf16 by
// WmmaInput<__nv_bfloat16>::convert, the very rounding igemm_bf16 applies to
// fp32 weights as it stages them, so igemm_bf16 on w16 gives its bits on w.
__global__ void __launch_bounds__(256)
conv2d_to_bf16(const float* __restrict__ w, __nv_bfloat16* __restrict__ w16, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;  // Python leaves a block of int headroom
    if (i < n) w16[i] = WmmaInput<__nv_bfloat16>::convert(__ldg(&w[i]));
}

// ---------------------------------------------------------------- split-K sum

// grid = ceil(N*K*P*Q / 256), block = 256. Thread i adds element i (NCHW
// order, like y) of every split's partial C in split order, then the bias and
// the ReLU: the second pass of split-K, conv2d_grad_weight's split_sum
// (conv2d_backward.cuh) with the conv epilogue. Fixed order and no atomics,
// so the bits depend on the split count only, not on how blocks are scheduled.
__global__ void __launch_bounds__(256)
conv2d_split_sum(const float* __restrict__ partial, const float* __restrict__ b, float* __restrict__ y, int total,
                 int splits, int K, int PQ, int relu) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;  // Python leaves a block of int headroom
    if (i >= total) return;
    float acc = 0.f;
    for (int z = 0; z < splits; ++z) acc += __ldg(&partial[z * total + i]);
    if (b) acc += __ldg(&b[i / PQ % K]);
    y[i] = relu ? fmaxf(acc, 0.f) : acc;
}

}  // namespace fcn
