// emu.h: the CUDA language, as g++ sees it in the `_host` build.
//
// Kernels in csrc/kernels are plain CUDA. Compiled with g++ -DFCN_EMU they
// include this header instead of the CUDA runtime, and runtime.cpp executes
// them with CUDA's semantics:
//   * a grid's blocks are spread over a pool of OS threads ("workers"); one
//     block runs start to end on one worker and never migrates;
//   * the threads of a block are fibers with a hand-written context switch;
//     a block whose thread 0 meets no barrier runs its other threads as a
//     plain loop (a barrier met there is divergence and an error);
//   * __syncthreads is a real barrier, warp shuffles/votes are warp barriers
//     with PTX lane semantics; divergent barriers, shuffles with absent lanes
//     and deadlocks raise an error naming the kernel instead of hanging;
//   * __shared__ is `static thread_local` (one copy per worker and per
//     template instantiation, as one copy per block on the GPU);
//   * nvcuda::wmma fragments hold the whole tile in every lane;
//   * a misaligned vector access faults (check_aligned), as on a GPU.
// Two sanitizer builds compile the same source again: FCN_EMU_ASAN (ASan +
// UBSan: out-of-bounds access) and FCN_EMU_TSAN (ThreadSanitizer: data races
// between CUDA threads; runtime.cpp announces fibers and synchronization).
// Only this header and runtime.cpp know the emulator exists.
#pragma once

#if !defined(FCN_EMU)
#error "emu.h is the host emulation of CUDA; it is only compiled with -DFCN_EMU"
#endif

#include <math.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

// ---------------------------------------------------------------- qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// A kernel parameter that every thread reads in place (a tensor map: the TMA
// instructions take its address). Emulated parameters are ordinary copies.
#ifndef __grid_constant__
#define __grid_constant__
#endif
// One copy per worker: every fiber of a block runs on the same OS thread and
// a worker runs one block at a time. The ASan build makes it plain `static`
// (and runs one worker) because ASan puts no redzones around TLS.
#if defined(FCN_EMU_ASAN)
#define __shared__ static __attribute__((aligned(16)))
#else
#define __shared__ static thread_local __attribute__((aligned(16)))
#endif

