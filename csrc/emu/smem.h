// smem.h: the emulator's model of shared memory beyond plain loads and
// stores (included by emu.h; implemented in smem.cpp, which runtime.cpp
// calls at each block's start and end and at each opened __syncthreads).
//
// Two mechanisms, each one place for every instruction that needs it:
//
// * Asynchronous copies in flight. An asynchronous copy into shared memory
//   is recorded when issued. A cp.async is performed when it completes, at
//   the cp.async.wait_group / wait_all that retires its group, by the
//   issuing thread; a tensor load (cp.async.bulk.tensor) is performed at
//   issue and stays in flight until a wait observes its mbarrier phase
//   (tma_register below). Until then its
//   destination bytes are "in flight": an instruction wrapper or accessor
//   that reads or writes them (ldmatrix, fcn::smem_load / smem_store, wmma
//   loads, another cp.async) is an error naming the kernel and the issuing
//   thread, where a GPU would read stale data. Plain C++ loads cannot be
//   seen here; the ASan build poisons in-flight bytes (at ASan's 8-byte
//   granularity: a 4-byte copy into the first half of a granule is not
//   poisoned), so a plain read of them is reported as use-after-poison. The
//   copy itself runs in kernel code (sm80.h), instrumented: ASan checks its
//   source and destination, and TSan sees the destination written by the
//   issuing thread at its wait, so another thread's read needs the wait and
//   then a __syncthreads, exactly the happens-before CUDA gives.
//
// * Bank-conflict counting (off unless set_counting(true)). Shared memory
//   has 32 banks of 4-byte words; a warp-wide access is served in
//   "wavefronts", and within one, lanes that touch different words of the
//   same bank conflict (the same word is a broadcast). Model, per access:
//   lanes are split into phases of 128 bytes' worth (32 lanes for accesses
//   of 4 bytes or less, half-warps for 8, quarter-warps for 16; ldmatrix:
//   one 8 x 16-byte matrix per phase), and a phase costs the largest number
//   of distinct words any one bank holds. Per kernel and kind of access the
//   counters sum accesses (warp-wide instructions), wavefronts, the ideal
//   (one per non-empty phase) and keep the worst phase (max_way: the n of
//   "n-way") and the call site of an access that bad. What is counted:
//     - "ldmatrix": every ldmatrix, exactly (it is a warp collective here);
//     - "cp.async": the shared-memory writes of every cp.async;
//     - "shared": loads and stores through fcn::smem_load / smem_store
//       (common.cuh), the accessors every kernel uses for its shared memory
//       (a probe may still make a plain access on purpose);
//     - "wmma": wmma::load_matrix_sync / store_matrix_sync, as a lower bound
//       (the fragment's lane layout is unspecified: the words the tile
//       covers, served as well as its banks allow).
//   Plain C++ shared-memory accesses and shared atomics (a read-modify-write
//   that serializes lanes on the same address, which is no bank conflict and
//   which the model above does not describe) are not counted. The lanes of one
//   non-collective access (cp.async, accessors) are matched by site: the
//   n-th execution of one source line by each lane of a warp since the last
//   __syncthreads is one warp-wide access. A lane that skips an access its
//   warp makes (divergence) shifts its matching until the next barrier.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace fcn_emu {

// One asynchronous copy: bytes at dst, the first src_bytes of them read
// from src and the rest zero-filled.
struct AsyncCopy {
    void* dst;
    const void* src;
    unsigned bytes, src_bytes;
};

// cp.async: records the copy (checks alignment and that dst is not in flight).
void cp_async_issue(void* dst, const void* src, unsigned bytes, unsigned src_bytes, const char* file, int line);
// cp.async.commit_group: this thread's uncommitted copies become a group.
void cp_async_commit();
// cp.async.wait_group `allowed`: retires this thread's oldest groups until at
// most `allowed` remain; returns the copies the caller must now perform.
const AsyncCopy* cp_async_retire(int allowed, size_t* count);

