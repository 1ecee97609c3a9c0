// common.cuh: the one header every kernel and launcher includes.
//
// It hides which compiler is reading the source:
//   * nvcc  (the `_cuda` extension): the real CUDA runtime and nvcuda::wmma;
//   * g++ with -DFCN_EMU (the `_host` extension): csrc/emu/emu.h, a host
//     emulation of the CUDA execution model that runs this same source.
// Everything a kernel needs beyond the CUDA language itself lives here:
// vector access (as_vector, lane_vectors), ceil_div, warp reductions, the
// dynamic shared memory macro and the single launch helper (`<<<>>>` is not
// C++, so launches never appear in kernels); the size structs (ConvShape)
// come from shapes.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "shapes.h"

#if defined(FCN_EMU)
#include "../emu/emu.h"
#else
#include <cuda_runtime.h>
#include <mma.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#endif

// FCN_DYNAMIC_SMEM(T, name): declares `T* name` pointing at the block's
// dynamic shared memory (the third launch argument). Under nvcc it is the
// usual `extern __shared__` array, 16-byte aligned so float4 loads are legal;
// the emulator hands out a 128-byte aligned per-worker arena.
#if defined(FCN_EMU)
#define FCN_DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(::fcn_emu::dynamic_smem())
#else
#define FCN_DYNAMIC_SMEM(T, name)                                   \
    extern __shared__ __align__(16) unsigned char fcn_dynamic_smem_[]; \
    T* name = reinterpret_cast<T*>(fcn_dynamic_smem_)
#endif

namespace fcn {

constexpr int kWarpSize = 32;

// Every vector load or store (float2, float4, int4, ...) goes through
// as_vector: `*as_vector<const float4>(p)` reads 16 bytes at p, and
// `as_vector<float4>(y)[i]` indexes y as an array of float4. A GPU needs the
// address to be a multiple of the vector's size and faults otherwise
// (cudaErrorMisalignedAddress); x86 does not care, so the emulator tests it
// here, in every build, and raises "misaligned address" naming the kernel.
// Under nvcc it is the plain reinterpret_cast.
template <typename V, typename T>
__device__ __forceinline__ V* as_vector(T* p) {
    static_assert(sizeof(V) > sizeof(T) && sizeof(V) % sizeof(T) == 0 && (sizeof(V) & (sizeof(V) - 1)) == 0,
                  "as_vector: V must be a vector of T (a power-of-two size, larger than T)");
#if defined(FCN_EMU)
    ::fcn_emu::check_aligned("vector access", p, sizeof(V));
#endif
    return reinterpret_cast<V*>(p);
}

// A thread that owns 1 or 4 consecutive floats (or ints) holds them in a
// register array v[kLanes] and moves them as one access: for 4 one 16-byte
// vector (the address 16-byte aligned), for 1 the element itself.
// lane_vectors<kLanes>(p) is p as an array of such accesses; for 4 it comes
// from as_vector, whose alignment test the emulator runs where it is called,
// so take it outside a loop and index it inside. pack_lanes / unpack_lanes
// move the register array into and out of the vector.
template <typename T, int kLanes>
struct LaneVector;
template <> struct LaneVector<float, 1> { using type = float; };
template <> struct LaneVector<float, 4> { using type = float4; };
template <> struct LaneVector<int, 1> { using type = int; };
template <> struct LaneVector<int, 4> { using type = int4; };

template <int kLanes, typename T>
__device__ __forceinline__ auto lane_vectors(T* p) {
    using V = typename LaneVector<std::remove_const_t<T>, kLanes>::type;
    if constexpr (kLanes == 1) return p;
    else return as_vector<std::conditional_t<std::is_const_v<T>, const V, V>>(p);
}

__device__ __forceinline__ void unpack_lanes(float q, float (&v)[1]) { v[0] = q; }
__device__ __forceinline__ void unpack_lanes(const float4& q, float (&v)[4]) {
    v[0] = q.x;
    v[1] = q.y;
    v[2] = q.z;
    v[3] = q.w;
}
__device__ __forceinline__ float pack_lanes(const float (&v)[1]) { return v[0]; }
__device__ __forceinline__ float4 pack_lanes(const float (&v)[4]) { return make_float4(v[0], v[1], v[2], v[3]); }
__device__ __forceinline__ int pack_lanes(const int (&v)[1]) { return v[0]; }
__device__ __forceinline__ int4 pack_lanes(const int (&v)[4]) { return make_int4(v[0], v[1], v[2], v[3]); }

// FCN_CALL_SITE: in the emulator, a wrapper's hidden last parameters, the
// source file and line of its caller (the bank-conflict counter matches the
// lanes of one warp-wide access by them; csrc/emu/smem.h). Empty under nvcc.
#if defined(FCN_EMU)
#define FCN_CALL_SITE , const char *site_file = __builtin_FILE(), int site_line = __builtin_LINE()
#else
#define FCN_CALL_SITE
#endif

// A shared-memory load or store that the emulator sees: it refuses bytes a
// cp.async still has in flight and, when counting, counts the warp's bank
// conflicts (csrc/emu/smem.h). Every kernel reads and writes its shared
// memory through these (a plain C++ access compiles the same but is not
// counted), one accessor per access the source means: `s[i] += s[j]` is
// smem_store(&s[i], smem_load(&s[i]) + smem_load(&s[j])). Shared atomics
// (atomicAdd on shared memory) are not counted. Under nvcc they are the
// plain access.
template <typename T>
__device__ __forceinline__ T smem_load(const T* p FCN_CALL_SITE) {
#if defined(FCN_EMU)
    if (::fcn_emu::shared_watched())
        ::fcn_emu::shared_access(::fcn_emu::Access::kShared, p, sizeof(T), site_file, site_line);
#endif
    return *p;
}

template <typename T>
__device__ __forceinline__ void smem_store(T* p, const T& v FCN_CALL_SITE) {
#if defined(FCN_EMU)
    if (::fcn_emu::shared_watched())
        ::fcn_emu::shared_access(::fcn_emu::Access::kShared, p, sizeof(T), site_file, site_line, true);
#endif
    *p = v;
}

// Written without a + b - 1, which overflows for a near INT_MAX.
__host__ __device__ __forceinline__ constexpr int ceil_div(int a, int b) { return a / b + (a % b != 0); }
__host__ __device__ __forceinline__ constexpr long long ceil_div(long long a, long long b) {
    return a / b + (a % b != 0);
}

// Butterfly reductions: after the loop every lane of the warp holds the
// result, so no broadcast is needed. All 32 lanes must be present.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// Sum of one float per thread over a block of kThreads (a power of two)
// threads, through the kThreads-float shared array s: a fixed-shape tree, so
// the result has the same bits every run. Every thread of the block must call
// it; the sum is returned to thread 0 (other threads get partial sums).
template <int kThreads>
__device__ __forceinline__ float block_tree_sum(float* s, float v) {
    smem_store(&s[threadIdx.x], v);
    __syncthreads();
    // Halve the active range each step; the barrier makes the partner's
    // value of the previous step visible.
    for (int stride = kThreads / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) {
            const float sum = smem_load(&s[threadIdx.x]) + smem_load(&s[threadIdx.x + stride]);
            smem_store(&s[threadIdx.x], sum);
        }
        __syncthreads();
    }
    return smem_load(&s[threadIdx.x]);
}