// ---------------------------------------------------------- built-in types
struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(8))) int2 { int x, y; };
struct __attribute__((aligned(16))) int4 { int x, y, z, w; };
struct __attribute__((aligned(8))) uint2 { unsigned x, y; };
struct __attribute__((aligned(16))) uint4 { unsigned x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

typedef struct fcn_emu_stream_* cudaStream_t;

// The built-in variables of the running CUDA thread. One `__thread` struct
// rather than four C++ thread_locals: no TLS wrapper calls, and a kernel pays
// for one thread-local address lookup, not four (in a dlopen'ed module every
// lookup is a call; the initial-exec model would avoid it but cannot hold the
// module's __shared__ arrays, which live in the same TLS segment).
namespace fcn_emu {
struct Builtins {
    uint3 thread_idx;
    uint3 block_idx;
    uint3 block_dim;  // dim3 on the GPU; uint3 keeps this trivially constructible for __thread
    uint3 grid_dim;
};
}  // namespace fcn_emu
extern __thread fcn_emu::Builtins fcn_emu_builtins;
#define threadIdx (fcn_emu_builtins.thread_idx)
#define blockIdx (fcn_emu_builtins.block_idx)
#define blockDim (fcn_emu_builtins.block_dim)
#define gridDim (fcn_emu_builtins.grid_dim)
constexpr int warpSize = 32;

namespace fcn_emu {

// --------------------------------------------------------- runtime entry
using Thunk = void (*)(void*);
void launch_impl(const char* name, dim3 grid, dim3 block, size_t smem_bytes, Thunk thunk, void* ctx);

// Runs `body()` once per CUDA thread of the grid; returns when all are done.
template <typename F>
void launch(const char* name, dim3 grid, dim3 block, size_t smem_bytes, F body) {
    launch_impl(name, grid, block, smem_bytes, [](void* p) { (*static_cast<F*>(p))(); }, &body);
}

void set_workers(int n);  // 0: one per core (or FCN_CUDA_EMU_WORKERS); 1: deterministic
int workers();
const char* sanitizer();  // "address", "thread", or "" for the optimized build
// Tests only: in the next launch, worker `worker` (0: the calling thread) throws an exception that is
// no std::exception as it reaches its turn `turn` (0: before its first block), to show that a worker
// failing outside any block ends the launch with an error, never a hang or a crash.
void inject_worker_fault(int worker, int turn);

void* dynamic_smem();
unsigned lane_id();
// A warp-level rendezvous: every lane named in `mask` deposits `value`; when
// all of them have arrived, each gets the 32 deposits (absent lanes: 0).
// Out of line so the compiler reloads everything after it, as after a barrier.
// It orders no memory (shuffles and votes do not, on a GPU); syncwarp does.
const uint64_t* warp_exchange(unsigned mask, uint64_t value);
// The same with up to kWideWords words per lane: lane i's deposit is row i
// of the result (a warp collective whose lanes hand over several registers).
constexpr int kWideWords = 8;
const uint64_t (*warp_exchange_wide(unsigned mask, const uint64_t* values, int words))[kWideWords];
void syncwarp(unsigned mask);
[[noreturn]] void fail(const char* what);

// A GPU faults on a vector load or store (float2, float4, int4, a wmma
// tile, ...) whose address is not a multiple of its alignment
// (cudaErrorMisalignedAddress); x86 would not, so every build tests it here.
[[noreturn]] void misaligned(const char* what, const void* p, size_t alignment);
inline void check_aligned(const char* what, const void* p, size_t alignment) {
    if (__builtin_expect((reinterpret_cast<uintptr_t>(p) & (alignment - 1)) != 0, 0)) misaligned(what, p, alignment);
}

enum ShflMode { kIdx, kUp, kDown, kBfly };

// PTX shfl.sync: c = ((32 - width) << 8) | clamp, clamp 0 for .up, 31 otherwise.
inline int shfl_source(int lane, ShflMode mode, unsigned b, int width) {
    if (width <= 0 || width > 32 || (width & (width - 1)))
        fail("__shfl_*_sync: width must be a power of two in [1, 32]");
    const int segmask = (32 - width) & 31;  // the bits that select the segment
    const int clamp = mode == kUp ? 0 : 31;
    const int max_lane = (lane & segmask) | (clamp & ~segmask);
    const int min_lane = lane & segmask;
    int j = lane;
    bool ok = false;
    switch (mode) {
        case kUp: j = lane - int(b); ok = j >= max_lane; break;
        case kDown: j = lane + int(b); ok = j <= max_lane; break;
        case kBfly: j = lane ^ int(b & 31); ok = j <= max_lane; break;
        case kIdx: j = min_lane | (int(b) & 31 & ~segmask); ok = j <= max_lane; break;
    }
    return ok ? j : lane;
}

template <typename T>
inline T shfl(unsigned mask, T var, ShflMode mode, unsigned b, int width) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type over 8 bytes");
    uint64_t bits = 0;
    std::memcpy(&bits, &var, sizeof(T));
    const int lane = int(lane_id());
    const uint64_t* slots = warp_exchange(mask, bits);
    const int j = shfl_source(lane, mode, b, width);
    if (!((mask >> j) & 1u)) fail("__shfl_*_sync reads a lane that is not in the mask");
    T out;
    std::memcpy(&out, &slots[j], sizeof(T));
    return out;
}

inline unsigned ballot(unsigned mask, bool pred) {
    const uint64_t* slots = warp_exchange(mask, pred ? 1 : 0);
    unsigned r = 0;
    for (int i = 0; i < 32; ++i)
        if (((mask >> i) & 1u) && slots[i]) r |= 1u << i;
    return r;
}

template <typename T>
inline T bits_as(uint64_t v) {
    T out;
    std::memcpy(&out, &v, sizeof(T));
    return out;
}

}  // namespace fcn_emu

