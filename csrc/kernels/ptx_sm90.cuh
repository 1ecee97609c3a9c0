// ptx_sm90.cuh: the Hopper (sm_90) instructions of the tensor-core rung, one
// wrapper each: inline PTX under nvcc for sm_90 and later (a trap on older
// targets, which have no such instruction), the emulator's twin
// (csrc/emu/sm90.h, modelled on the PTX ISA's definitions, which it quotes)
// in the host build. `bar` is a 64-bit mbarrier object in shared memory.
//   mbarrier_init(bar, count): mbarrier.init.shared::cta.b64, count in
//     1 .. 2^20 - 1; other threads may use it after a __syncthreads.
//   mbarrier_arrive(bar, count = 1) / mbarrier_arrive_expect_tx(bar, bytes) /
//     mbarrier_expect_tx(bar, bytes) / mbarrier_complete_tx(bar, bytes):
//     mbarrier.arrive / arrive.expect_tx / expect_tx / complete_tx, release
//     semantics at CTA scope.
//   mbarrier_test_wait(bar, parity): mbarrier.test_wait.parity, whether the
//     phase of that parity has completed, at once.
//   mbarrier_wait(bar, parity): mbarrier.try_wait.parity until it has
//     (acquire semantics): the way to wait; a phase starts at parity 0.
#pragma once
#include "common.cuh"
#include "ptx_sm80.cuh"  // smem_address

namespace fcn {

#if !defined(FCN_EMU) && defined(__CUDA_ARCH__)
#if __CUDA_ARCH__ >= 900
#define FCN_SM90_PTX(...) asm volatile(__VA_ARGS__)
#else
#define FCN_SM90_PTX(...) __trap()
#endif
#endif

__device__ __forceinline__ void mbarrier_init(uint64_t* bar, unsigned count) {
#if defined(FCN_EMU)
    ::fcn_emu::mbarrier_init(bar, count);
#elif defined(__CUDA_ARCH__)
    FCN_SM90_PTX("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_address(bar)), "r"(count) : "memory");
#endif
}

__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar, unsigned count = 1) {
#if defined(FCN_EMU)
    ::fcn_emu::mbarrier_arrive(bar, count);
#elif defined(__CUDA_ARCH__)
    FCN_SM90_PTX("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_address(bar)), "r"(count)
                 : "memory");
#endif
}

__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, unsigned bytes) {
#if defined(FCN_EMU)
    ::fcn_emu::mbarrier_arrive_expect_tx(bar, bytes);
#elif defined(__CUDA_ARCH__)
    FCN_SM90_PTX("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_address(bar)),
                 "r"(bytes)
                 : "memory");
#endif
}

__device__ __forceinline__ void mbarrier_expect_tx(uint64_t* bar, unsigned bytes) {
#if defined(FCN_EMU)
    ::fcn_emu::mbarrier_expect_tx(bar, bytes);
#elif defined(__CUDA_ARCH__)
    FCN_SM90_PTX("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(smem_address(bar)), "r"(bytes)
                 : "memory");
#endif
}

__device__ __forceinline__ void mbarrier_complete_tx(uint64_t* bar, unsigned bytes) {
#if defined(FCN_EMU)
    ::fcn_emu::mbarrier_complete_tx(bar, bytes);
#elif defined(__CUDA_ARCH__)
    FCN_SM90_PTX("mbarrier.complete_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(smem_address(bar)), "r"(bytes)
                 : "memory");
#endif
}

__device__ __forceinline__ bool mbarrier_test_wait(uint64_t* bar, unsigned parity) {
#if defined(FCN_EMU)
    return ::fcn_emu::mbarrier_test_wait_parity(bar, parity);
#elif defined(__CUDA_ARCH__)
    unsigned done = 0;
    FCN_SM90_PTX(
        "{\n .reg .pred p;\n mbarrier.test_wait.parity.acquire.cta.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_address(bar)), "r"(parity)
        : "memory");
    return done != 0;
#else
    return false;
#endif
}

__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, unsigned parity) {
#if defined(FCN_EMU)
    ::fcn_emu::mbarrier_wait_parity(bar, parity);
#elif defined(__CUDA_ARCH__)
    unsigned done = 0;
    do {
        FCN_SM90_PTX(
            "{\n .reg .pred p;\n mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, "
            "p;\n}\n"
            : "=r"(done)
            : "r"(smem_address(bar)), "r"(parity)
            : "memory");
    } while (!done);
#endif
}

}  // namespace fcn
