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
// The Tensor Memory Accelerator (TMA), tiled mode. A kernel takes its tensor
// map (csrc/ops/tensor_map.h encodes one) as `const __grid_constant__
// TensorMap map` and passes &map:
//   tma_load_2d .. tma_load_5d(dst, map, bar, c0, ..): one thread issues
//     cp.async.bulk.tensor.Nd...tile.mbarrier::complete_tx::bytes: the box at
//     signed coordinates c (innermost first; out-of-bounds elements read as
//     zero) lands in shared memory at dst (128-byte aligned; with a swizzle,
//     256/512/1024 for 32/64/128 B), and its bytes count as complete_tx on
//     bar: arm the phase with mbarrier_arrive_expect_tx(bar, box bytes), then
//     read the box only after mbarrier_wait on that phase.
//   fence_proxy_async(): fence.proxy.async.shared::cta, orders this thread's
//     ordinary shared-memory accesses with the async proxy's (TMA, wgmma).
//   prefetch_tensor_map(map): prefetch.tensormap, a hint.
#pragma once
#include "common.cuh"
#include "ptx_sm80.cuh"  // smem_address

#if !defined(FCN_EMU)
#include <cuda.h>  // CUtensorMap (a type only: nothing links against the driver)
#endif

namespace fcn {

#if defined(FCN_EMU)
using TensorMap = ::fcn_emu::TensorMap;
#else
using TensorMap = CUtensorMap;
#endif
static_assert(sizeof(TensorMap) == 128 && alignof(TensorMap) % 64 == 0, "a tensor map is 128 bytes, 64-aligned");  // CUDA 13 aligns CUtensorMap to 128

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

__device__ __forceinline__ void tma_load_2d(void* smem_dst, const TensorMap* map, uint64_t* bar, int c0, int c1) {
#if defined(FCN_EMU)
    const int32_t c[] = {c0, c1};
    ::fcn_emu::tma_load(smem_dst, map, bar, c, 2);
#elif defined(__CUDA_ARCH__)
    FCN_SM90_PTX(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::
            "r"(smem_address(smem_dst)), "l"(map), "r"(c0), "r"(c1), "r"(smem_address(bar))
        : "memory");
#endif
}

__device__ __forceinline__ void tma_load_3d(void* smem_dst, const TensorMap* map, uint64_t* bar, int c0, int c1,
                                            int c2) {
#if defined(FCN_EMU)
    const int32_t c[] = {c0, c1, c2};
    ::fcn_emu::tma_load(smem_dst, map, bar, c, 3);
#elif defined(__CUDA_ARCH__)
    FCN_SM90_PTX(
        "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
        "[%5];\n" ::"r"(smem_address(smem_dst)),
        "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(smem_address(bar))
        : "memory");
#endif
}

__device__ __forceinline__ void tma_load_4d(void* smem_dst, const TensorMap* map, uint64_t* bar, int c0, int c1,
                                            int c2, int c3) {
#if defined(FCN_EMU)
    const int32_t c[] = {c0, c1, c2, c3};
    ::fcn_emu::tma_load(smem_dst, map, bar, c, 4);
#elif defined(__CUDA_ARCH__)
    FCN_SM90_PTX(
        "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, "
        "%5}], [%6];\n" ::"r"(smem_address(smem_dst)),
        "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(smem_address(bar))
        : "memory");
#endif
}

__device__ __forceinline__ void tma_load_5d(void* smem_dst, const TensorMap* map, uint64_t* bar, int c0, int c1,
                                            int c2, int c3, int c4) {
#if defined(FCN_EMU)
    const int32_t c[] = {c0, c1, c2, c3, c4};
    ::fcn_emu::tma_load(smem_dst, map, bar, c, 5);
#elif defined(__CUDA_ARCH__)
    FCN_SM90_PTX(
        "cp.async.bulk.tensor.5d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, "
        "%5, %6}], [%7];\n" ::"r"(smem_address(smem_dst)),
        "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4), "r"(smem_address(bar))
        : "memory");
#endif
}

__device__ __forceinline__ void fence_proxy_async() {
#if defined(FCN_EMU)
    ::fcn_emu::fence_proxy_async();
#elif defined(__CUDA_ARCH__)
    FCN_SM90_PTX("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void prefetch_tensor_map(const TensorMap* map) {
#if defined(FCN_EMU)
    (void)map;  // a cache hint: nothing to model
#elif defined(__CUDA_ARCH__)
    FCN_SM90_PTX("prefetch.tensormap [%0];\n" ::"l"(map) : "memory");
#endif
}

}  // namespace fcn
