// crf.cuh: the fully connected CRF with Gaussian edge potentials (Krähenbühl
// & Koltun, NIPS 2011; DeepLab's post-processing), mean-field inference as
// pydensecrf computes it (DenseCRF2D, DIAG_KERNEL, NORMALIZE_SYMMETRIC, Potts).
//
//   t_0     = log clip(p, 1e-5, 1)                 (-U, pydensecrf's unary_from_softmax)
//   Q_0     = softmax(t_0)                         per pixel, over the classes
//   Q_{i+1} = softmax(t_0 + sum_k w_k * norm_k . K_k (norm_k . Q_i))
//   K_k     = exp(-|f_m - f_n|^2 / 2) over every pair of pixels m, n (the pixel itself included),
//             f = (x, y) / sxy for the Gaussian term (d = 2), (x, y) / sxy, (R, G, B) / srgb for the
//             bilateral term (d = 5); norm_k = 1 / sqrt(K_k 1); w_k the Potts weight ("compat").
//
// Layout: probs and the result are C x N, N = H*W pixels with n = y*W + x; img is H x W x 3 uint8 RGB.
// Between kernels per-pixel arrays are pixel-major, V floats per pixel: C rounded up to a multiple of 4
// for C >= 3 (float4s; the lanes past C hold 0), V = C for C <= 2 (pydensecrf's scalar routine, kSeq).
//
// The two rungs of the ladder (fcn_cuda.dense_crf(variant=...)):
//   naive:   K applied exactly: one thread per (pixel, class) sums the Gaussian over all N pixels.
//            O(N^2 C) exponentials per iteration and term: the definition, for small images.
//   lattice: pydensecrf's approximation of K, the permutohedral lattice (Adams, Baek & Davis 2010): each
//            pixel is splatted onto the d+1 vertices of the lattice simplex around its feature vector,
//            the vertex values are blurred along the d+1 lattice axes (axis 0 first: the order changes
//            the result), and each pixel slices its value back. O(N d^2) to build, O((N + M) d C) per
//            iteration (M vertices).
//
// Building a lattice (once per term and image) without a hash table, so that nothing depends on the
// order in which threads run:
//   crf_lattice_points      one thread per pixel: elevation, remainder-0 point, rank, barycentric
//                           weights, and the d+1 vertex keys, packed into 64 bits (CrfKeyLayout);
//   sort_pairs              a stable LSD radix sort of the (key, entry) pairs (sort.cuh);
//   crf_vertex_flags        sorted keys -> a flag where a new vertex starts; its exclusive scan (scan.cuh)
//                           numbers the vertices in key order;
//   crf_lattice_tables      per vertex: its first sorted entry (its splat list) and key; per entry: the
//                           vertex id the slice reads, the pixel and weight the splat reads;
//   crf_lattice_neighbours  per vertex and axis: the two neighbours, by binary search over the keys.
// Each filtering then runs crf_splat (gather form: a vertex adds its entries in pixel order, the order
// in which pydensecrf's serial loop adds them), d+1 crf_blur launches, and crf_slice_norm /
// crf_slice_message; crf_softmax closes each iteration. No kernel uses atomics or shared state across
// blocks, so results are the same bits on every run and for any number of emulator workers.
#pragma once
#include "common.cuh"

