// ptx_wgmma.cuh: the warpgroup matrix multiply of the Hopper rung (sm_90a),
// one wrapper each: inline PTX under nvcc where __CUDA_ARCH_FEAT_SM90_ALL
// says the target is sm_90a (a trap elsewhere: plain sm_90 has no wgmma),
// the emulator's twin (csrc/emu/wgmma.h, which quotes the ISA's layouts) in
// the host build. A warpgroup is 4 consecutive warps from a warp index
// divisible by 4; every wrapper but wgmma_descriptor is collective over it.
//   wgmma_descriptor(smem, lbo, sbo, swizzle): the ISA's 64-bit matrix
//     descriptor of a K-major operand (16-byte aligned start; with a swizzle,
//     at the start of the swizzle's 1024/512/256-byte pattern, base offset 0).
//     Advance along K by adding (bytes >> 4) to it.
//   wgmma_tf32<N>(d, a_desc, b_desc, accumulate) (m64nNk8) and
//   wgmma_bf16<N>(...) (m64nNk16): D[64 x N] = A * B (+ D when accumulate),
//     A and B K-major in shared memory, fp32 accumulators float d[N / 2] per
//     thread (row 16 * warp + lane / 4 + 8 * (i / 2 % 2), column
//     8 * (i / 4) + 2 * (lane % 4) + i % 2). N in {8, 16, 32, 64, 128, 256}.
//   wgmma_tf32_rs<N> / wgmma_bf16_rs<N>(d, a, b_desc, accumulate): A from
//     registers, a[4] per thread in the ISA's fragment layout (wgmma.h).
//   wgmma_fence(): before the first wgmma, and between a register access and
//     a wgmma that reads or writes the same registers.
//   wgmma_commit_group() / wgmma_wait_group<N>(): close the issued wgmmas into
//     a group; wait until at most N groups are pending. The accumulators and
//     the operand shared memory belong to the tensor core until then; the
//     overload wgmma_wait_group<N>(d) also stops the compiler from moving
//     accesses of d across the wait (as must be, the asm sees no dependence).
//   setmaxnreg_inc<R> / setmaxnreg_dec<R>(): the warpgroup's register budget
//     per thread, R in 24 .. 256, a multiple of 8 (the emulator checks only
//     that all four warps execute it).
// Shared memory written by ordinary stores and read by wgmma needs
// fence_proxy_async (ptx_sm90.cuh) before the barrier that publishes it.
#pragma once
#include "common.cuh"
#include "ptx_sm80.cuh"  // smem_address

