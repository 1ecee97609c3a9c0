// probes_wgmma.cuh: small kernels that pin down the warpgroup MMA wrappers
// (ptx_wgmma.cuh), tested in tests/kernels/test_wgmma.py against values
// worked out by hand from the PTX ISA's layouts.
//   wgmma_probe<N, kBf16, kRs>: copies a shared-memory image laid out by the
//     test (the operands in the ISA's K-major layouts, swizzled or not) to a
//     1024-byte-aligned base, makes the descriptors of A and B from offsets
//     into it, and runs one m64nNk8 (tf32) or m64nNk16 (bf16) wgmma, SS form
//     or RS (A from a_regs, each thread's 4 registers), from accumulators
//     d_init; each thread writes its N/2 accumulators to out. `mode` adds a
//     second wgmma, a second group, an early read of the accumulators, or
//     one of the misuses the emulator must refuse (WgmmaProbeMode).
//   wgmma_tma_probe: the Hopper mainloop's step: TMA loads A (64 x 32
//     floats) and B (64 x 32, K-major) with the 128-byte swizzle, an mbarrier
//     wait, then four m64n64k8 tf32 wgmmas along K (the start address 32
//     bytes on each time) into one group. tma_early (host only): thread 0
//     loads B again before the wait that retires them: an error.
//   wgmma_descriptor_probe: one thread writes the descriptor of base +
//     offset with the given offsets and swizzle.
#pragma once
#include "common.cuh"
#include "ptx_sm90.cuh"  // fence_proxy_async
#include "ptx_wgmma.cuh"