namespace fcn {

constexpr int kCrfThreads = 256;
constexpr int kCrfMaxDim = 5;         // the bilateral term's (x, y, R, G, B)
constexpr float kCrfMinProb = 1e-5f;  // unary_from_softmax's clip

// How a lattice vertex becomes a 64-bit sort key. A vertex of remainder r (0..d) has stored
// coordinates key_i = (d+1) q_i + r, i < d (the last one is implied: they sum to 0). The key holds r
// in its low rem_bits bits and each q_i - qmin[i] in bits[i] bits at shift[i]; the launcher sizes the
// fields from bounds on the features, so every key of an image fits (fcn_cuda checks the total <= 64).
struct CrfKeyLayout {
    int rem_bits;
    int qmin[kCrfMaxDim];
    int bits[kCrfMaxDim];
    int shift[kCrfMaxDim];
};

// What crf_lattice_points needs to know about one term besides the arrays.
struct CrfLatticeShape {
    int N;      // pixels
    int P;      // points: the N pixels, plus one of feature 0 when N % 4 != 0 (see crf_lattice_points)
    int W;      // image width (n = y*W + x)
    float sxy, srgb;
    float scale[kCrfMaxDim];  // s_i = float(sqrt(2/3) (d+1)) / sqrt((i+1)(i+2)), pydensecrf's E
    CrfKeyLayout layout;
};

// ---------------------------------------------------------------- helpers

// The features of pixel n, divided in float as pydensecrf's addPairwiseGaussian / addPairwiseBilateral do.
template <int D>
__device__ __forceinline__ void crf_features(const unsigned char* __restrict__ img, int n, int W, float sxy,
                                             float srgb, float (&f)[D]) {
    f[0] = float(n % W) / sxy;
    f[1] = float(n / W) / sxy;
    if constexpr (D == 5) {
#pragma unroll
        for (int c = 0; c < 3; ++c) f[2 + c] = float(img[3 * n + c]) / srgb;
    }
}

// a * b rounded on its own. pydensecrf's SSE2 code rounds every product before adding it; nvcc (and g++
// with FMA) would fuse a * b + c into one rounding, and the sums would drift from pydensecrf's by an ulp
// at a time. __fmul_rn is never fused (the emulator's twin in emu.h neither).
__device__ __forceinline__ float crf_mul(float a, float b) { return __fmul_rn(a, b); }

// exp and log of our own. CUDA's expf/logf and glibc's (which the emulator would call) round
// differently, by up to 2 ulp, and the mean field grows a one-ulp change of its inputs to about 1e-5
// in Q after 10 iterations: with the platform's functions the two builds would meet pydensecrf's
// bound of 1e-5 by luck. These use only operations IEEE 754 rounds one way (+, -, /, fma, the
// conversions) and moves of bits, with every product that feeds a sum written as an explicit fma or
// __dmul_rn, so that neither nvcc nor g++ can contract one: the same bits on both builds by construction. They work in
// double (x and the result are floats) to a relative error near 1e-15, so the float they return is
// the correctly rounded one but for inputs within 1e-15 of a rounding tie: the bits glibc's expf and
// logf give, which pydensecrf's unary and softmax are near to. A float-only polynomial within 1 ulp
// rounds differently about once in 20 calls, and moved Q by up to 1.1e-5 from pydensecrf's.

// e^x: x = k ln2 + r with k the integer nearest x / ln2 (adding and taking away 1.5 2^52 rounds to it),
// |r| <= ln2 / 2, ln2 in two parts (Cody and Waite: k ln2_hi is exact, so r is exact to double); e^r by
// its Taylor polynomial of degree 11 (truncation under 1e-14 relative); times 2^k, a double made from
// its bits, exactly; one rounding to float, which also gives the subnormal results and the overflow to
// +inf as IEEE rounds them. NaN stays NaN.
__device__ __forceinline__ float crf_exp(float x) {
    if (x != x) return x;
    if (x < -104.f) return 0.f;                                 // e^-104 < half the least subnormal
    if (x > 89.f) return __int_as_float(0x7f800000);            // e^89 > FLT_MAX
    const double k = fma(double(x), 1.4426950408889634, 0x1.8p52) - 0x1.8p52;
    double r = fma(-k, 6.93147180369123816490e-01, double(x));  // ln2's upper 32 bits
    r = fma(-k, 1.90821492927058770002e-10, r);                 // ln2 - those
    double p = 1.0 / 39916800.0;
    p = fma(p, r, 1.0 / 3628800.0);
    p = fma(p, r, 1.0 / 362880.0);
    p = fma(p, r, 1.0 / 40320.0);
    p = fma(p, r, 1.0 / 5040.0);
    p = fma(p, r, 1.0 / 720.0);
    p = fma(p, r, 1.0 / 120.0);
    p = fma(p, r, 1.0 / 24.0);
    p = fma(p, r, 1.0 / 6.0);
    p = fma(p, r, 0.5);
    p = fma(p, r, 1.0);
    p = fma(p, r, 1.0);
    return float(p * __longlong_as_double((long long)(int(k) + 1023) << 52));
}

// log x for a positive normal float (the CRF's x: probabilities clipped to [1e-5, 1]): x = m 2^e with
// m in [sqrt(1/2), sqrt(2)) taken from the bits, f = m - 1 and s = f / (2 + f), |s| < 0.172 (2 + f is
// exact in double); log(1 + f) = 2 atanh(s) = 2s (1 + z/3 + z^2/5 + ... + z^10/21), z = s^2
// (truncation under 1e-17 relative); plus e ln2, rounded once to float.
__device__ __forceinline__ float crf_log(float x) {
    const int bits = __float_as_int(x);
    int e = (bits >> 23) - 127;
    int mbits = (bits & 0x007fffff) | 0x3f800000;  // m in [1, 2)
    if (mbits > 0x3fb504f3) {                      // m > sqrt(2): m / 2, e + 1
        mbits -= 0x00800000;
        ++e;
    }
    const double f = double(__int_as_float(mbits)) - 1.0;
    const double s = f / (2.0 + f);
    const double z = s * s;
    double q = 1.0 / 21.0;
#pragma unroll
    for (int j = 19; j >= 3; j -= 2) q = fma(q, z, 1.0 / j);
    q = fma(q, z, 1.0);
    return float(fma(double(e), 0.69314718055994530942, __dmul_rn(s + s, q)));  // e ln2 + 2s q
}

// One thread per element; grid ceil(n / 256). y = crf_exp(x) (log_ = 0) or crf_log(x) (log_ = 1): the
// functions alone, for their tests.
__global__ void __launch_bounds__(kCrfThreads)
crf_math_probe(const float* __restrict__ x, float* __restrict__ y, int n, int log_) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = log_ ? crf_log(x[i]) : crf_exp(x[i]);
}