// ------------------------------------------------------ synchronization
namespace fcn_emu {
// Out of line, so that the compiler reloads memory after it as after a real
// barrier. The source line identifies the barrier: optimizers duplicate call
// sites, so return addresses cannot.
void syncthreads_at(const char* file, int line);
}  // namespace fcn_emu
#define __syncthreads() ::fcn_emu::syncthreads_at(__FILE__, __LINE__)
inline void __syncwarp(unsigned mask = 0xffffffffu) { fcn_emu::syncwarp(mask); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
    return fcn_emu::shfl(mask, var, fcn_emu::kIdx, unsigned(src_lane), width);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    return fcn_emu::shfl(mask, var, fcn_emu::kUp, delta, width);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    return fcn_emu::shfl(mask, var, fcn_emu::kDown, delta, width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
    return fcn_emu::shfl(mask, var, fcn_emu::kBfly, unsigned(lane_mask), width);
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return fcn_emu::ballot(mask, pred != 0); }
inline int __any_sync(unsigned mask, int pred) { return fcn_emu::ballot(mask, pred != 0) != 0; }
inline int __all_sync(unsigned mask, int pred) { return fcn_emu::ballot(mask, pred != 0) == mask; }

// -------------------------------------------------------------- atomics
// Blocks run on several OS threads, so these are real atomic operations.
template <typename T, typename Op>
inline T atomic_update_(T* address, Op op) {  // compare-and-swap loop on the bits
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomic on a 4- or 8-byte type");
    using Bits = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
    Bits* p = reinterpret_cast<Bits*>(address);
    Bits old_bits = __atomic_load_n(p, __ATOMIC_RELAXED);
    for (;;) {
        T old_value;
        std::memcpy(&old_value, &old_bits, sizeof(T));
        T new_value = op(old_value);
        Bits new_bits;
        std::memcpy(&new_bits, &new_value, sizeof(T));
        if (__atomic_compare_exchange_n(p, &old_bits, new_bits, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return old_value;
    }
}
inline float atomicAdd(float* a, float v) { return atomic_update_(a, [v](float x) { return x + v; }); }
inline double atomicAdd(double* a, double v) { return atomic_update_(a, [v](double x) { return x + v; }); }
inline int atomicAdd(int* a, int v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
    return __atomic_fetch_add(a, v, __ATOMIC_RELAXED);
}
inline int atomicSub(int* a, int v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicSub(unsigned* a, unsigned v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }
inline int atomicMax(int* a, int v) { return atomic_update_(a, [v](int x) { return x > v ? x : v; }); }
inline unsigned atomicMax(unsigned* a, unsigned v) {
    return atomic_update_(a, [v](unsigned x) { return x > v ? x : v; });
}
inline int atomicMin(int* a, int v) { return atomic_update_(a, [v](int x) { return x < v ? x : v; }); }
inline unsigned atomicMin(unsigned* a, unsigned v) {
    return atomic_update_(a, [v](unsigned x) { return x < v ? x : v; });
}
inline int atomicExch(int* a, int v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicExch(unsigned* a, unsigned v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }
inline float atomicExch(float* a, float v) { return atomic_update_(a, [v](float) { return v; }); }
template <typename T>
inline T atomic_cas_(T* a, T compare, T v) {
    __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return compare;  // holds the old value whether or not the swap happened
}
inline int atomicCAS(int* a, int c, int v) { return atomic_cas_(a, c, v); }
inline unsigned atomicCAS(unsigned* a, unsigned c, unsigned v) { return atomic_cas_(a, c, v); }
inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long c, unsigned long long v) {
    return atomic_cas_(a, c, v);
}
inline int atomicOr(int* a, int v) { return __atomic_fetch_or(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicOr(unsigned* a, unsigned v) { return __atomic_fetch_or(a, v, __ATOMIC_RELAXED); }
inline int atomicAnd(int* a, int v) { return __atomic_fetch_and(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicAnd(unsigned* a, unsigned v) { return __atomic_fetch_and(a, v, __ATOMIC_RELAXED); }

// ------------------------------------------------------------ intrinsics
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
// A product rounded on its own, never contracted into an FMA (as nvcc
// treats these intrinsics): the value passes through an empty asm that g++
// cannot see into, so it cannot fuse it with a neighbouring add.
inline float __fmul_rn(float a, float b) {
    float p = a * b;
    asm("" : "+x"(p));
    return p;
}
inline double __dmul_rn(double a, double b) {
    double p = a * b;
    asm("" : "+x"(p));
    return p;
}
inline int __float2int_rn(float x) { return int(nearbyintf(x)); }
inline int __float2int_rz(float x) { return int(x); }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline unsigned __float_as_uint(float x) { unsigned u; std::memcpy(&u, &x, 4); return u; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
template <typename T>
inline T __ldg(const T* p) { return *p; }

// ------------------------------------------------- half and bfloat16
// Storage types with round-to-nearest-even conversion, as cuda_fp16.h and
// cuda_bf16.h convert. Arithmetic goes through float.
namespace fcn_emu {
inline uint16_t float_to_half_bits(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t abs = x & 0x7fffffffu;
    if (abs >= 0x7f800000u) return uint16_t(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
    if (abs >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: inf
    if (abs < 0x33000001u) return uint16_t(sign);              // below half the smallest subnormal
    int exp = int(abs >> 23) - 127 + 15;
    uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    int shift = exp > 0 ? 13 : 14 - exp;  // subnormal halves shift further
    uint32_t kept = mant >> shift;
    uint32_t rest = mant & ((1u << shift) - 1u);
    uint32_t halfway = 1u << (shift - 1);
    if (rest > halfway || (rest == halfway && (kept & 1u))) ++kept;
    uint32_t bits = exp > 0 ? ((uint32_t(exp) << 10) + (kept - 0x400u)) : kept;
    return uint16_t(sign | bits);
}
inline float half_bits_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t mant = h & 0x3ffu;
    float mag;
    if (exp == 0) mag = std::ldexp(float(mant), -24);
    else if (exp == 31) mag = mant ? NAN : INFINITY;
    else mag = std::ldexp(float(mant | 0x400u), int(exp) - 25);
    uint32_t bits;
    std::memcpy(&bits, &mag, 4);
    bits |= sign;
    float out;
    std::memcpy(&out, &bits, 4);
    return out;
}
inline uint16_t float_to_bf16_bits(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);  // quiet NaN
    x += 0x7fffu + ((x >> 16) & 1u);  // round to nearest even
    return uint16_t(x >> 16);
}
inline float bf16_bits_to_float(uint16_t b) {
    uint32_t x = uint32_t(b) << 16;
    float out;
    std::memcpy(&out, &x, 4);
    return out;
}
}  // namespace fcn_emu

// The constexpr default constructor makes a __shared__ array of them constant-
// initialized: otherwise g++ guards its (empty) thread-local initialization
// with a flag that every fiber of a block reads, a race to TSan.
struct __half {
    uint16_t bits = 0;
    constexpr __half() = default;
    __half(float f) : bits(fcn_emu::float_to_half_bits(f)) {}
    operator float() const { return fcn_emu::half_bits_to_float(bits); }
};
struct __nv_bfloat16 {
    uint16_t bits = 0;
    constexpr __nv_bfloat16() = default;
    __nv_bfloat16(float f) : bits(fcn_emu::float_to_bf16_bits(f)) {}
    operator float() const { return fcn_emu::bf16_bits_to_float(bits); }
};
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return float(h); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return float(b); }

#include "smem.h"
#include "wmma.h"
#include "sm80.h"
#include "sm90.h"
#include "wgmma.h"
