// ptx_sm80.cuh: the Ampere (sm_80 and later) instructions of the tensor-core
// rung, one wrapper each: inline PTX under nvcc, the emulator's twin
// (csrc/emu/sm80.h, modelled on the PTX ISA's definitions, which it quotes)
// in the host build.
//   cp_async<kBytes>(smem, gmem, src_bytes): cp.async.ca (4, 8, 16 bytes) or
//     .cg (16 bytes, bypassing L1: cp_async_cg) global -> shared; the first
//     src_bytes are read, the rest zero-filled (0: all zeros, gmem unread).
//   cp_async_commit / cp_async_wait<N> / cp_async_wait_all: close the
//     thread's copies into a group; wait until at most N of its groups are
//     in flight (wait_all: none, uncommitted copies included). A destination
//     is only safe to read after the wait, and for other threads after a
//     __syncthreads too.
//   ldmatrix<kNum, kTrans>(r, row): ldmatrix.sync.aligned.m8n8.x{1,2,4}
//     {.trans}.shared.b16; `row` is this lane's row address (lanes 8i .. 8i+7
//     give matrix i's rows 0..7, 16 bytes each).
//   mma_m16n8k8_tf32 / mma_m16n8k16_bf16(d, a, b, c): mma.sync.aligned
//     .row.col with fp32 accumulators, fragments as sm80.h lays them out.
// Warp collectives (ldmatrix, mma) need all 32 lanes, converged.
#pragma once
#include "common.cuh"

namespace fcn {

#if !defined(FCN_EMU) && defined(__CUDA_ARCH__)
__device__ __forceinline__ unsigned smem_address(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
#endif

template <int kBytes>
__device__ __forceinline__ void cp_async(void* smem, const void* gmem, int src_bytes = kBytes FCN_CALL_SITE) {
    static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "cp.async copies 4, 8 or 16 bytes");
#if defined(FCN_EMU)
    ::fcn_emu::cp_async(smem, gmem, kBytes, unsigned(src_bytes), site_file, site_line);
#elif defined(__CUDA_ARCH__)
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(smem_address(smem)), "l"(gmem),
                 "n"(kBytes), "r"(src_bytes)
                 : "memory");
#endif
}

__device__ __forceinline__ void cp_async_cg(void* smem, const void* gmem, int src_bytes = 16 FCN_CALL_SITE) {
#if defined(FCN_EMU)
    ::fcn_emu::cp_async(smem, gmem, 16, unsigned(src_bytes), site_file, site_line);
#elif defined(__CUDA_ARCH__)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(smem)), "l"(gmem),
                 "r"(src_bytes)
                 : "memory");
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(FCN_EMU)
    ::fcn_emu::cp_async_commit();
#elif defined(__CUDA_ARCH__)
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
    static_assert(N >= 0 && N < 8, "cp.async.wait_group takes a small constant");
#if defined(FCN_EMU)
    ::fcn_emu::cp_async_wait(N);
#elif defined(__CUDA_ARCH__)
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// cp.async.wait_all is cp.async.commit_group then cp.async.wait_group 0.
__device__ __forceinline__ void cp_async_wait_all() {
#if defined(FCN_EMU)
    ::fcn_emu::cp_async_commit();
    ::fcn_emu::cp_async_wait(0);
#elif defined(__CUDA_ARCH__)
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

template <int kNum, bool kTrans = false>
__device__ __forceinline__ void ldmatrix(uint32_t (&r)[kNum], const void* row) {
    static_assert(kNum == 1 || kNum == 2 || kNum == 4, "ldmatrix loads 1, 2 or 4 matrices");
#if defined(FCN_EMU)
    ::fcn_emu::ldmatrix<kNum, kTrans>(r, row);
#elif defined(__CUDA_ARCH__)
    const unsigned a = smem_address(row);
    if constexpr (kNum == 1 && !kTrans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(a) : "memory");
    else if constexpr (kNum == 1)
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(a) : "memory");
    else if constexpr (kNum == 2 && !kTrans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                     : "=r"(r[0]), "=r"(r[1]) : "r"(a) : "memory");
    else if constexpr (kNum == 2)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                     : "=r"(r[0]), "=r"(r[1]) : "r"(a) : "memory");
    else if constexpr (!kTrans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a) : "memory");
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a) : "memory");
#endif
}

__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                 const float (&c)[4]) {
#if defined(FCN_EMU)
    ::fcn_emu::mma_m16n8k8_tf32(d, a, b, c);
#elif defined(__CUDA_ARCH__)
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
#endif
}

__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                  const float (&c)[4]) {
#if defined(FCN_EMU)
    ::fcn_emu::mma_m16n8k16_bf16(d, a, b, c);
#elif defined(__CUDA_ARCH__)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
#endif
}

}  // namespace fcn