// Eigen's expAndNormalize for one pixel: exp(t_c - max) / sum, written to out[c * stride] for c < C.
__device__ __forceinline__ void crf_softmax_pixel(const float* __restrict__ t, int C, float* __restrict__ out,
                                                  int stride) {
    float m = t[0];
    for (int c = 1; c < C; ++c) m = fmaxf(m, t[c]);
    float sum = 0.f;
    for (int c = 0; c < C; ++c) {
        const float e = crf_exp(t[c] - m);
        out[c * stride] = e;
        sum += e;
    }
    for (int c = 0; c < C; ++c) out[c * stride] = out[c * stride] / sum;
}

// ---------------------------------------------------------------- unary and softmax

// One thread per pixel n; grid ceil(N / 256). t0[n][c] = log(clip(probs[c][n], 1e-5, 1)), the negated
// unary of pydensecrf's unary_from_softmax, and Q[n] = softmax(t0[n]); lanes C..V-1 of both are 0. The
// threads of a warp read 32 consecutive pixels of one class (coalesced).
__global__ void __launch_bounds__(kCrfThreads)
crf_unary(const float* __restrict__ probs, int N, int C, int V, float* __restrict__ t0, float* __restrict__ Q) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    float* t = t0 + size_t(n) * V;
    for (int c = 0; c < C; ++c) t[c] = crf_log(fminf(fmaxf(probs[size_t(c) * N + n], kCrfMinProb), 1.f));
    for (int c = C; c < V; ++c) t[c] = Q[size_t(n) * V + c] = 0.f;
    crf_softmax_pixel(t, C, Q + size_t(n) * V, 1);
}

