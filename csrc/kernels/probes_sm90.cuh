// probes_sm90.cuh: small kernels that pin down the emulator's Hopper
// instructions (ptx_sm90.cuh), tested in tests/kernels/test_ptx_sm90.py
// against values worked out by hand from the PTX ISA.
//   mbarrier_trace_probe: one thread walks an mbarrier through three phases
//     (arrivals, tx-counts that go negative, an arrive with a count) and
//     writes test_wait's answer for both parities after each step.
//   mbarrier_pipeline_probe: warp 0 produces into a 2-stage ring, warp 1
//     consumes, synchronized only by full/empty mbarriers; wrong unless a wait
//     really waits for its phase. With consumer_waits false the consumers
//     skip their wait: a race (the TSan build must report it).
//   mbarrier_fault_probe: a wait no thread can complete (a deadlock: an
//     error, never a hang) or a use the ISA leaves undefined (an error in the
//     emulator): for the host build only.
//   tma_load_probe: one TMA load of a 2- to 5-dimensional box into shared
//     memory, awaited on an mbarrier, copied out raw (tests/kernels/
//     test_tma.py); its faults are for the host build only.
//   tma_ring_probe: a producer thread feeds warp 1 through a 3-stage ring
//     of TMA loads and full/empty mbarriers.
#pragma once
#include "common.cuh"
#include "ptx_sm90.cuh"

