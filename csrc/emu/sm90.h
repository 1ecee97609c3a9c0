// sm90.h: the emulated twins of the Hopper instructions that
// csrc/kernels/ptx_sm90.cuh wraps (included by emu.h), each modelled on its
// definition in the PTX ISA.
//
// mbarrier (a 64-bit object in shared memory, 8-byte aligned). The ISA gives
// it four parts: the current phase, the expected arrival count (set by init,
// 1 .. 2^20 - 1), the pending arrival count, and the tx-count (bytes of
// asynchronous transactions, -(2^20 - 1) .. 2^20 - 1):
//   init(count):      phase 0, expected = pending = count, tx-count 0;
//   expect_tx(n):     tx-count += n;
//   complete_tx(n):   tx-count -= n;
//   arrive(count):    pending -= count (count 1 .. 2^20 - 1);
//   arrive.expect_tx(n): expect_tx(n), then arrive(1);
//   the current phase completes when pending == 0 and tx-count == 0: the
//   phase advances, pending = expected and tx-count = 0;
//   test_wait.parity / try_wait.parity(p): true when the phase of parity p
//   has completed, i.e. p is the parity of the phase before the current one.
// The emulator keeps those parts in the object's own 64 bits (an encoding of
// its own: the ISA calls the object opaque), updated with atomic
// read-modify-writes: an arrive releases, a wait that succeeds acquires, so
// ThreadSanitizer sees the happens-before a GPU gives. What the ISA leaves
// undefined is an error naming the kernel: a count out of range, an arrive
// past the pending count, a tx-count out of range, an object used before its
// init (the bits 62-63 tag an initialized one) or misaligned. try_wait is
// the blocking wait (returning only once the phase completed is one of its
// legal behaviours): the waiting thread sleeps until the phase completes, and
// when no thread of the block can go on, the launch fails naming the waiter
// and the barrier's state (never a hang). test_wait returns at once; a false
// answer lets the block's other threads run first, and a round of the
// scheduler in which every thread left only spun again on a false test_wait
// of an unchanged barrier is a deadlock too.
#pragma once

#include <string>

#include "tma.h"