// One thread per pixel n; grid ceil(N / 256). Q[n] = softmax(t[n]) (lanes past C written 0), or, when
// `out` is given, the same probabilities written planar to out[c][n] instead (the last iteration).
__global__ void __launch_bounds__(kCrfThreads)
crf_softmax(const float* __restrict__ t, int N, int C, int V, float* __restrict__ Q, float* __restrict__ out) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    if (out) {
        crf_softmax_pixel(t + size_t(n) * V, C, out + n, N);
        return;
    }
    for (int c = C; c < V; ++c) Q[size_t(n) * V + c] = 0.f;
    crf_softmax_pixel(t + size_t(n) * V, C, Q + size_t(n) * V, 1);
}

// ---------------------------------------------------------------- naive rung

// One thread per pixel n; grid ceil(N / 256). f[n] = the pixel's D features.
template <int D>
__global__ void __launch_bounds__(kCrfThreads)
crf_naive_features(const unsigned char* __restrict__ img, int N, int W, float sxy, float srgb,
                   float* __restrict__ f) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    float g[D];
    crf_features<D>(img, n, W, sxy, srgb, g);
#pragma unroll
    for (int i = 0; i < D; ++i) f[size_t(n) * D + i] = g[i];
}

template <int D>
__device__ __forceinline__ float crf_gaussian(const float (&fi)[D], const float* __restrict__ fj) {
    float d2 = 0.f;
#pragma unroll
    for (int i = 0; i < D; ++i) {
        const float diff = fi[i] - fj[i];
        d2 = fmaf(diff, diff, d2);  // fused on both builds (nvcc would fuse a plain d2 += diff * diff)
    }
    return crf_exp(-0.5f * d2);
}

// One thread per pixel i; grid ceil(N / 256). norm[i] = 1 / sqrt(sum_j k(f_i, f_j)), j over every pixel
// (i itself included, as in the lattice's normaliser). Every thread of a warp reads the same f_j.
template <int D>
__global__ void __launch_bounds__(kCrfThreads)
crf_naive_norm(const float* __restrict__ f, int N, float* __restrict__ norm) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    float fi[D];
#pragma unroll
    for (int k = 0; k < D; ++k) fi[k] = f[size_t(i) * D + k];
    float sum = 0.f;
    for (int j = 0; j < N; ++j) sum += crf_gaussian<D>(fi, f + size_t(j) * D);
    norm[i] = 1.f / sqrtf(sum);
}

// One thread per (pixel i, class c), c fastest; grid ceil(N*C / 256). The symmetric-normalised message
// m = norm_i * sum_j k(f_i, f_j) * norm_j * Q[j][c], applied through the Potts weight as the lattice rung
// applies it: t_out = t_in - (-w) * m, the product rounded before the subtraction (crf_mul: never fused into
// an FMA, on the GPU as in the emulator). The threads of a warp cover ceil(32 / C) + 1 pixels i or fewer:
// they read a few f_j and consecutive classes of Q[j].
template <int D>
__global__ void __launch_bounds__(kCrfThreads)
crf_naive_message(const float* __restrict__ f, const float* __restrict__ norm, const float* __restrict__ Q, int N,
                  int C, int V, float compat, const float* t_in, float* t_out) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= N * C) return;
    const int i = t / C, c = t - i * C;
    float fi[D];
#pragma unroll
    for (int k = 0; k < D; ++k) fi[k] = f[size_t(i) * D + k];
    float sum = 0.f;
    for (int j = 0; j < N; ++j) sum += crf_gaussian<D>(fi, f + size_t(j) * D) * (norm[j] * Q[size_t(j) * V + c]);
    const size_t o = size_t(i) * V + c;
    t_out[o] = t_in[o] - crf_mul(-compat, sum * norm[i]);
}

