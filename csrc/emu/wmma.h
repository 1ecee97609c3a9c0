// wmma.h: nvcuda::wmma for the host emulation (included by emu.h).
//
// On a GPU a fragment is spread over the 32 lanes of a warp in an
// unspecified layout. Here every lane holds the whole tile, in row-major
// order of the logical matrix, so num_elements = rows * cols. Code that
// loops over frag.x[i] element-wise stays correct; code that relies on the
// GPU's lane layout does not, which is right: CUDA does not promise one.
//
// Loads and stores are counted as a lower bound of their shared-memory
// wavefronts (csrc/emu/smem.h), and a load refuses bytes a cp.async still
// has in flight.
//
// Every *_sync call is a warp rendezvous, as the `.sync` in wmma.load.sync
// means on the GPU: all 32 lanes must reach it. It orders no memory: a tile
// written by other threads needs a barrier before the load, as on a GPU.
// A load or store needs a 32-byte aligned pointer and an ldm that is a
// multiple of 16 bytes (CUDA's rules for load_matrix_sync), else it faults.
//
// Supported shapes: tf32 m16n16k8 and half / bfloat16 m16n16k16, float
// accumulators. TF32 inputs are read through their top 19 bits, as the
// tensor cores do; __float_to_tf32 rounds to nearest, ties away from zero.
#pragma once

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}  // namespace precision

template <typename Use, int M, int N, int K>
struct tile_shape;
template <int M, int N, int K>
struct tile_shape<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K>
struct tile_shape<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K>
struct tile_shape<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };

template <typename T>
struct storage { using type = T; };
template <>
struct storage<precision::tf32> { using type = float; };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    static_assert((M == 16 && N == 16 && K == 8) || (M == 16 && N == 16 && K == 16),
                  "the emulator has wmma shapes m16n16k8 (tf32) and m16n16k16 (half, bf16)");
    using element_type = typename storage<T>::type;
    static constexpr int rows = tile_shape<Use, M, N, K>::rows;
    static constexpr int cols = tile_shape<Use, M, N, K>::cols;
    static constexpr int num_elements = rows * cols;
    element_type x[num_elements];
};

template <typename Use, int M, int N, int K, typename T, typename L, typename V>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, const V& v) {
    for (int i = 0; i < f.num_elements; ++i) f.x[i] = typename fragment<Use, M, N, K, T, L>::element_type(v);
}

template <typename P>
inline void check_tile_(const char* what, const P* p, unsigned ldm) {
    fcn_emu::check_aligned(what, p, 32);
    if (ldm * sizeof(P) % 16) fcn_emu::fail("wmma: ldm must be a multiple of 16 bytes");
}

template <typename Frag, typename P>
inline void load_tile_(Frag& f, const P* p, unsigned ldm, bool row_major_memory) {
    fcn_emu::warp_exchange(0xffffffffu, 0);
    check_tile_("wmma::load_matrix_sync", p, ldm);
    if (fcn_emu::lane_id() == 0) {
        const int runs = row_major_memory ? Frag::rows : Frag::cols, run = row_major_memory ? Frag::cols : Frag::rows;
        for (int i = 0; i < runs; ++i)
            fcn_emu::check_settled(p + size_t(i) * ldm, run * sizeof(P), "wmma::load_matrix_sync");
        fcn_emu::count_tile(p, Frag::rows, Frag::cols, ldm, sizeof(P), row_major_memory);
    }
    for (int r = 0; r < Frag::rows; ++r)
        for (int c = 0; c < Frag::cols; ++c)
            f.x[r * Frag::cols + c] = row_major_memory ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r];
}

template <typename Use, int M, int N, int K, typename T, typename P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, row_major>& f, const P* p, unsigned ldm) {
    load_tile_(f, p, ldm, true);
}
template <typename Use, int M, int N, int K, typename T, typename P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, col_major>& f, const P* p, unsigned ldm) {
    load_tile_(f, p, ldm, false);
}
template <int M, int N, int K, typename T, typename P>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const P* p, unsigned ldm, layout_t layout) {
    load_tile_(f, p, ldm, layout == mem_row_major);
}
// Every lane holds the same tile, so the warp's first lane stores it for all.
template <int M, int N, int K, typename T, typename P>
inline void store_matrix_sync(P* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout) {
    fcn_emu::warp_exchange(0xffffffffu, 0);
    check_tile_("wmma::store_matrix_sync", p, ldm);
    if (fcn_emu::lane_id() != 0) return;
    fcn_emu::count_tile(p, M, N, ldm, sizeof(P), layout == mem_row_major);
    for (int r = 0; r < M; ++r)
        for (int c = 0; c < N; ++c) {
            P& dst = layout == mem_row_major ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r];
            dst = f.x[r * N + c];
        }
}

inline float tensor_core_input_(float v) {  // the tensor cores see a TF32 operand's top 19 bits
    return __uint_as_float(__float_as_uint(v) & 0xffffe000u);
}
inline float tensor_core_input_(__half v) { return float(v); }
inline float tensor_core_input_(__nv_bfloat16 v) { return float(v); }

// D = A * B + C, accumulated in float in k order. Each product of two TF32,
// half or bf16 values is exact in float, so only the summation order can
// differ from the hardware's.
template <int M, int N, int K, typename T, typename LA, typename LB, typename TC>
inline void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
                     const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, TC>& c) {
    fcn_emu::warp_exchange(0xffffffffu, 0);
    float out[M * N];
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            float acc = float(c.x[i * N + j]);
            for (int k = 0; k < K; ++k)
                acc = fmaf(tensor_core_input_(a.x[i * K + k]), tensor_core_input_(b.x[k * N + j]), acc);
            out[i * N + j] = acc;
        }
    for (int i = 0; i < M * N; ++i) d.x[i] = out[i];
}

// cvt.rna.tf32.f32: keep 10 mantissa bits, round half away from zero.
inline float __float_to_tf32(float v) {
    uint32_t u = __float_as_uint(v);
    if ((u & 0x7f800000u) == 0x7f800000u) return v;  // inf and NaN pass through
    u += 0x1000u;                                    // half of the dropped 13 bits, on the magnitude
    return __uint_as_float(u & 0xffffe000u);
}

}  // namespace wmma
}  // namespace nvcuda
