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

}  // namespace fcn