// ---------------------------------------------------------------- lattice: points and keys

// One thread per point n < P; grid ceil(P / 256). Writes, for r = 0..D, entry e = r*P + n: the sort key
// of the point's remainder-r vertex, e itself (what the sort carries along), and the barycentric weight.
// Point N (present when N % 4 != 0) is pydensecrf's padding: it elevates 4 pixels at a time, the lanes
// past N carry the feature 0, and their vertices enter the lattice although nothing is splatted to
// them; they take part in the blur (leaving them out moves Q by up to 5e-3). Float arithmetic in
// pydensecrf's order; arrays are indexed with compile-time indices only, so they stay in registers.
template <int D>
__global__ void __launch_bounds__(kCrfThreads)
crf_lattice_points(const unsigned char* __restrict__ img, CrfLatticeShape s, float* __restrict__ bary,
                   unsigned long long* __restrict__ keys, int* __restrict__ entries) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= s.P) return;
    float f[D] = {};
    if (n < s.N) crf_features<D>(img, n, s.W, s.sxy, s.srgb, f);

    // Elevate onto the plane sum = 0 of R^(D+1) (E f, Adams et al. p. 5).
    float el[D + 1];
    float sm = 0.f;
#pragma unroll
    for (int j = D; j > 0; --j) {
        const float cf = crf_mul(f[j - 1], s.scale[j - 1]);
        el[j] = sm - crf_mul(float(j), cf);
        sm += cf;
    }
    el[0] = sm;

    // The nearest remainder-0 point: coordinates (D+1) z_i, rounded half to even as pydensecrf's SSE does.
    constexpr float kDown = 1.f / (D + 1);
    int z[D + 1];
    int sum = 0;
#pragma unroll
    for (int i = 0; i <= D; ++i) {
        z[i] = int(rintf(el[i] * kDown));
        sum += z[i];
    }

    // rank_i: coordinate i's place when the differences el - rem0 are sorted; then back onto the plane.
    int rank[D + 1] = {};
#pragma unroll
    for (int i = 0; i < D; ++i) {
        const float di = el[i] - float((D + 1) * z[i]);
#pragma unroll
        for (int j = i + 1; j <= D; ++j) {
            if (di < el[j] - float((D + 1) * z[j])) ++rank[i];
            else ++rank[j];
        }
    }
#pragma unroll
    for (int i = 0; i <= D; ++i) {
        rank[i] += sum;
        if (rank[i] < 0) {
            rank[i] += D + 1;
            z[i] += 1;
        } else if (rank[i] > D) {
            rank[i] -= D + 1;
            z[i] -= 1;
        }
    }

    // Barycentric weights (Adams et al. p. 10). pydensecrf adds v_i to b[D - rank_i] and subtracts it from
    // b[D - rank_i + 1]: with u[k] = the v_i of rank k, b[p] = u[D-p] - u[D-p+1] and b[0] = u[D] + (1 - u[0]),
    // the same roundings. u is filled by selects, so that no register array is indexed at run time.
    float u[D + 1] = {};
#pragma unroll
    for (int i = 0; i <= D; ++i) {
        const float v = crf_mul(el[i] - float((D + 1) * z[i]), kDown);
#pragma unroll
        for (int k = 0; k <= D; ++k) u[k] = rank[i] == k ? v : u[k];
    }
    float b[D + 1];
    b[0] = u[D] + (1.f - u[0]);
#pragma unroll
    for (int p = 1; p <= D; ++p) b[p] = u[D - p] - u[D - p + 1];

    // Vertex r of the simplex: key_i = rem0_i + r, or + r - (D+1) where rank_i > D - r, so q_i = z_i or z_i - 1.