// Throws (naming the issuing thread) when [p, p + bytes) is in flight.
void check_settled(const void* p, size_t bytes, const char* what);

// cp.async.bulk.tensor (sm90.h performs the load at issue, in kernel code):
// tma_issue_check refuses a destination that a copy still has in flight
// (a cp.async, or a tensor load whose phase no wait has yet observed);
// tma_register then puts the written bytes in flight until the phase of
// parity `parity` of the mbarrier `bar` (the phase its complete_tx counted
// towards) is observed complete by a wait. A thread may touch them through
// accessors once its own wait observed that phase, every thread once a
// __syncthreads follows some thread's such wait; ASan's poison is lifted at
// the first such wait. A later tensor load into the same bytes, once the
// phase was observed, replaces the record (the ring's reuse of a stage).
// Stricter than a GPU: a thread ordered after another's wait only through
// __syncwarp or a second mbarrier (transitively, on a GPU) is refused.
void tma_issue_check(const void* dst, size_t bytes, const char* what);
void tma_register(void* dst, size_t bytes, const uint64_t* bar, unsigned parity);
// This thread's wait (try_wait / test_wait) saw the phase of parity `parity` of bar complete.
void tma_observe(const uint64_t* bar, unsigned parity);

enum class Access : int { kShared = 0, kLdmatrix = 1, kCpAsync = 2, kWmma = 3 };
constexpr int kAccessKinds = 4;
const char* access_name(int kind);

// One lane's part of a shared-memory access through an accessor or cp.async:
// checks it against copies in flight (a store also against wgmma operands
// being read, wgmma.h) and, when counting, logs it.
void shared_access(Access kind, const void* p, unsigned bytes, const char* file, int line, bool write = false);
// Whether shared_access has anything to do: copies in flight or wgmma
// operands being read (granules) on any worker, or counting on (one word, read inline, so that accessors cost one load
// and a branch otherwise): the count of copies in flight, plus kCountingOn.
constexpr long kCountingOn = 1L << 40;
extern std::atomic<long> g_shared_watch;
inline bool shared_watched() { return g_shared_watch.load(std::memory_order_relaxed) != 0; }

// A warp collective's whole access, counted once (by one lane): `phases`
// phases of n / phases consecutive segments each.
struct Segment {
    const void* p;
    unsigned bytes;
};
void count_collective(Access kind, const Segment* segs, int n, int phases);
// A wmma tile: the words it covers, as a lower bound (see the top).
void count_tile(const void* p, int rows, int cols, unsigned ldm, unsigned elem_bytes, bool row_major);

bool counting();
void set_counting(bool on);
struct Counter {
    unsigned long long accesses = 0, wavefronts = 0, ideal = 0;
    unsigned max_way = 0;
    // Where an access max_way-way conflicted was made (an accessor's or
    // cp.async's call site; null for collectives, which carry none): of
    // several, the first by file name and line, so the same every run.
    const char* worst_file = nullptr;
    int worst_line = 0;
    // Takes a phase of `way` wavefronts made at file:line into max_way and the site.
    void note_way(unsigned way, const char* file, int line);
};
struct CounterRow {
    const char* kernel;  // a launch's name: string literals, alive for the process
    int kind;
    Counter counter;
};
std::vector<CounterRow> counter_rows();
void reset_counters();

// The emulator's bookkeeping (smem.cpp, wgmma.cpp) plays the hardware and is
// not instrumented by TSan, yet its containers call memset, memmove and
// malloc, which TSan intercepts whatever the caller: every entry point holds
// one of these, so that TSan ignores the calling CUDA thread's accesses
// meanwhile (the CUDA threads of a block would seem to race on it).
struct Unobserved {
#if defined(FCN_EMU_TSAN)
    Unobserved();
    ~Unobserved();
#endif
};

// The runtime's hooks (runtime.cpp): the block's start and end on this
// worker, and a __syncthreads that opened.
void smem_block_begin(const char* kernel, int threads);
void smem_barrier();
void smem_block_end();

}  // namespace fcn_emu