namespace fcn_emu {

namespace mbar {
constexpr uint64_t kCountMax = (1u << 20) - 1;
constexpr int kExpectedShift = 20, kTxShift = 40, kPhaseShift = 61;
constexpr uint64_t kField = (1u << 20) - 1, kTxField = (1u << 21) - 1;
constexpr uint64_t kTag = 2ull << 62;  // bits 62-63 = 0b10: initialized

struct State {
    unsigned phase;
    uint64_t pending, expected;
    long long tx;
};

inline bool initialized(uint64_t w) { return (w >> 62) == 2; }

inline State decode(uint64_t w) {
    State s;
    s.pending = w & kField;
    s.expected = (w >> kExpectedShift) & kField;
    const uint64_t tx = (w >> kTxShift) & kTxField;
    s.tx = (tx & (1u << 20)) ? (long long)tx - (1ll << 21) : (long long)tx;
    s.phase = unsigned(w >> kPhaseShift) & 1u;
    return s;
}

inline uint64_t encode(const State& s) {
    return kTag | uint64_t(s.phase & 1u) << kPhaseShift | (uint64_t(s.tx) & kTxField) << kTxShift |
           s.expected << kExpectedShift | s.pending;
}
}  // namespace mbar

// The runtime's side (runtime.cpp): sleep until the phase of parity `parity`
// of the barrier at `bar` completes (or the block deadlocks: an error); after
// a false test_wait, let the block's other threads run.
void mbarrier_sleep(const uint64_t* bar, unsigned parity);
void mbarrier_spun(const uint64_t* bar);
// Before a block's thread 0 first touches an mbarrier: the block must run as
// fibers (a loop of threads cannot wait on one another).
void mbarrier_enter();

inline uint64_t* mbarrier_checked(void* bar, const char* what) {
    check_aligned(what, bar, 8);
    mbarrier_enter();
    return static_cast<uint64_t*>(bar);
}

// One atomic update of an initialized barrier: `op` edits the state (and
// may fail); the phase completes here when its conditions hold.
template <typename Op>
inline void mbarrier_update(void* bar, const char* what, Op op) {
    uint64_t* p = mbarrier_checked(bar, what);
    uint64_t old = __atomic_load_n(p, __ATOMIC_RELAXED);
    for (;;) {
        if (!mbar::initialized(old)) fail((std::string(what) + " on an mbarrier that was never initialized").c_str());
        mbar::State s = mbar::decode(old);
        op(s);
        const bool completes = s.pending == 0 && s.tx == 0;
        if (completes) {
            s.phase ^= 1u;
            s.pending = s.expected;
        }
        if (__atomic_compare_exchange_n(p, &old, mbar::encode(s), true, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) return;
    }
}

inline void mbarrier_init(void* bar, unsigned count) {
    uint64_t* p = mbarrier_checked(bar, "mbarrier.init");
    if (count < 1 || count > mbar::kCountMax) fail("mbarrier.init: count must be in 1 .. 2^20 - 1");
    __atomic_store_n(p, mbar::encode({0, count, count, 0}), __ATOMIC_RELEASE);
}

inline void mbarrier_expect_tx(void* bar, unsigned tx, const char* what = "mbarrier.expect_tx") {
    if (tx > mbar::kCountMax) fail((std::string(what) + ": txCount must be in 0 .. 2^20 - 1").c_str());
    mbarrier_update(bar, what, [&](mbar::State& s) {
        s.tx += tx;
        if (s.tx > (long long)mbar::kCountMax)
            fail((std::string(what) + ": the tx-count would pass 2^20 - 1").c_str());
    });
}

inline void mbarrier_complete_tx(void* bar, unsigned tx) {
    if (tx > mbar::kCountMax) fail("mbarrier.complete_tx: txCount must be in 0 .. 2^20 - 1");
    mbarrier_update(bar, "mbarrier.complete_tx", [&](mbar::State& s) {
        s.tx -= tx;
        if (s.tx < -(long long)mbar::kCountMax) fail("mbarrier.complete_tx: the tx-count would pass -(2^20 - 1)");
    });
}

inline void mbarrier_arrive(void* bar, unsigned count = 1) {
    if (count < 1 || count > mbar::kCountMax) fail("mbarrier.arrive: count must be in 1 .. 2^20 - 1");
    mbarrier_update(bar, "mbarrier.arrive", [&](mbar::State& s) {
        if (count > s.pending)
            fail(("mbarrier.arrive: " + std::to_string(count) + " arrivals where the phase awaits only " +
                  std::to_string(s.pending))
                     .c_str());
        s.pending -= count;
    });
}

// expect-tx, then arrive: one read-modify-write, as the one instruction.
inline void mbarrier_arrive_expect_tx(void* bar, unsigned tx) {
    if (tx > mbar::kCountMax) fail("mbarrier.arrive.expect_tx: txCount must be in 0 .. 2^20 - 1");
    mbarrier_update(bar, "mbarrier.arrive.expect_tx", [&](mbar::State& s) {
        s.tx += tx;
        if (s.tx > (long long)mbar::kCountMax) fail("mbarrier.arrive.expect_tx: the tx-count would pass 2^20 - 1");
        if (s.pending < 1) fail("mbarrier.arrive.expect_tx: the phase awaits no arrival");
        s.pending -= 1;
    });
}

// Whether the phase of parity `parity` has completed: the current phase has
// the other parity.
inline bool mbarrier_phase_done(const uint64_t* bar, unsigned parity, const char* what) {
    const uint64_t w = __atomic_load_n(bar, __ATOMIC_ACQUIRE);
    if (!mbar::initialized(w)) fail((std::string(what) + " on an mbarrier that was never initialized").c_str());
    return mbar::decode(w).phase != (parity & 1u);
}

inline bool mbarrier_test_wait_parity(void* bar, unsigned parity) {
    const uint64_t* p = mbarrier_checked(bar, "mbarrier.test_wait.parity");
    const bool done = mbarrier_phase_done(p, parity, "mbarrier.test_wait.parity");
    if (!done) mbarrier_spun(p);
    else if (shared_watched()) tma_observe(p, parity);
    return done;
}

inline void mbarrier_wait_parity(void* bar, unsigned parity) {
    const uint64_t* p = mbarrier_checked(bar, "mbarrier.try_wait.parity");
    while (!mbarrier_phase_done(p, parity, "mbarrier.try_wait.parity")) mbarrier_sleep(p, parity);
    if (shared_watched()) tma_observe(p, parity);
}

// ------------------------------------------------- cp.async.bulk.tensor
// cp.async.bulk.tensor.{n}d.shared::cluster.global.tile.mbarrier::complete_tx::bytes
// [dst], [map, {c0, .., c(n-1)}], [bar]. The ISA: the tensor map must be
// 64-byte aligned (an object made by cuTensorMapEncodeTiled) and of rank n;
// the box (tma.h's load_box) is written to dst, which must be 128-byte
// aligned, and with a swizzle aligned to its repeat (the swizzle's span
// times 8 rows: 256, 512 or 1024 bytes, the CUDA programming guide's TMA
// swizzle table); on completion a complete-tx of the box's bytes is
// performed on the mbarrier. Here the load is performed at issue by the
// issuing thread (kernel code: ASan checks the writes, TSan sees them before
// the complete-tx's release, so a thread's wait that acquires the phase is
// ordered after them), then the complete-tx, in one piece (the hardware may
// split it: a tx-count that reaches zero early completes the phase early
// there, while here a phase whose tx-count goes negative never completes and
// its waiter is reported as a deadlock); the bytes stay in flight (smem.h)
// until a wait observes the phase that the complete-tx counted towards.
inline void tma_load(void* dst, const void* map, uint64_t* bar, const int32_t* c, unsigned n) {
    const std::string what = "cp.async.bulk.tensor." + std::to_string(n) + "d";
    check_aligned((what + " tensor map").c_str(), map, 64);
    const TensorMap& m = *static_cast<const TensorMap*>(map);
    if (m.magic != kTensorMapMagic)
        fail((what + ": the tensor map is not one cuTensorMapEncodeTiled encoded").c_str());
    if (m.rank != n)
        fail((what + " on a tensor map of rank " + std::to_string(m.rank) + ": the coordinates must be one per "
              "dimension")
                 .c_str());
    check_aligned((what + " shared-memory destination").c_str(), dst, m.swizzle ? 8 * m.swizzle : 128);
    mbarrier_checked(bar, what.c_str());
    const uint64_t bytes = box_bytes(m);
    if (bytes > mbar::kCountMax) fail((what + ": the box's bytes pass the tx-count's 2^20 - 1").c_str());
    tma_issue_check(dst, bytes, what.c_str());
    load_box(static_cast<unsigned char*>(dst), m, c);
    unsigned parity = 0;
    mbarrier_update(bar, (what + " (complete_tx)").c_str(), [&](mbar::State& s) {
        parity = s.phase;
        s.tx -= (long long)bytes;
        if (s.tx < -(long long)mbar::kCountMax) fail((what + ": the tx-count would pass -(2^20 - 1)").c_str());
    });
    tma_register(dst, bytes, bar, parity);
}

// fence.proxy.async.shared::cta: on a GPU, orders this thread's shared-memory
// accesses through the generic proxy (ordinary loads and stores, and the
// mbarrier's init) with its later accesses through the async proxy (tensor
// copies, wgmma operand reads), and the reverse. The emulator has one proxy
// (an async operation is performed by the issuing thread, in program order),
// so the fence only keeps the compiler from moving memory accesses across it.
inline void fence_proxy_async() { __asm__ __volatile__("" ::: "memory"); }

}  // namespace fcn_emu