#pragma unroll
    for (int r = 0; r <= D; ++r) {
        unsigned long long key = (unsigned long long)r;
#pragma unroll
        for (int i = 0; i < D; ++i) {
            const int q = z[i] - (rank[i] > D - r ? 1 : 0);
            key |= (unsigned long long)(q - s.layout.qmin[i]) << s.layout.shift[i];
        }
        const int e = r * s.P + n;
        keys[e] = key;
        entries[e] = e;
        bary[e] = b[r];
    }
}

// ---------------------------------------------------------------- lattice: vertices and neighbours

// One thread per sorted entry i; grid ceil(n / 256). flags[i] = 1 where a vertex starts (a new key).
__global__ void __launch_bounds__(kCrfThreads)
crf_vertex_flags(const unsigned long long* __restrict__ keys, int n, int* __restrict__ flags) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) flags[i] = i == 0 || keys[i] != keys[i - 1];
}

// One thread per sorted entry i; grid ceil(n / 256). `first` is the exclusive scan of the flags, so the
// entry's vertex is id = first[i] + flag - 1: vertices are numbered in key order. Writes the vertex of
// entry e = r*P + pixel for the slice; per sorted entry the pixel (-1 for the padding point) and the
// weight the splat reads; per vertex its key and where its entries start (vertex_start[M] = n).
__global__ void __launch_bounds__(kCrfThreads)
crf_lattice_tables(const unsigned long long* __restrict__ keys, const int* __restrict__ entries,
                   const int* __restrict__ first, int n, int N, int P, int rem_bits, const float* __restrict__ bary,
                   int* __restrict__ vertex_start, unsigned long long* __restrict__ vertex_keys,
                   int* __restrict__ vertex_of, int* __restrict__ splat_pixel, float* __restrict__ splat_weight) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const unsigned long long key = keys[i];
    const bool starts = i == 0 || key != keys[i - 1];
    const int id = first[i] + starts - 1;
    const int e = entries[i];
    const int pixel = e - int(key & ((1ull << rem_bits) - 1)) * P;  // e = r*P + pixel, r from the key
    vertex_of[e] = id;
    splat_pixel[i] = pixel < N ? pixel : -1;
    splat_weight[i] = bary[e];
    if (starts) {
        vertex_start[id] = i;
        vertex_keys[id] = key;
    }
    if (i == n - 1) vertex_start[id + 1] = n;
}

// The id of the vertex with `key` among the M sorted vertex keys, or M when there is none.
__device__ __forceinline__ int crf_find_vertex(const unsigned long long* __restrict__ vertex_keys, int M,
                                               unsigned long long key) {
    int lo = 0, hi = M;
    while (lo < hi) {
        const int mid = lo + (hi - lo) / 2;
        if (vertex_keys[mid] < key) lo = mid + 1;
        else hi = mid;
    }
    return lo < M && vertex_keys[lo] == key ? lo : M;
}

// One thread per (axis j, vertex v), v fastest; grid ceil((D+1)*M / 256). neighbours[j*M + v] = the
// vertices one step either way along lattice axis j, M where absent (the blur's zero row). In stored
// coordinates, neighbour 1 is key - 1 on every coordinate but j, which moves by +D (every one moves by -1
// for the implied axis j = D); neighbour 2 the opposite. On key_i = (D+1) q_i + r that is: r steps by -1
// (borrowing 1 from every q_i when r = 0) and q_j by +1; and the mirror image for neighbour 2.
template <int D>
__global__ void __launch_bounds__(kCrfThreads)
crf_lattice_neighbours(const unsigned long long* __restrict__ vertex_keys, int M, CrfKeyLayout layout,
                       int* __restrict__ neighbours) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (D + 1) * M) return;
    const int j = t / M, v = t - j * M;
    const unsigned long long key = vertex_keys[v];
    const int r = int(key & ((1ull << layout.rem_bits) - 1));
    const int borrow = r == 0, carry = r == D;
    unsigned long long k1 = (unsigned long long)(borrow ? D : r - 1);
    unsigned long long k2 = (unsigned long long)(carry ? 0 : r + 1);
    bool in1 = true, in2 = true;
