#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>

#include "kernels/crf.cuh"
#include "ops/launchers.h"

namespace fcn {

namespace {

// The kernels number their threads with ints; fcn_cuda/crf.py refuses sizes beyond, and this is the backstop.
dim3 crf_grid(long long threads) {
    if (threads > 2147483647ll - (kCrfThreads - 1))
        throw std::invalid_argument("dense CRF: " + std::to_string(threads) + " threads are beyond 32-bit indexing");
    return dim3(unsigned(ceil_div(threads, (long long)kCrfThreads)));
}

// Bits needed for the integers 0..range.
int bit_width(long long range) {
    int bits = 0;
    while (range >> bits) ++bits;
    return bits;
}

// The term's scale factors, pydensecrf's arithmetic (permutohedral.cpp: inv_std_dev is a float), and a
// key layout that holds every vertex of an H x W image: features lie in [0, fmax_i] (x, y up to
// (W-1, H-1) / sxy, colours up to 255 / srgb), so elevated coordinate j lies in
// [-j C_(j-1), sum_(i>=j) C_i] with C_i = s_i fmax_i; rounding, the rank's wrap-around and the vertex
// offsets move q_i by at most one each, and one more step of margin covers float error.
CrfLatticeShape lattice_shape(int d, int H, int W, int P, float sxy, float srgb, int* total_bits, bool* fits_int16) {
    if (d != 2 && d != 5) throw std::invalid_argument("dense_crf: a lattice has 2 or 5 feature dimensions");
    CrfLatticeShape s{};
    s.N = H * W;
    s.P = P;
    s.W = W;
    s.sxy = sxy;
    s.srgb = srgb;
    const float inv_std = float(std::sqrt(2.0 / 3.0) * (d + 1));
    double extent[kCrfMaxDim];
    for (int i = 0; i < d; ++i) {
        s.scale[i] = float(1.0 / std::sqrt(double((i + 2) * (i + 1))) * inv_std);
        const double fmax = i == 0 ? (W - 1) / double(sxy) : i == 1 ? (H - 1) / double(sxy) : 255.0 / srgb;
        extent[i] = double(s.scale[i]) * fmax * (1 + 1e-6);
    }
    CrfKeyLayout& k = s.layout;
    k.rem_bits = bit_width(d);
    int shift = k.rem_bits;
    bool fits = true;
    for (int j = 0; j < d; ++j) {
        double hi = 0;
        for (int i = j; i < d; ++i) hi += extent[i];
        hi = std::min(hi, 1e9);  // far past 16 bits already; keeps the integer conversions defined
        const double lo = j == 0 ? 0.0 : std::max(-j * extent[j - 1], -1e9);
        const long long qmin = (long long)std::floor(lo / (d + 1)) - 3;
        const long long qmax = (long long)std::ceil(hi / (d + 1)) + 2;
        // pydensecrf keeps keys and their neighbours (key +- d) in 16 bits.
        fits = fits && (d + 1) * qmin - d >= -32768 && (d + 1) * qmax + 2 * d <= 32767;
        k.qmin[j] = int(qmin);
        k.bits[j] = bit_width(qmax - qmin);
        k.shift[j] = shift;
        shift += k.bits[j];
    }
    if (total_bits) *total_bits = shift;
    if (fits_int16) *fits_int16 = fits;
    if (shift > 64 && !total_bits)
        throw std::invalid_argument("dense_crf: the lattice keys need " + std::to_string(shift) + " bits (at most 64)");
    return s;
}

// splat -> d+1 blurs (axis 0 first), ping-ponging between a and b; returns the buffer holding the result.
template <int kLanes, bool kSeq>
float* splat_and_blur(const CrfLatticeView& L, const float* x, const float* scale, int V, float* a, float* b,
                      cudaStream_t stream) {
    const long long threads = (long long)(L.M + 1) * (V / kLanes);
    launch("crf_splat", crf_splat<kLanes>, crf_grid(threads), dim3(kCrfThreads), 0, stream, x, scale, V,
           L.vertex_start, L.splat_pixel, L.splat_weight, L.M, a);
    for (int j = 0; j <= L.d; ++j) {  // axis j's neighbour pairs: M pairs of ints
        launch("crf_blur", crf_blur<kLanes, kSeq>, crf_grid(threads), dim3(kCrfThreads), 0, stream, a,
               L.neighbours + 2 * (long long)j * L.M, L.M, V, b);
        std::swap(a, b);
    }
    return a;
}

template <int D, int kLanes, bool kSeq>
void lattice_message(const CrfLatticeView& L, const float* norm, const float* Q, int V, float compat, float* a,
                     float* b, const float* t_in, float* t_out, cudaStream_t stream) {
    const float* values = splat_and_blur<kLanes, kSeq>(L, Q, norm, V, a, b, stream);
    launch("crf_slice_message", crf_slice_message<D, kLanes, kSeq>, crf_grid((long long)L.N * (V / kLanes)),
           dim3(kCrfThreads), 0, stream, values, L.vertex_of, L.bary, L.N, L.P, V, norm, compat, t_in, t_out);
}

template <int D>
void lattice_message_d(const CrfLatticeView& L, const float* norm, const float* Q, int V, float compat, float* a,
                       float* b, const float* t_in, float* t_out, cudaStream_t stream) {
    // pydensecrf filters two or fewer channels with its scalar routine (a double blur), more with SSE.
    if (V <= 2) lattice_message<D, 1, true>(L, norm, Q, V, compat, a, b, t_in, t_out, stream);
    else if (V % 4 == 0) lattice_message<D, 4, false>(L, norm, Q, V, compat, a, b, t_in, t_out, stream);
    else throw std::invalid_argument("crf_lattice_message: V must be 1, 2 or a multiple of 4");
}

}  // namespace

int crf_key_bits(int d, int H, int W, float sxy, float srgb, bool* fits_int16) {
    int bits = 0;
    lattice_shape(d, H, W, H * W, sxy, srgb, &bits, fits_int16);
    return bits;
}

void launch_crf_lattice_points(const CrfTermShape& t, const unsigned char* img, float* bary, unsigned long long* keys,
                               int* entries, cudaStream_t stream) {
    const CrfLatticeShape s = lattice_shape(t.d, t.H, t.W, t.P, t.sxy, t.srgb, nullptr, nullptr);
    if (t.d == 2)
        launch("crf_lattice_points<2>", crf_lattice_points<2>, crf_grid(s.P), dim3(kCrfThreads), 0, stream, img, s,
               bary, keys, entries);
    else
        launch("crf_lattice_points<5>", crf_lattice_points<5>, crf_grid(s.P), dim3(kCrfThreads), 0, stream, img, s,
               bary, keys, entries);
}

void launch_crf_vertex_count(const unsigned long long* keys, int n, int* first, int* workspace, int* count,
                             cudaStream_t stream) {
    launch("crf_vertex_flags", crf_vertex_flags, crf_grid(n), dim3(kCrfThreads), 0, stream, keys, n, first);
    launch_exclusive_scan(first, n, workspace, count, stream);
}

void launch_crf_lattice_tables(const CrfTermShape& t, const unsigned long long* keys, const int* entries,
                               const int* first, int M, const float* bary, int* vertex_start,
                               unsigned long long* vertex_keys, int* vertex_of, int* splat_pixel,
                               float* splat_weight, int* neighbours, cudaStream_t stream) {
    const CrfLatticeShape s = lattice_shape(t.d, t.H, t.W, t.P, t.sxy, t.srgb, nullptr, nullptr);
    const int d = t.d, n = (d + 1) * s.P;
    launch("crf_lattice_tables", crf_lattice_tables, crf_grid(n), dim3(kCrfThreads), 0, stream, keys, entries, first,
           n, s.N, s.P, s.layout.rem_bits, bary, vertex_start, vertex_keys, vertex_of, splat_pixel, splat_weight);
    const long long threads = (long long)(d + 1) * M;
    if (d == 2)
        launch("crf_lattice_neighbours<2>", crf_lattice_neighbours<2>, crf_grid(threads), dim3(kCrfThreads), 0,
               stream, vertex_keys, M, s.layout, neighbours);
    else
        launch("crf_lattice_neighbours<5>", crf_lattice_neighbours<5>, crf_grid(threads), dim3(kCrfThreads), 0,
               stream, vertex_keys, M, s.layout, neighbours);
}

void launch_crf_lattice_norm(const CrfLatticeView& L, float* values_a, float* values_b, float* norm,
                             cudaStream_t stream) {
    const float* values = splat_and_blur<1, true>(L, nullptr, nullptr, 1, values_a, values_b, stream);  // x = 1
    if (L.d == 2)
        launch("crf_slice_norm<2>", crf_slice_norm<2>, crf_grid(L.N), dim3(kCrfThreads), 0, stream, values,
               L.vertex_of, L.bary, L.N, L.P, norm);
    else
        launch("crf_slice_norm<5>", crf_slice_norm<5>, crf_grid(L.N), dim3(kCrfThreads), 0, stream, values,
               L.vertex_of, L.bary, L.N, L.P, norm);
}

void launch_crf_lattice_message(const CrfLatticeView& L, const float* norm, const float* Q, int V, float compat,
                                float* values_a, float* values_b, const float* t_in, float* t_out,
                                cudaStream_t stream) {
    if (L.d == 2) lattice_message_d<2>(L, norm, Q, V, compat, values_a, values_b, t_in, t_out, stream);
    else lattice_message_d<5>(L, norm, Q, V, compat, values_a, values_b, t_in, t_out, stream);
}

void launch_crf_unary(const float* probs, int N, int C, int V, float* t0, float* Q, cudaStream_t stream) {
    launch("crf_unary", crf_unary, crf_grid(N), dim3(kCrfThreads), 0, stream, probs, N, C, V, t0, Q);
}

void launch_crf_math_probe(const float* x, float* y, int n, bool log, cudaStream_t stream) {
    launch("crf_math_probe", crf_math_probe, crf_grid(n), dim3(kCrfThreads), 0, stream, x, y, n, int(log));
}

void launch_crf_softmax(const float* t, int N, int C, int V, float* Q, float* out, cudaStream_t stream) {
    launch("crf_softmax", crf_softmax, crf_grid(N), dim3(kCrfThreads), 0, stream, t, N, C, V, Q, out);
}

void launch_crf_naive_setup(const unsigned char* img, int H, int W, int d, float sxy, float srgb, float* f,
                            float* norm, cudaStream_t stream) {
    const int N = H * W;
    if (d == 2) {
        launch("crf_naive_features<2>", crf_naive_features<2>, crf_grid(N), dim3(kCrfThreads), 0, stream, img, N, W,
               sxy, srgb, f);
        launch("crf_naive_norm<2>", crf_naive_norm<2>, crf_grid(N), dim3(kCrfThreads), 0, stream, f, N, norm);
    } else if (d == 5) {
        launch("crf_naive_features<5>", crf_naive_features<5>, crf_grid(N), dim3(kCrfThreads), 0, stream, img, N, W,
               sxy, srgb, f);
        launch("crf_naive_norm<5>", crf_naive_norm<5>, crf_grid(N), dim3(kCrfThreads), 0, stream, f, N, norm);
    } else {
        throw std::invalid_argument("crf_naive_setup: d must be 2 or 5");
    }
}

void launch_crf_naive_message(const float* f, const float* norm, int d, int N, const float* Q, int C, int V,
                              float compat, const float* t_in, float* t_out, cudaStream_t stream) {
    const dim3 grid = crf_grid((long long)N * C);
    if (d == 2)
        launch("crf_naive_message<2>", crf_naive_message<2>, grid, dim3(kCrfThreads), 0, stream, f, norm, Q, N, C, V,
               compat, t_in, t_out);
    else
        launch("crf_naive_message<5>", crf_naive_message<5>, grid, dim3(kCrfThreads), 0, stream, f, norm, Q, N, C, V,
               compat, t_in, t_out);
}

}  // namespace fcn