// FCN_CUDA_SYNC_LAUNCHES=1: every launch waits for its kernel and checks
// how it ended, so a fault (an illegal address, a misaligned access) is
// raised by the launch that caused it, naming that kernel, instead of at a
// later sync as some other call's error. For debugging and the GPU test
// runs: it serializes host and device. Read once per process (unset or 0:
// off); any other value is refused at every launch until it is fixed. The
// emulator runs each grid to completion anyway: there it is only validated.
inline bool sync_launches() {
    static const bool on = [] {
        const char* v = std::getenv("FCN_CUDA_SYNC_LAUNCHES");
        const std::string value = v ? v : "";
        if (value.empty() || value == "0") return false;
        if (value == "1") return true;
        throw std::runtime_error("FCN_CUDA_SYNC_LAUNCHES must be 0 or 1, got '" + value + "'");
    }();
    return on;
}

// "kernel NAME (grid X x Y x Z, block X x Y x Z): WHAT", as a GPU launch's
// error names it (the GPU does not say which block faulted; the emulator does).
inline std::runtime_error launch_error(const char* name, dim3 grid, dim3 block, const char* what) {
    auto dims = [](dim3 d) {
        return std::to_string(d.x) + "x" + std::to_string(d.y) + "x" + std::to_string(d.z);
    };
    return std::runtime_error(std::string("kernel ") + name + " (grid " + dims(grid) + ", block " + dims(block) +
                              "): " + what);
}

// The one launch helper. `name` is what an error message calls the kernel.
// Under nvcc: the triple-chevron launch plus a check of the launch status
// (and, with FCN_CUDA_SYNC_LAUNCHES=1, of the kernel's end); an error becomes
// std::runtime_error, which pybind11 turns into RuntimeError.
// Under the emulator: the grid runs to completion on the host worker pool
// before this returns, and emulator errors (divergent barriers, ...) throw.
template <typename... KArgs, typename... Args>
inline void launch(const char* name, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem_bytes,
                   cudaStream_t stream, Args... args) {
    const bool sync = sync_launches();
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0 || block.y == 0 || block.z == 0) return;
#if defined(FCN_EMU)
    (void)sync;
    ::fcn_emu::launch(name, grid, block, smem_bytes, [=]() { kernel(static_cast<KArgs>(args)...); });
#else
    if (smem_bytes > 48 * 1024) {
        cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes));
        if (e != cudaSuccess) throw launch_error(name, grid, block, cudaGetErrorString(e));
    }
    kernel<<<grid, block, smem_bytes, stream>>>(static_cast<KArgs>(args)...);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) throw launch_error(name, grid, block, cudaGetErrorString(e));
    if (!sync) return;
    // A stream being captured into a CUDA graph must not be synchronized
    // (that would end the capture): its kernels run, and are checked, at replay.
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    e = cudaStreamIsCapturing(stream, &capture);
    if (e == cudaSuccess && capture == cudaStreamCaptureStatusNone) e = cudaStreamSynchronize(stream);
    if (e != cudaSuccess) throw launch_error(name, grid, block, cudaGetErrorString(e));
#endif
}

}  // namespace fcn