#pragma unroll
    for (int i = 0; i < D; ++i) {
        const long long mask = (1ll << layout.bits[i]) - 1;
        const long long q = (long long)((key >> layout.shift[i]) & (unsigned long long)mask);  // q_i - qmin_i
        const long long q1 = q - borrow + (i == j), q2 = q + carry - (i == j);
        in1 = in1 && q1 >= 0 && q1 <= mask;  // off the packed range: no vertex of this image is there
        in2 = in2 && q2 >= 0 && q2 <= mask;
        k1 |= (unsigned long long)(q1 & mask) << layout.shift[i];
        k2 |= (unsigned long long)(q2 & mask) << layout.shift[i];
    }
    as_vector<int2>(neighbours)[t] = make_int2(in1 ? crf_find_vertex(vertex_keys, M, k1) : M,
                              in2 ? crf_find_vertex(vertex_keys, M, k2) : M);
}

// ---------------------------------------------------------------- lattice: splat, blur, slice

// One thread per (vertex v, group g of kLanes channels), g fastest; grid ceil((M+1) * V/kLanes / 256).
// values[v] = sum over the vertex's entries, in sorted order (which is pixel order), of
// weight * (x[pixel] * scale[pixel]) — pydensecrf's splat of norm . Q (scale null: x as it is; x null:
// x all 1, V = 1, the normaliser's splat). Row M,
// the zero the blur reads for a missing neighbour, is written 0. Consecutive threads read consecutive
// float4s of one pixel's row.
template <int kLanes>
__global__ void __launch_bounds__(kCrfThreads)
crf_splat(const float* __restrict__ x, const float* __restrict__ scale, int V, const int* __restrict__ vertex_start,
          const int* __restrict__ splat_pixel, const float* __restrict__ splat_weight, int M,
          float* __restrict__ values) {
    const int groups = V / kLanes;
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (M + 1) * groups) return;
    const int v = t / groups, g = t - v * groups;
    float acc[kLanes] = {};
    if (v < M) {
        const auto x_rows = lane_vectors<kLanes>(x);  // the alignment test once, not per entry
        const int end = vertex_start[v + 1];
        for (int i = vertex_start[v]; i < end; ++i) {
            const int p = splat_pixel[i];
            if (p < 0) continue;  // the padding point: in the lattice, never splatted
            const float w = splat_weight[i];
            const float s = scale ? scale[p] : 1.f;
            float in[kLanes];
            if (x) unpack_lanes(x_rows[size_t(p) * groups + g], in);
            else for (int l = 0; l < kLanes; ++l) in[l] = 1.f;
#pragma unroll
            for (int l = 0; l < kLanes; ++l) acc[l] += crf_mul(w, in[l] * s);
        }
    }
    lane_vectors<kLanes>(values)[size_t(v) * groups + g] = pack_lanes(acc);
}

// One thread per (vertex v <= M, group g), as crf_splat. One Jacobi step along one axis:
// out[v] = in[v] + (in[n1] + in[n2]) / 2, the neighbours from crf_lattice_neighbours; row M stays 0.
// kDouble: pydensecrf's scalar routine (V <= 2) adds in double: float(double(in) + 0.5 * float(n1 + n2)).
template <int kLanes, bool kDouble>
__global__ void __launch_bounds__(kCrfThreads)
crf_blur(const float* __restrict__ in, const int* __restrict__ neighbours, int M, int V, float* __restrict__ out) {
    const int groups = V / kLanes;
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (M + 1) * groups) return;
    const int v = t / groups, g = t - v * groups;
    float r[kLanes] = {};
    if (v < M) {
        const int2 nb = as_vector<const int2>(neighbours)[v];
        const auto rows = lane_vectors<kLanes>(in);
        float a[kLanes], b1[kLanes], b2[kLanes];
        unpack_lanes(rows[size_t(v) * groups + g], a);
        unpack_lanes(rows[size_t(nb.x) * groups + g], b1);
        unpack_lanes(rows[size_t(nb.y) * groups + g], b2);
#pragma unroll
        for (int l = 0; l < kLanes; ++l) {
            const float pair = b1[l] + b2[l];
            r[l] = kDouble ? float(double(a[l]) + 0.5 * double(pair)) : a[l] + 0.5f * pair;
        }
    }
    lane_vectors<kLanes>(out)[size_t(v) * groups + g] = pack_lanes(r);
}