namespace fcn {

struct WgmmaProbeOperand {
    int offset;  // bytes past the probe's 1024-aligned base
    unsigned lbo, sbo, swizzle;
};

enum WgmmaProbeMode : int {
    kWgmmaOnce = 0,         // fence, wgmma, commit, wait 0
    kWgmmaTwice = 1,        // a second wgmma accumulating the same product, one group
    kWgmmaStale = 2,        // out2: the accumulators read after the commit, before the wait (host only)
    kWgmmaGroups = 3,       // a second group into other accumulators e (from d_init, accumulating);
                            // wait 1: out = d, out2 = e (its group pending: host only)
    kWgmmaStoreEarly = 4,   // thread 0 stores into B (fcn::smem_store) before the wait: an error
    kWgmmaPlainEarly = 5,   // thread 0 changes a high byte of B with a plain store before the wait: an error
    kWgmmaCpAsyncEarly = 6, // thread 0 cp.async's into B before the wait: an error
    kWgmmaNoFence = 7,      // no wgmma.fence before the wgmma: an error
    kWgmmaWarps1To4 = 8,    // warps 1 .. 4 of 8 execute it, not an aligned warpgroup: an error
    kWgmmaSetmaxnreg = 9,   // the warpgroup gives registers back, then takes more (host only)
    kWgmmaSetmaxnreg3 = 10, // only warps 0 .. 2 give registers back: an error
    kWgmmaProducerRaces = 11,   // 160 threads: warp 4 rewrites B after a barrier that follows the commit,
                                // before the wait (a race the TSan build reports; an error in the others)
    kWgmmaProducerOrdered = 12, // the same with the barrier after the wait: correct
};

template <int N, bool kBf16, bool kRs>
__global__ void wgmma_probe(const unsigned char* __restrict__ image, int image_bytes, WgmmaProbeOperand a_op,
                            WgmmaProbeOperand b_op, const uint32_t* __restrict__ a_regs,
                            const float* __restrict__ d_init, float* __restrict__ out, float* __restrict__ out2,
                            bool accumulate, int mode) {
    constexpr int kD = N / 2;
    FCN_DYNAMIC_SMEM(unsigned char, raw);
    unsigned char* base = raw + (1024 - reinterpret_cast<uintptr_t>(raw) % 1024) % 1024;
    const int t = threadIdx.x;
    for (int i = t; i < image_bytes; i += blockDim.x) base[i] = image[i];
    fence_proxy_async();  // these generic-proxy writes, before the tensor core's (async proxy) reads
    __syncthreads();
    if (mode == kWgmmaWarps1To4 && (t < 32 || t >= 160)) return;
    auto handoff = [] { __syncthreads(); };  // one barrier site for the warpgroup and the producer warp
    if (t >= 128 && (mode == kWgmmaProducerRaces || mode == kWgmmaProducerOrdered)) {
        handoff();
        if (t == 128) base[b_op.offset + 3] ^= 0x40;
        return;
    }
    if (mode == kWgmmaSetmaxnreg || (mode == kWgmmaSetmaxnreg3 && t < 96)) setmaxnreg_dec<40>();
    if (mode == kWgmmaSetmaxnreg) setmaxnreg_inc<232>();
    float d[kD], e[kD];
    for (int i = 0; i < kD; ++i) d[i] = e[i] = d_init[t * kD + i];
    uint32_t a[4];
    for (int i = 0; i < 4; ++i) a[i] = a_regs[(t % 128) * 4 + i];
    const uint64_t a_desc = kRs ? 0 : wgmma_descriptor(base + a_op.offset, a_op.lbo, a_op.sbo, WgmmaSwizzle(a_op.swizzle));
    const uint64_t b_desc = wgmma_descriptor(base + b_op.offset, b_op.lbo, b_op.sbo, WgmmaSwizzle(b_op.swizzle));
    auto mma = [&](float (&acc)[kD], bool scale_d) {
        if constexpr (kRs && kBf16) wgmma_bf16_rs<N>(acc, a, b_desc, scale_d);
        else if constexpr (kRs) wgmma_tf32_rs<N>(acc, a, b_desc, scale_d);
        else if constexpr (kBf16) wgmma_bf16<N>(acc, a_desc, b_desc, scale_d);
        else wgmma_tf32<N>(acc, a_desc, b_desc, scale_d);
    };
    if (mode != kWgmmaNoFence) wgmma_fence();
    mma(d, accumulate);
    if (mode == kWgmmaTwice) mma(d, true);
    wgmma_commit_group();
    if (mode == kWgmmaProducerRaces) handoff();
    if (mode == kWgmmaGroups) {
        mma(e, true);
        wgmma_commit_group();
        wgmma_wait_group<1>(d);
        for (int i = 0; i < kD; ++i) out2[t * kD + i] = e[i];
    }
    if (mode == kWgmmaStale)
        for (int i = 0; i < kD; ++i) out2[t * kD + i] = d[i];
    if (t == 0 && mode == kWgmmaStoreEarly) smem_store(base + b_op.offset, (unsigned char)(base[b_op.offset] ^ 0x40));
    if (t == 0 && mode == kWgmmaPlainEarly) base[b_op.offset + 3] ^= 0x40;  // a high byte of B[0][k]
    if (t == 0 && mode == kWgmmaCpAsyncEarly) {
        cp_async<16>(base + b_op.offset, image);
        cp_async_wait_all();
    }
    wgmma_wait_group<0>(d);
    if (mode == kWgmmaProducerOrdered) handoff();
    if (mode == kWgmmaGroups) wgmma_wait_group<0>(e);
    for (int i = 0; i < kD; ++i) out[t * kD + i] = d[i];
}

__global__ void wgmma_tma_probe(const __grid_constant__ TensorMap map_a, const __grid_constant__ TensorMap map_b,
                                float* __restrict__ out, bool tma_early) {
    __shared__ __align__(1024) float sa[64 * 32];
    __shared__ __align__(1024) float sb[64 * 32];
    __shared__ uint64_t bar;
    const int t = threadIdx.x;
    if (t == 0) {
        mbarrier_init(&bar, 1);
        fence_proxy_async();  // the initialized barrier, before the loads' complete_tx
    }
    __syncthreads();
    if (t == 0) {
        mbarrier_arrive_expect_tx(&bar, 2 * sizeof sa);
        tma_load_2d(sa, &map_a, &bar, 0, 0);
        tma_load_2d(sb, &map_b, &bar, 0, 0);
    }
    mbarrier_wait(&bar, 0);
    float d[32];
    wgmma_fence();
    for (int kk = 0; kk < 4; ++kk)  // 8 floats of K = 32 bytes per step inside the 128-byte swizzle's rows
        wgmma_tf32<64>(d, wgmma_descriptor(sa + 8 * kk, 16, 1024, WgmmaSwizzle::b128),
                       wgmma_descriptor(sb + 8 * kk, 16, 1024, WgmmaSwizzle::b128), kk > 0);
    wgmma_commit_group();
    if (tma_early && t == 0) {
        mbarrier_arrive_expect_tx(&bar, sizeof sb);
        tma_load_2d(sb, &map_b, &bar, 0, 0);
    }
    wgmma_wait_group<0>(d);
    for (int i = 0; i < 32; ++i) out[t * 32 + i] = d[i];
}

__global__ void wgmma_descriptor_probe(WgmmaProbeOperand op, uint64_t* out) {
    __shared__ __align__(1024) unsigned char buf[2048];
    out[0] = wgmma_descriptor(buf + op.offset, op.lbo, op.sbo, WgmmaSwizzle(op.swizzle));
}

}  // namespace fcn