namespace fcn {

// One thread; out[0 .. 14) as tests/kernels/test_ptx_sm90.py works them out.
__global__ void mbarrier_trace_probe(int* out) {
    __shared__ uint64_t bar;
    int i = 0;
    auto both = [&] {
        out[i++] = mbarrier_test_wait(&bar, 0);
        out[i++] = mbarrier_test_wait(&bar, 1);
    };
    mbarrier_init(&bar, 2);
    both();                              // phase 0
    mbarrier_arrive(&bar);
    both();
    mbarrier_arrive_expect_tx(&bar, 64);
    both();
    mbarrier_complete_tx(&bar, 32);
    both();
    mbarrier_complete_tx(&bar, 32);
    both();                              // phase 1
    mbarrier_complete_tx(&bar, 16);
    both();
    mbarrier_arrive(&bar);
    both();
    mbarrier_arrive_expect_tx(&bar, 16);
    both();                              // phase 2
    mbarrier_arrive(&bar, 2);
    both();                              // phase 3
    mbarrier_wait(&bar, 0);              // phase 2 has completed: returns
    out[i++] = 1;
}

// 64 threads, `rounds` rounds of 32 floats through a 2-stage ring:
// y[l] = sum over r of (r + 1) * x[32 r + (l + 1) % 32].
__global__ void mbarrier_pipeline_probe(const float* __restrict__ x, float* __restrict__ y, int rounds,
                                        bool consumer_waits) {
    __shared__ float buf[2][32];
    __shared__ uint64_t full[2], empty[2];
    const int t = threadIdx.x, lane = t % 32;
    if (t == 0)
        for (int s = 0; s < 2; ++s) {
            mbarrier_init(&full[s], 32);
            mbarrier_init(&empty[s], 32);
        }
    __syncthreads();
    float acc = 0.f;
    for (int r = 0; r < rounds; ++r) {
        const int s = r % 2;
        const unsigned k = unsigned(r / 2) & 1u;  // the parity of this stage's phase
        if (t < 32) {
            mbarrier_wait(&empty[s], k ^ 1u);  // round 0 and 1: the phase before the first has completed
            buf[s][lane] = x[32 * r + lane];
            mbarrier_arrive(&full[s]);
        } else {
            if (consumer_waits) mbarrier_wait(&full[s], k);
            acc += float(r + 1) * buf[s][(lane + 1) % 32];
            mbarrier_arrive(&empty[s]);
        }
    }
    if (t >= 32) y[lane] = acc;
}

// One warp. kind 0: waits for arrivals that never come; 1: spins on
// test_wait for them; 2: waits for bytes that never arrive; 3: init with
// count 0; 4: arrive on a never-initialized object; 5: more arrivals than
// the phase awaits; 6: a misaligned object; 7: a tx-count past 2^20 - 1.
__global__ void mbarrier_fault_probe(int kind, float* y) {
    __shared__ uint64_t bar[2];
    const int t = threadIdx.x;
    if (t == 0) {
        bar[0] = 0;
        if (kind != 4) mbarrier_init(&bar[0], kind == 3 ? 0u : 2u);
    }
    __syncthreads();
    if (t != 0) return;
    switch (kind) {
        case 0: mbarrier_arrive(&bar[0]); mbarrier_wait(&bar[0], 0); break;
        case 1: mbarrier_arrive(&bar[0]); while (!mbarrier_test_wait(&bar[0], 0)) {} break;
        case 2: mbarrier_arrive(&bar[0]); mbarrier_arrive_expect_tx(&bar[0], 128); mbarrier_wait(&bar[0], 0); break;
        case 4: mbarrier_arrive(&bar[0]); break;
        case 5: mbarrier_arrive(&bar[0], 3); break;
        case 6: mbarrier_init(reinterpret_cast<uint64_t*>(reinterpret_cast<char*>(bar) + 4), 1); break;
        case 7: mbarrier_expect_tx(&bar[0], (1u << 20) - 1); mbarrier_expect_tx(&bar[0], 1); break;
        default: break;
    }
    y[0] = 1.f;
}

// 64 threads. Every thread fills the first kTmaProbeSmem bytes of shared
// memory with 0xab; thread 0 arms an mbarrier for expect_bytes and loads the
// box at (c0, .., c4) (the first `rank` of them) to dst_offset; every thread
// waits, then the block copies `bytes` bytes from dst_offset to out. fault
// (host only): 1 reads the box before thread 0's wait, 2 writes it, 3 loads
// into it again before the wait, 4 passes the map 16 bytes off its start,
// 6: after the load's issue (a __syncwarp), thread 1 waits on the wrong
// mbarrier (another stage's, whose phase before the first is complete from
// the start) and reads the box.
constexpr int kTmaProbeSmem = 4096;
__global__ void tma_load_probe(const __grid_constant__ TensorMap map, int rank, int c0, int c1, int c2, int c3, int c4,
                               unsigned expect_bytes, int dst_offset, unsigned bytes, int fault, unsigned char* out) {
    __shared__ __align__(1024) unsigned char buf[kTmaProbeSmem];
    __shared__ uint64_t bar, other;
    const int t = threadIdx.x;
    for (int i = t; i < kTmaProbeSmem; i += blockDim.x) buf[i] = 0xab;
    fence_proxy_async();  // these writes, before the async proxy's (the load) to the same bytes
    if (t == 0) {
        mbarrier_init(&bar, 1);
        mbarrier_init(&other, 1);
    }
    __syncthreads();
    if (t == 0) {
        const TensorMap* m = fault == 4 ? reinterpret_cast<const TensorMap*>(reinterpret_cast<const char*>(&map) + 16)
                                        : &map;
        unsigned char* dst = buf + dst_offset;
        prefetch_tensor_map(&map);
        mbarrier_arrive_expect_tx(&bar, expect_bytes);
        for (int again = 0; again < (fault == 3 ? 2 : 1); ++again) switch (rank) {
                case 2: tma_load_2d(dst, m, &bar, c0, c1); break;
                case 3: tma_load_3d(dst, m, &bar, c0, c1, c2); break;
                case 4: tma_load_4d(dst, m, &bar, c0, c1, c2, c3); break;
                default: tma_load_5d(dst, m, &bar, c0, c1, c2, c3, c4); break;
            }
        if (fault == 1) out[0] = smem_load(dst);
        if (fault == 2) smem_store(dst, static_cast<unsigned char>(0));
    }
    if (fault == 6 && t < 32) {
        __syncwarp();
        if (t == 1) {
            mbarrier_wait(&other, 1);
            out[0] = smem_load(buf + dst_offset);
        }
    }
    mbarrier_wait(&bar, 0);
    for (unsigned i = t; i < bytes; i += blockDim.x) out[i] = buf[dst_offset + i];
}

// 64 threads. map: `rounds` rows of 32 floats, box 32 x 1. Thread 0 loads
// row r into stage r % 3 once warp 1 has released it (empty barrier); warp 1
// reads it once its bytes arrived (full barrier, armed by arrive.expect_tx):
// y[l] = sum over r of (r + 1) * x[r][(l + 1) % 32]. consumer_waits false
// leaves out warp 1's wait: a race (host sanitizer builds must report it).
__global__ void tma_ring_probe(const __grid_constant__ TensorMap map, float* __restrict__ y, int rounds,
                               bool consumer_waits) {
    constexpr int kStages = 3;
    __shared__ __align__(128) float buf[kStages][32];
    __shared__ uint64_t full[kStages], empty[kStages];
    const int t = threadIdx.x, lane = t % 32;
    if (t == 0) {
        for (int s = 0; s < kStages; ++s) {
            mbarrier_init(&full[s], 1);
            mbarrier_init(&empty[s], 32);
        }
        fence_proxy_async();  // the initialized barriers, before the async proxy's complete_tx
    }
    __syncthreads();
    float acc = 0.f;
    for (int r = 0; r < rounds; ++r) {
        const int s = r % kStages;
        const unsigned k = unsigned(r / kStages) & 1u;  // the parity of this stage's phase
        if (t == 0) {
            mbarrier_wait(&empty[s], k ^ 1u);  // the first round of a stage: the phase before the first
            mbarrier_arrive_expect_tx(&full[s], 32 * sizeof(float));
            tma_load_2d(buf[s], &map, &full[s], 0, r);
        } else if (t >= 32) {
            if (consumer_waits) mbarrier_wait(&full[s], k);
            acc += float(r + 1) * buf[s][(lane + 1) % 32];
            mbarrier_arrive(&empty[s]);
        }
    }
    if (t >= 32) y[lane] = acc;
}

}  // namespace fcn