// Pixel n's sliced value for one group: sum over r = 0..D of its weight b_r times alpha times the value of
// its vertex r, alpha = 1 / (1 + 2^-D). pydensecrf's vector routine multiplies (b_r alpha) * value; its
// scalar one (kSeq, V <= 2) (b_r value) alpha.
template <int D, int kLanes, bool kSeq>
__device__ __forceinline__ void crf_slice_pixel(const float* __restrict__ values, const int* __restrict__ vertex_of,
                                                const float* __restrict__ bary, int n, int P, int V, int g,
                                                float (&acc)[kLanes]) {
    constexpr float kAlpha = 1.f / (1.f + 1.f / float(1 << D));
    const auto rows = lane_vectors<kLanes>(values);
#pragma unroll
    for (int l = 0; l < kLanes; ++l) acc[l] = 0.f;
#pragma unroll
    for (int r = 0; r <= D; ++r) {
        const int e = r * P + n;
        const float b = bary[e];
        float val[kLanes];
        unpack_lanes(rows[size_t(vertex_of[e]) * (V / kLanes) + g], val);
#pragma unroll
        for (int l = 0; l < kLanes; ++l) acc[l] += kSeq ? crf_mul(b * val[l], kAlpha) : crf_mul(b * kAlpha, val[l]);
    }
}

// One thread per pixel n; grid ceil(N / 256). The normaliser from the filtered ones (V = 1, pydensecrf's
// scalar routine): norm[n] = float(1 / sqrt(double(K 1) + 1e-20)), NORMALIZE_SYMMETRIC.
template <int D>
__global__ void __launch_bounds__(kCrfThreads)
crf_slice_norm(const float* __restrict__ values, const int* __restrict__ vertex_of, const float* __restrict__ bary,
               int N, int P, float* __restrict__ norm) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    float k1[1];
    crf_slice_pixel<D, 1, true>(values, vertex_of, bary, n, P, 1, 0, k1);
    norm[n] = float(1.0 / sqrt(double(k1[0]) + 1e-20));
}

// One thread per (pixel n, group g), g fastest; grid ceil(N * V/kLanes / 256). The message of one term,
// m = norm . K (norm . Q), through the Potts compatibility as pydensecrf applies it:
// t_out = t_in - (-w) * (slice * norm[n]). t_out may be t_in.
template <int D, int kLanes, bool kSeq>
__global__ void __launch_bounds__(kCrfThreads)
crf_slice_message(const float* __restrict__ values, const int* __restrict__ vertex_of, const float* __restrict__ bary,
                  int N, int P, int V, const float* __restrict__ norm, float compat, const float* t_in, float* t_out) {
    const int groups = V / kLanes;
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= N * groups) return;
    const int n = t / groups, g = t - n * groups;
    float acc[kLanes], r[kLanes];
    crf_slice_pixel<D, kLanes, kSeq>(values, vertex_of, bary, n, P, V, g, acc);
    const size_t o = size_t(n) * groups + g;
    unpack_lanes(lane_vectors<kLanes>(t_in)[o], r);
#pragma unroll
    for (int l = 0; l < kLanes; ++l) r[l] = r[l] - crf_mul(-compat, acc[l] * norm[n]);
    lane_vectors<kLanes>(t_out)[o] = pack_lanes(r);
}

}  // namespace fcn