namespace fcn {

enum class WgmmaSwizzle : unsigned { none = 0, b128 = 1, b64 = 2, b32 = 3 };  // descriptor bits 62-63

constexpr bool wgmma_valid_n(int n) { return n == 8 || n == 16 || n == 32 || n == 64 || n == 128 || n == 256; }

#if !defined(FCN_EMU) && defined(__CUDA_ARCH__)
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FCN_WGMMA_PTX(...) asm volatile(__VA_ARGS__)
#else
#define FCN_WGMMA_PTX(...) __trap()
#endif

// The accumulators are the first operands, %0 .. %(N/2 - 1); FCN_WG_EACH_N
// gives each N, its N/2 and the numbers of the six operands after them.
#define FCN_WG_D4 "%0, %1, %2, %3"
#define FCN_WG_D8 FCN_WG_D4 \
    ", %4, %5, %6, %7"
#define FCN_WG_D16 FCN_WG_D8 \
    ", %8, %9, %10, %11, %12, %13, %14, %15"
#define FCN_WG_D32 FCN_WG_D16 \
    ", %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define FCN_WG_D64 FCN_WG_D32 \
    ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47" \
    ", %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define FCN_WG_D128 FCN_WG_D64 \
    ", %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79" \
    ", %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95" \
    ", %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111" \
    ", %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define FCN_WG_F4(o) "+f"(d[o]), "+f"(d[o + 1]), "+f"(d[o + 2]), "+f"(d[o + 3])
#define FCN_WG_F8(o) FCN_WG_F4(o), FCN_WG_F4(o + 4)
#define FCN_WG_F16(o) FCN_WG_F8(o), FCN_WG_F8(o + 8)
#define FCN_WG_F32(o) FCN_WG_F16(o), FCN_WG_F16(o + 16)
#define FCN_WG_F64(o) FCN_WG_F32(o), FCN_WG_F32(o + 32)
#define FCN_WG_F128(o) FCN_WG_F64(o), FCN_WG_F64(o + 64)
#define FCN_WG_EACH_N(X) \
    X(8, 4, "%4", "%5", "%6", "%7", "%8", "%9") \
    X(16, 8, "%8", "%9", "%10", "%11", "%12", "%13") \
    X(32, 16, "%16", "%17", "%18", "%19", "%20", "%21") \
    X(64, 32, "%32", "%33", "%34", "%35", "%36", "%37") \
    X(128, 64, "%64", "%65", "%66", "%67", "%68", "%69") \
    X(256, 128, "%128", "%129", "%130", "%131", "%132", "%133")
// SS: {d}, a-desc, b-desc, scale-d, imm-scale-a, imm-scale-b[, imm-trans-a, imm-trans-b]
#define FCN_WG_SS(types, trans, n, dn, o0, o1, o2, o3, o4, o5)                                                   \
    if constexpr (N == n)                                                                                     \
        FCN_WGMMA_PTX("{\n.reg .pred p;\nsetp.ne.b32 p, " o2 ", 0;\nwgmma.mma_async.sync.aligned.m64n" #n types \
                      " {" FCN_WG_D##dn "}, " o0 ", " o1 ", p, 1, 1" trans ";\n}\n"                              \
                      : FCN_WG_F##dn(0)                                                                       \
                      : "l"(a_desc), "l"(b_desc), "r"(scale_d));
// RS: {d}, {a0, a1, a2, a3}, b-desc, scale-d, imm-scale-a, imm-scale-b[, imm-trans-b]
#define FCN_WG_RS(types, trans, n, dn, o0, o1, o2, o3, o4, o5)                                                   \
    if constexpr (N == n)                                                                                     \
        FCN_WGMMA_PTX("{\n.reg .pred p;\nsetp.ne.b32 p, " o5 ", 0;\nwgmma.mma_async.sync.aligned.m64n" #n types \
                      " {" FCN_WG_D##dn "}, {" o0 ", " o1 ", " o2 ", " o3 "}, " o4 ", p, 1, 1" trans ";\n}\n"      \
                      : FCN_WG_F##dn(0)                                                                       \
                      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(scale_d));
#define FCN_WG_SS_TF32(...) FCN_WG_SS("k8.f32.tf32.tf32", "", __VA_ARGS__)
#define FCN_WG_SS_BF16(...) FCN_WG_SS("k16.f32.bf16.bf16", ", 0, 0", __VA_ARGS__)
#define FCN_WG_RS_TF32(...) FCN_WG_RS("k8.f32.tf32.tf32", "", __VA_ARGS__)
#define FCN_WG_RS_BF16(...) FCN_WG_RS("k16.f32.bf16.bf16", ", 0", __VA_ARGS__)
#endif

__device__ __forceinline__ uint64_t wgmma_descriptor(const void* smem, unsigned leading_byte_offset,
                                                     unsigned stride_byte_offset, WgmmaSwizzle swizzle) {
#if defined(FCN_EMU)
    return ::fcn_emu::wgmma_descriptor(smem, leading_byte_offset, stride_byte_offset, unsigned(swizzle));
#elif defined(__CUDA_ARCH__)
    // matrix-descriptor-encode(x) = (x & 0x3FFFF) >> 4 for the address and both offsets
    return uint64_t((smem_address(smem) & 0x3FFFFu) >> 4) | uint64_t((leading_byte_offset & 0x3FFFFu) >> 4) << 16 |
           uint64_t((stride_byte_offset & 0x3FFFFu) >> 4) << 32 | uint64_t(unsigned(swizzle) & 3u) << 62;
#else
    return 0;
#endif
}

__device__ __forceinline__ void wgmma_fence() {
#if defined(FCN_EMU)
    ::fcn_emu::wgmma_fence();
#elif defined(__CUDA_ARCH__)
    FCN_WGMMA_PTX("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void wgmma_commit_group() {
#if defined(FCN_EMU)
    ::fcn_emu::wgmma_commit_group();
#elif defined(__CUDA_ARCH__)
    FCN_WGMMA_PTX("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void wgmma_wait_group() {
    static_assert(N >= 0 && N <= 7, "wgmma.wait_group takes a small constant");
#if defined(FCN_EMU)
    ::fcn_emu::wgmma_wait_group(N);
#elif defined(__CUDA_ARCH__)
    FCN_WGMMA_PTX("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

// The wait, then every accumulator register "touched" so that the compiler
// keeps its reads after the wait (and its writes before the next wgmma).
template <int N, int K>
__device__ __forceinline__ void wgmma_wait_group(float (&d)[K]) {
    wgmma_wait_group<N>();
#if !defined(FCN_EMU) && defined(__CUDA_ARCH__)
#pragma unroll
    for (int i = 0; i < K; ++i) asm volatile("" : "+f"(d[i])::"memory");
#endif
}

template <int N>
__device__ __forceinline__ void wgmma_tf32(float (&d)[N / 2], uint64_t a_desc, uint64_t b_desc, bool accumulate) {
    static_assert(wgmma_valid_n(N), "wgmma: N must be 8, 16, 32, 64, 128 or 256");
#if defined(FCN_EMU)
    ::fcn_emu::wgmma_mma(d, N, false, false, nullptr, a_desc, b_desc, accumulate);
#elif defined(__CUDA_ARCH__)
    [[maybe_unused]] const unsigned scale_d = accumulate;
    FCN_WG_EACH_N(FCN_WG_SS_TF32)
#endif
}

template <int N>
__device__ __forceinline__ void wgmma_bf16(float (&d)[N / 2], uint64_t a_desc, uint64_t b_desc, bool accumulate) {
    static_assert(wgmma_valid_n(N), "wgmma: N must be 8, 16, 32, 64, 128 or 256");
#if defined(FCN_EMU)
    ::fcn_emu::wgmma_mma(d, N, true, false, nullptr, a_desc, b_desc, accumulate);
#elif defined(__CUDA_ARCH__)
    [[maybe_unused]] const unsigned scale_d = accumulate;
    FCN_WG_EACH_N(FCN_WG_SS_BF16)
#endif
}

template <int N>
__device__ __forceinline__ void wgmma_tf32_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b_desc,
                                              bool accumulate) {
    static_assert(wgmma_valid_n(N), "wgmma: N must be 8, 16, 32, 64, 128 or 256");
#if defined(FCN_EMU)
    ::fcn_emu::wgmma_mma(d, N, false, true, a, 0, b_desc, accumulate);
#elif defined(__CUDA_ARCH__)
    [[maybe_unused]] const unsigned scale_d = accumulate;
    FCN_WG_EACH_N(FCN_WG_RS_TF32)
#endif
}

template <int N>
__device__ __forceinline__ void wgmma_bf16_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b_desc,
                                              bool accumulate) {
    static_assert(wgmma_valid_n(N), "wgmma: N must be 8, 16, 32, 64, 128 or 256");
#if defined(FCN_EMU)
    ::fcn_emu::wgmma_mma(d, N, true, true, a, 0, b_desc, accumulate);
#elif defined(__CUDA_ARCH__)
    [[maybe_unused]] const unsigned scale_d = accumulate;
    FCN_WG_EACH_N(FCN_WG_RS_BF16)
#endif
}

template <int R>
__device__ __forceinline__ void setmaxnreg_inc() {
    static_assert(R >= 24 && R <= 256 && R % 8 == 0, "setmaxnreg: a register count in 24 .. 256, a multiple of 8");
#if defined(FCN_EMU)
    ::fcn_emu::setmaxnreg(true, R);
#elif defined(__CUDA_ARCH__)
    FCN_WGMMA_PTX("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(R));
#endif
}

template <int R>
__device__ __forceinline__ void setmaxnreg_dec() {
    static_assert(R >= 24 && R <= 256 && R % 8 == 0, "setmaxnreg: a register count in 24 .. 256, a multiple of 8");
#if defined(FCN_EMU)
    ::fcn_emu::setmaxnreg(false, R);
#elif defined(__CUDA_ARCH__)
    FCN_WGMMA_PTX("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(R));
#endif
}

}  // namespace fcn
