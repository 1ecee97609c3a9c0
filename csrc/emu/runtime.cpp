// runtime.cpp: executes a CUDA grid on the host (see emu.h for the model).
//
// Per launch: the blocks are handed out one at a time from an atomic counter
// to the workers (the calling thread plus a persistent pool). Per block:
//   1. thread 0 runs on a fiber. If it finishes without meeting a barrier or
//      a warp operation, the block is barrier-free: threads 1..n-1 run as a
//      plain loop on the worker's own stack ("loop mode", no switches). A
//      barrier met in loop mode is divergence and an error.
//   2. Otherwise every thread gets a fiber, and the scheduler runs rounds:
//      each ready fiber runs until it finishes or waits; then warp groups
//      whose lanes have all arrived are released; if none, and every live
//      thread waits at the same __syncthreads, the barrier opens; if nothing
//      can move, the block is stuck and that is reported, not waited on.
//
// The ThreadSanitizer build (FCN_EMU_TSAN) compiles this file without
// instrumentation: the runtime plays the hardware, and only the kernels'
// own memory accesses are checked. Every CUDA thread is a TSan fiber,
// switched to without synchronization, and the runtime announces exactly
// the happens-before that CUDA gives (tsan_* below): launch start -> every
// thread; a thread before __syncthreads -> every thread after it; a lane
// before __syncwarp -> every lane of the mask after it; every thread ->
// launch end. Shuffles and votes order no memory. Every block runs as
// fibers (loop mode would run a block's threads in one fiber, hiding races
// between them). Each worker's blocks are ordered one after the next (its
// shared memory, stacks and fibers are reused), so a race between blocks is
// seen when they run on different workers: blocks are dealt round robin
// over at least 2 workers, so blocks b and b + 1 never share one. They run
// one at a time, in block order, through a futex that TSan does not see:
// TSan tracks threads in a fixed set of slots (255 usable in gcc 12's
// libtsan); threads beyond them take slots from others, which may then miss
// races. With one block running at a time, blocks of up to 256 threads were
// checked to have every race reported (thread 0 against each of 1..255, on
// 2 workers, over repeated launches); a launch of larger blocks is refused
// in this build (check_config), never run half-checked.
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <pthread.h>

#include <atomic>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "emu.h"
#include "fiber.h"

#if defined(FCN_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(FCN_EMU_TSAN)
#include <sanitizer/tsan_interface.h>
#endif

__thread fcn_emu::Builtins fcn_emu_builtins;

namespace fcn_emu {
namespace {

constexpr size_t kStackBytes = 64 * 1024;  // kernels here use 2-8 KB; wmma fragments are the largest
constexpr int kMaxThreads = 1024;
constexpr size_t kMaxDynamicSmem = 227 * 1024;  // sm_90's opt-in limit per block
constexpr int kTsanMaxThreads = 256;            // TSan's thread slots (see the top)

enum class State : uint8_t { kReady, kAtBarrier, kAtWarp, kAtMbarrier, kDone, kFailed };

struct Fiber {
    void* sp = nullptr;
    State state = State::kDone;
    uint3 tid{0, 0, 0};
    const char* site_file = nullptr;  // which __syncthreads it waits at
    int site_line = 0;
    unsigned mask = 0;           // which lanes its warp operation names
    uint64_t deposit = 0;
    uint64_t wide[kWideWords] = {};  // a wide warp operation's deposit (warp_exchange_wide) ...
    bool wide_deposit = false;       // ... made for the operation it waits at now
    void* asan_fake_stack = nullptr;
    void* tsan_fiber = nullptr;  // its TSan context, reused block after block
    unsigned syncwarps = 0;      // __syncwarp calls so far: picks its release slot
    const uint64_t* mbarrier = nullptr;  // the mbarrier it sleeps on (kAtMbarrier) or last spun on
    unsigned parity = 0;                 // the parity of the phase it waits for
    uint64_t spin_word = 0;              // the mbarrier's state at its last false test_wait
    bool idle_spin = false;              // it yielded at a false test_wait that saw nothing change
};

struct Launch {
    const char* name;
    dim3 grid, block;
    size_t smem;
    Thunk thunk;
    void* ctx;
    long long blocks;
    std::atomic<long long> next{0};
    std::atomic<uint32_t> turn{0};  // TSan build: the block whose turn it is to run (mod 2^32)
    std::atomic<bool> failed{false};
    int fault_worker = -1;  // inject_worker_fault: this worker throws as it reaches turn fault_turn
    long long fault_turn = -1;
    std::mutex error_mutex;
    std::string error;

    void set_error(const std::string& msg) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (error.empty()) error = msg;
        failed = true;
    }
};

struct Worker {
    char* stacks = nullptr;
    Fiber fibers[kMaxThreads];
    int nthreads = 0;
    void* scheduler_sp = nullptr;
    Fiber* current = nullptr;  // the fiber running now
    bool loop_mode = false;
    bool fibers_started = false;  // every thread of the block is a fiber (not only thread 0)
    uint64_t warp_result[kMaxThreads / 32][32];
    uint64_t warp_wide[kMaxThreads / 32][32][kWideWords];
    unsigned char* smem = nullptr;
    size_t smem_capacity = 0;
    Launch* launch = nullptr;
    std::string block_error;
    const void* scheduler_stack_bottom = nullptr;
    size_t scheduler_stack_size = 0;
    // TSan build: addresses whose only use is as happens-before channels.
    void* tsan_scheduler = nullptr;  // the worker thread's own context
    // Launch start and each block -> the next block -> launch end, by the
    // parity of block_turn: block k's threads acquire slot k % 2 when they
    // start and release slot (k + 1) % 2 when they end, so that a thread
    // ending early orders nothing before the others of its own block.
    char block_order[2] = {};
    unsigned long long block_turn = 0;
    char barrier_order[2] = {};      // __syncthreads, by the parity of barrier_generation
    unsigned barrier_generation = 0;
    char warp_order[kMaxThreads][2] = {};  // each lane's __syncwarp releases, by parity
};

__thread Worker* tls_worker = nullptr;

Worker& this_worker() {
    // One per OS thread for the life of the process: its stacks are reused.
    if (!tls_worker) tls_worker = new Worker();
    return *tls_worker;
}

int linear_tid(uint3 t, uint3 b) { return int(t.x + b.x * (t.y + b.y * t.z)); }

std::string tid_str(uint3 t) {
    return "(" + std::to_string(t.x) + "," + std::to_string(t.y) + "," + std::to_string(t.z) + ")";
}

std::string block_str(uint3 b) { return "block " + tid_str(b); }

// ------------------------------------------------------------ fibers
char* fiber_stack(Worker& w, int i) {
    if (!w.stacks) {
        void* p = mmap(nullptr, kStackBytes * kMaxThreads, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) throw std::runtime_error("fcn_cuda emulator: cannot map fiber stacks");
        w.stacks = static_cast<char*>(p);
#if defined(FCN_EMU_ASAN)
        // A guard page under every stack: an overflow faults instead of
        // silently writing into the next thread's stack.
        for (int t = 0; t < kMaxThreads; ++t) mprotect(w.stacks + size_t(t) * kStackBytes, 4096, PROT_NONE);
#endif
    }
    return w.stacks + size_t(i) * kStackBytes;
}

void asan_start_switch(void** fake, const void* bottom, size_t size) {
#if defined(FCN_EMU_ASAN)
    __sanitizer_start_switch_fiber(fake, bottom, size);
#else
    (void)fake, (void)bottom, (void)size;
#endif
}

void asan_finish_switch(void* fake, const void** bottom, size_t* size) {
#if defined(FCN_EMU_ASAN)
    __sanitizer_finish_switch_fiber(fake, bottom, size);
#else
    (void)fake, (void)bottom, (void)size;
#endif
}

// ThreadSanitizer's view of the execution; no-ops in the other builds.
// Happens-before is announced on an address: every access before a
// release on it happens before every access after a later acquire on it.
#if defined(FCN_EMU_TSAN)
constexpr bool kTsan = true;
void tsan_release(void* order) { __tsan_release(order); }
void tsan_acquire(void* order) { __tsan_acquire(order); }
// Called right before the stack switch, as TSan asks; no_sync because a
// switch orders nothing between CUDA threads: only the events above do.
void tsan_switch(void* fiber) { __tsan_switch_to_fiber(fiber, __tsan_switch_to_fiber_no_sync); }
#else
constexpr bool kTsan = false;
void tsan_release(void*) {}
void tsan_acquire(void*) {}
void tsan_switch(void*) {}
#endif

void fiber_main(void* arg);

char* block_start_order(Worker& w) { return &w.block_order[w.block_turn % 2]; }
char* block_end_order(Worker& w) { return &w.block_order[(w.block_turn + 1) % 2]; }

// The scheduler reads what the failed fiber wrote: order that first.
[[noreturn]] void throw_block_error(Worker& w) {
    tsan_acquire(block_end_order(w));
    throw std::runtime_error(w.block_error);
}

void yield_to_scheduler(Worker& w, Fiber& f, bool dying) {
    asan_start_switch(dying ? nullptr : &f.asan_fake_stack, w.scheduler_stack_bottom, w.scheduler_stack_size);
    tsan_switch(w.tsan_scheduler);
    fcn_emu_switch(&f.sp, w.scheduler_sp);
    asan_finish_switch(f.asan_fake_stack, nullptr, nullptr);
}

void resume(Worker& w, Fiber& f) {
    w.current = &f;
    threadIdx = f.tid;
    void* fake = nullptr;
    asan_start_switch(&fake, fiber_stack(w, int(&f - w.fibers)), kStackBytes);
    tsan_switch(f.tsan_fiber);
    fcn_emu_switch(&w.scheduler_sp, f.sp);
    asan_finish_switch(fake, nullptr, nullptr);
    w.current = nullptr;
}

void fiber_main(void* arg) {
    Worker& w = *static_cast<Worker*>(arg);
    asan_finish_switch(nullptr, &w.scheduler_stack_bottom, &w.scheduler_stack_size);
    Fiber& f = *w.current;
    tsan_acquire(block_start_order(w));  // the launch's inputs, and this worker's previous block
    try {
        w.launch->thunk(w.launch->ctx);
        f.state = State::kDone;
    } catch (const std::exception& e) {
        w.block_error = "thread " + tid_str(f.tid) + ": " + e.what();
        f.state = State::kFailed;
    } catch (...) {
        w.block_error = "thread " + tid_str(f.tid) + ": unknown exception";
        f.state = State::kFailed;
    }
    tsan_release(block_end_order(w));  // to the launch's end, and the next block (it reuses shared memory)
    yield_to_scheduler(w, f, /*dying=*/true);
    __builtin_trap();  // a finished fiber is never resumed
}

#if defined(FCN_EMU_TSAN)
// After a failed block: fibers that never finished are dropped with their
// TSan context (its shadow call stack still holds their frames), once what
// they did is ordered before whatever runs next.
void tsan_drop_unfinished_fibers(Worker& w) {
    for (Fiber& f : w.fibers) {
        if (!f.tsan_fiber || f.state == State::kDone) continue;
        __tsan_switch_to_fiber(f.tsan_fiber, __tsan_switch_to_fiber_no_sync);
        __tsan_release(block_end_order(w));
        __tsan_switch_to_fiber(w.tsan_scheduler, __tsan_switch_to_fiber_no_sync);
        __tsan_destroy_fiber(f.tsan_fiber);
        f.tsan_fiber = nullptr;
    }
}
#else
void tsan_drop_unfinished_fibers(Worker&) {}
#endif

void start_fiber(Worker& w, int i, uint3 tid) {
    Fiber& f = w.fibers[i];
#if defined(FCN_EMU_TSAN)
    if (!f.tsan_fiber) {
        f.tsan_fiber = __tsan_create_fiber(0);
        const std::string name = "CUDA thread " + std::to_string(i) + " (linear threadIdx)";
        __tsan_set_fiber_name(f.tsan_fiber, name.c_str());
    }
#endif
    f.state = State::kReady;
    f.tid = tid;
    f.site_file = nullptr;
    f.mask = 0;
    f.mbarrier = nullptr;
    f.idle_spin = false;
    f.sp = fiber_prepare(fiber_stack(w, i), kStackBytes, &fiber_main, &w);
}

// ------------------------------------------------------------ scheduler
// Opens every warp group whose named lanes have all arrived with the same
// mask. Throws when a group can never open: a lane it names has exited or
// does not exist.
bool release_warps(Worker& w) {
    bool released = false;
    const int n = w.nthreads;
    for (int base = 0; base < n; base += 32) {
        const int lanes = std::min(32, n - base);
        for (int l = 0; l < lanes; ++l) {
            Fiber& f = w.fibers[base + l];
            if (f.state != State::kAtWarp) continue;
            const unsigned m = f.mask;
            bool complete = true;
            for (int i = 0; i < 32; ++i) {
                if (!((m >> i) & 1u)) continue;
                if (i >= lanes)
                    throw std::runtime_error("thread " + tid_str(f.tid) + ": warp operation with mask " +
                                             std::to_string(m) + " names lane " + std::to_string(i) +
                                             ", which does not exist in a block of " + std::to_string(n) +
                                             " threads");
                const Fiber& g = w.fibers[base + i];
                if (g.state == State::kDone)
                    throw std::runtime_error("thread " + tid_str(f.tid) +
                                             ": warp operation waits for lane " + std::to_string(i) +
                                             ", which has exited (a shuffle with lanes missing)");
                if (g.state != State::kAtWarp || g.mask != m) complete = false;
            }
            if (!complete) continue;
            for (int i = 0; i < 32; ++i) {
                if (!((m >> i) & 1u)) continue;
                const Fiber& g = w.fibers[base + i];
                w.warp_result[base / 32][i] = g.deposit;
                // Only a wide operation's: a narrower one must not overwrite rows that lanes outside its
                // mask may still be reading. All words, a fixed-size copy.
                if (g.wide_deposit)
                    for (int k = 0; k < kWideWords; ++k) w.warp_wide[base / 32][i][k] = g.wide[k];
                w.fibers[base + i].state = State::kReady;
            }
            released = true;
        }
    }
    return released;
}

// Opens __syncthreads when every live thread waits at the same one.
bool release_barrier(Worker& w) {
    const int n = w.nthreads;
    int at_barrier = 0, done = 0;
    const Fiber* first = nullptr;
    const Fiber* exited = nullptr;
    for (int i = 0; i < n; ++i) {
        const Fiber& f = w.fibers[i];
        if (f.state == State::kAtBarrier) {
            ++at_barrier;
            if (!first) first = &f;
            else if (f.site_line != first->site_line || std::strcmp(f.site_file, first->site_file) != 0)
                throw std::runtime_error("divergent __syncthreads: thread " + tid_str(first->tid) + " waits at " +
                                         first->site_file + ":" + std::to_string(first->site_line) + ", thread " +
                                         tid_str(f.tid) + " at " + f.site_file + ":" + std::to_string(f.site_line));
        } else if (f.state == State::kDone) {
            ++done;
            if (!exited) exited = &f;
        }
    }
    if (at_barrier == 0 || at_barrier + done != n) return false;
    if (done > 0)
        throw std::runtime_error("divergent __syncthreads: thread " + tid_str(exited->tid) +
                                 " exited while thread " + tid_str(first->tid) + " waits at a barrier");
    for (int i = 0; i < n; ++i) w.fibers[i].state = State::kReady;
    ++w.barrier_generation;
    smem_barrier();
    return true;
}

std::string stuck_report(const Worker& w) {
    for (int i = 0; i < w.nthreads; ++i) {
        const Fiber& f = w.fibers[i];
        if (f.state == State::kAtWarp)
            return "deadlock: thread " + tid_str(f.tid) + " waits at a warp operation (mask " +
                   std::to_string(f.mask) + ") that its lanes never all reach";
    }
    for (int i = 0; i < w.nthreads; ++i) {
        const Fiber& f = w.fibers[i];
        if (f.state == State::kAtMbarrier || (f.state == State::kReady && f.idle_spin)) {
            const mbar::State s = mbar::decode(__atomic_load_n(f.mbarrier, __ATOMIC_RELAXED));
            char address[32];
            std::snprintf(address, sizeof address, "%p", static_cast<const void*>(f.mbarrier));
            return "deadlock: thread " + tid_str(f.tid) + (f.state == State::kAtMbarrier ? " waits" : " spins") +
                   " on the mbarrier at " + address + " for its phase of parity " + std::to_string(f.parity) +
                   " to complete (pending arrivals " + std::to_string(s.pending) + " of " +
                   std::to_string(s.expected) + ", tx-count " + std::to_string(s.tx) +
                   "), which no thread of the block can complete";
        }
    }
    return "deadlock: no thread can make progress";
}

// A round resumes every thread that can go on; one that only spun again on a
// false test_wait with nothing changed (mbarrier_spun) made no progress.
void run_fibers(Worker& w) {
    const int n = w.nthreads;
    for (;;) {
        bool all_done = true;
        bool progress = false;
        for (int i = 0; i < n; ++i) {
            Fiber& f = w.fibers[i];
            if (f.state == State::kAtMbarrier && mbarrier_phase_done(f.mbarrier, f.parity, "mbarrier.try_wait"))
                f.state = State::kReady;
            if (f.state == State::kReady) {
                f.idle_spin = false;
                resume(w, f);
                if (!f.idle_spin) progress = true;
            }
            if (f.state == State::kFailed) throw_block_error(w);
            if (f.state != State::kDone) all_done = false;
        }
        if (all_done) return;
        if (release_warps(w)) continue;
        if (release_barrier(w)) continue;
        if (progress) continue;
        throw std::runtime_error(stuck_report(w));
    }
}

// ASan build: a fiber abandoned mid-kernel by a failed block leaves its
// frames' scope poisoning on its stack, which the next block's fiber there
// would trip over (a false stack-use-after-scope): clear it.
void asan_forget_unfinished_stacks(Worker& w) {
#if defined(FCN_EMU_ASAN)
    for (int i = 0; i < w.nthreads; ++i)
        if (w.fibers[i].state != State::kDone)
            ASAN_UNPOISON_MEMORY_REGION(fiber_stack(w, i) + 4096, kStackBytes - 4096);  // above the guard page
#else
    (void)w;
#endif
}

void block_failed(Worker& w, Launch& L, const char* what) {
    w.loop_mode = false;
    w.current = nullptr;
    tsan_drop_unfinished_fibers(w);
    asan_forget_unfinished_stacks(w);
    L.set_error(std::string("kernel ") + L.name + ", " + block_str(blockIdx) + ": " + what);
}

void run_block(Worker& w, Launch& L, long long b) {
    const dim3 g = L.grid;
    blockIdx = {unsigned(b % g.x), unsigned((b / g.x) % g.y), unsigned(b / (long long)(g.x) / g.y)};
    blockDim = {L.block.x, L.block.y, L.block.z};
    gridDim = {L.grid.x, L.grid.y, L.grid.z};
    const dim3 bd = L.block;
    const int n = int(bd.x * bd.y * bd.z);
    w.nthreads = n;
    smem_block_begin(L.name, n);
    struct BlockEnd {  // however the block ends: copies in flight dropped, counts kept
        ~BlockEnd() { smem_block_end(); }
    } block_end;
    w.fibers_started = false;
    auto tid_of = [&](int i) { return uint3{unsigned(i % bd.x), unsigned((i / bd.x) % bd.y), unsigned(i / (bd.x * bd.y))}; };
    try {
        start_fiber(w, 0, tid_of(0));
        resume(w, w.fibers[0]);
        if (w.fibers[0].state == State::kFailed) throw_block_error(w);
        if (w.fibers[0].state == State::kDone && !kTsan) {
            // Loop mode: nested loops rather than divisions per thread, since
            // this path costs a few nanoseconds per CUDA thread in all.
            w.loop_mode = true;
            uint3 t{1, 0, 0};
            for (t.z = 0; t.z < bd.z; ++t.z)
                for (t.y = 0; t.y < bd.y; ++t.y)
                    for (t.x = (t.y == 0 && t.z == 0) ? 1 : 0; t.x < bd.x; ++t.x) {
                        threadIdx = t;
                        try {
                            L.thunk(L.ctx);
                        } catch (const std::exception& e) {
                            throw std::runtime_error("thread " + tid_str(t) + ": " + e.what());
                        }
                    }
            w.loop_mode = false;
            return;
        }
        for (int i = 1; i < n; ++i) start_fiber(w, i, tid_of(i));
        w.fibers_started = true;
        run_fibers(w);
        wgmma_block_check();
    } catch (const std::exception& e) {
        block_failed(w, L, e.what());
    } catch (...) {
        block_failed(w, L, "an exception that is not a std::exception");
    }
}

// TSan build: block b runs once blocks 0 .. b - 1 have (see the top).
void wait_for_turn(Launch& L, long long b) {
    for (uint32_t now; (now = L.turn.load(std::memory_order_acquire)) != uint32_t(b);)
        syscall(SYS_futex, &L.turn, FUTEX_WAIT_PRIVATE, now, nullptr, nullptr, 0);
}

void pass_turn(Launch& L, long long b) {
    L.turn.store(uint32_t(b + 1), std::memory_order_release);
    syscall(SYS_futex, &L.turn, FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}

// A test's stand-in for an exception that no handler expects (not a std::exception), thrown by
// inject_worker_fault's worker.
struct InjectedFault {};

// However work() is left, at its end or by an exception (a std::bad_alloc, a non-standard exception
// from a block's error path), the worker leaves no one waiting and nothing half done: leaving by an
// exception marks the launch failed, so the blocks after are skipped; the TSan build passes every turn
// of this worker that is left, in order (the worker holding the next block waits for it and would wait
// forever: never a hang); what this worker's threads wrote is ordered before the launch's end; and the
// worker is free for the next launch (a stale w.launch would refuse every later launch from this
// thread as "launched from inside a kernel").
struct WorkerExit {
    Launch& L;
    Worker& w;
    int nworkers;
    long long next_turn;  // TSan build: this worker's first block whose turn it has not passed
    int exceptions = std::uncaught_exceptions();

    ~WorkerExit() {
        if (std::uncaught_exceptions() > exceptions) L.failed = true;
        if (kTsan)
            for (long long b = next_turn; b < L.blocks; b += nworkers) {
                wait_for_turn(L, b);
                pass_turn(L, b);
            }
        tsan_acquire(block_start_order(w));  // everything this worker's threads wrote
        w.launch = nullptr;
    }
};

// Worker `index` of `nworkers` runs blocks until none are left. The TSan
// build deals them round robin and runs them in turn, so which blocks share
// a worker (and are ordered) does not depend on timing; the others take the
// next free block.
void work(Launch& L, int index, int nworkers) {
    Worker& w = this_worker();
    w.launch = &L;
    WorkerExit leaving{L, w, nworkers, index};
    const size_t want = std::max<size_t>(L.smem, 128);
    if (w.smem_capacity < want) {
        std::free(w.smem);
        w.smem_capacity = (want + 127) & ~size_t(127);
        w.smem = static_cast<unsigned char*>(std::aligned_alloc(128, w.smem_capacity));
        if (!w.smem) throw std::bad_alloc();
    }
#if defined(FCN_EMU_ASAN)
    // Exactly the requested bytes are usable: a read past them is reported.
    ASAN_UNPOISON_MEMORY_REGION(w.smem, w.smem_capacity);
    ASAN_POISON_MEMORY_REGION(w.smem + L.smem, w.smem_capacity - L.smem);
#endif
#if defined(FCN_EMU_TSAN)
    if (!w.tsan_scheduler) w.tsan_scheduler = __tsan_get_current_fiber();
#endif
    tsan_release(block_start_order(w));  // what the host wrote before the launch
    for (long long turn = 0;; ++turn) {
        if (index == L.fault_worker && turn == L.fault_turn) throw InjectedFault{};
        const long long b = kTsan ? index + turn * nworkers : L.next.fetch_add(1, std::memory_order_relaxed);
        if (b >= L.blocks) break;
        if (kTsan) wait_for_turn(L, b);
        const bool runs = !L.failed.load(std::memory_order_relaxed);
        if (runs) run_block(w, L, b);
        if (kTsan) pass_turn(L, b);  // after a failure too: the worker holding block b + 1 waits for it
        leaving.next_turn = b + nworkers;
        // Only a block that ran moves the parity: the closing acquire must read the slot that this
        // worker's last block released to (a skipped block released nothing).
        if (runs) ++w.block_turn;
        if (L.failed.load(std::memory_order_relaxed)) break;
    }
}

// ------------------------------------------------------------ worker pool
// work(), with whatever escapes it recorded as the launch's error: an exception must not leave a pool
// thread (std::terminate) or the caller's Pool::run before every helper is done with the launch.
void work_reporting(Launch& L, int index, int nworkers) {
    try {
        work(L, index, nworkers);
    } catch (const std::exception& e) {
        L.set_error(std::string("kernel ") + L.name + ": " + e.what());
    } catch (...) {
        L.set_error(std::string("kernel ") + L.name + ": an exception that is not a std::exception");
    }
}

class Pool {
public:
    // Runs `L` on the caller and nworkers - 1 pool threads.
    void run(Launch& L, int nworkers) {
        while (int(threads_.size()) < nworkers - 1) {
            const int index = int(threads_.size());
            threads_.emplace_back([this, index] { loop(index); });
            threads_.back().detach();
        }
        {
            std::lock_guard<std::mutex> lock(mutex_);
            launch_ = &L;
            helpers_ = nworkers - 1;
            active_ = helpers_;
            taken_ = 0;
            ++generation_;
        }
        start_.notify_all();
        if (kTsan) {
            // TSan sees mutex_: a helper taking the launch after the caller
            // had locked it again would be ordered after the caller's blocks.
            // Waiting until every helper has it keeps blocks on different
            // workers unordered, as on a GPU.
            std::unique_lock<std::mutex> lock(mutex_);
            taken_cv_.wait(lock, [this] { return taken_ == helpers_; });
        }
        work_reporting(L, 0, nworkers);
        std::unique_lock<std::mutex> lock(mutex_);
        done_.wait(lock, [this] { return active_ == 0; });
        launch_ = nullptr;
    }

private:
    void loop(int index) {
        uint64_t seen = 0;
        for (;;) {
            Launch* L;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                start_.wait(lock, [&] { return generation_ != seen; });
                seen = generation_;
                if (index >= helpers_) continue;
                L = launch_;
                ++taken_;
            }
            taken_cv_.notify_one();
            work_reporting(*L, index + 1, helpers_ + 1);
            std::lock_guard<std::mutex> lock(mutex_);
            if (--active_ == 0) done_.notify_all();
        }
    }

    std::vector<std::thread> threads_;
    std::mutex mutex_;
    std::condition_variable start_, done_, taken_cv_;
    Launch* launch_ = nullptr;
    uint64_t generation_ = 0;
    int helpers_ = 0;
    int active_ = 0;
    int taken_ = 0;  // helpers that hold the current launch
};

Pool* g_pool = nullptr;
std::mutex g_launch_mutex;  // one launch at a time, like one stream
int g_workers = 0;
int g_fault_worker = -1, g_fault_turn = -1;  // inject_worker_fault's, for the next launch

Pool& pool() {
    if (!g_pool) g_pool = new Pool();  // never destroyed: its threads outlive static destructors
    return *g_pool;
}

// After fork() the child has none of the parent's pool threads.
void forget_pool_after_fork() {
    g_pool = nullptr;
    new (&g_launch_mutex) std::mutex();
}

int default_workers() {
    if (const char* env = std::getenv("FCN_CUDA_EMU_WORKERS")) {
        const int n = std::atoi(env);
        if (n > 0) return n;
    }
    const unsigned hw = std::thread::hardware_concurrency();
    return hw ? int(hw) : 1;
}

struct ForkHook {
    ForkHook() { pthread_atfork(nullptr, nullptr, &forget_pool_after_fork); }
} fork_hook;

void check_config(const char* name, dim3 grid, dim3 block, size_t smem) {
    const long long threads = (long long)block.x * block.y * block.z;
    std::string why;
    if (threads > kMaxThreads) why = "more than 1024 threads per block";
    else if (block.z > 64) why = "blockDim.z above 64";
    else if (grid.y > 65535 || grid.z > 65535) why = "gridDim.y or gridDim.z above 65535";
    else if (grid.x > 0x7fffffffu) why = "gridDim.x above 2^31 - 1";
    else if (smem > kMaxDynamicSmem) why = "more than 227 KiB of dynamic shared memory";
    if (!why.empty()) throw std::runtime_error(std::string("kernel ") + name + ": invalid configuration (" + why + ")");
    // Valid on a GPU, but past what the TSan build can check: refused, never run with races missed.
    if (kTsan && threads > kTsanMaxThreads)
        throw std::runtime_error(std::string("kernel ") + name + ": a block of " + std::to_string(threads) +
                                 " threads; the ThreadSanitizer build runs at most " +
                                 std::to_string(kTsanMaxThreads) +
                                 " (TSan follows 256 threads at once and would miss races between the others)");
}

}  // namespace

// ------------------------------------------------------------ public API
void set_workers(int n) {
    std::lock_guard<std::mutex> lock(g_launch_mutex);
    g_workers = n > 0 ? n : 0;
}

int workers() {
    if (std::strcmp(sanitizer(), "address") == 0) return 1;  // plain-static __shared__: one copy for the process
    if (g_workers > 0) return g_workers;
    // TSan sees a race between blocks only when they run on different workers.
    return kTsan ? std::max(2, default_workers()) : default_workers();
}

const char* sanitizer() {
#if defined(FCN_EMU_ASAN)
    return "address";
#elif defined(FCN_EMU_TSAN)
    return "thread";
#else
    return "";
#endif
}

void inject_worker_fault(int worker, int turn) {
    std::lock_guard<std::mutex> lock(g_launch_mutex);
    g_fault_worker = worker;
    g_fault_turn = turn;
}

void launch_impl(const char* name, dim3 grid, dim3 block, size_t smem_bytes, Thunk thunk, void* ctx) {
    if (tls_worker && tls_worker->launch)
        throw std::runtime_error(std::string("kernel ") + name + ": launched from inside a kernel");
    check_config(name, grid, block, smem_bytes);
    std::lock_guard<std::mutex> lock(g_launch_mutex);
    Launch L;
    L.name = name;
    L.grid = grid;
    L.block = block;
    L.smem = smem_bytes;
    L.thunk = thunk;
    L.ctx = ctx;
    L.blocks = (long long)grid.x * grid.y * grid.z;
    L.fault_worker = std::exchange(g_fault_worker, -1);
    L.fault_turn = std::exchange(g_fault_turn, -1);
    const int nworkers = int(std::min<long long>(workers(), L.blocks));
    pool().run(L, nworkers);
    if (L.failed) throw std::runtime_error(L.error);
}

void* dynamic_smem() {
    Worker* w = tls_worker;
    if (!w || !w->launch) fail("dynamic shared memory used outside a kernel");
    return w->smem;
}

unsigned lane_id() { return unsigned(linear_tid(threadIdx, blockDim) % 32); }

void fail(const char* what) { throw std::runtime_error(what); }

void misaligned(const char* what, const void* p, size_t alignment) {
    char address[32];
    std::snprintf(address, sizeof address, "%p", p);
    throw std::runtime_error(std::string("misaligned address: ") + what + " at " + address + ", " +
                             std::to_string(reinterpret_cast<uintptr_t>(p) % alignment) + " bytes past a " +
                             std::to_string(alignment) + "-byte boundary");
}

const uint64_t (*warp_exchange_wide(unsigned mask, const uint64_t* values, int words))[kWideWords] {
    if (words < 0 || words > kWideWords) fail("warp_exchange_wide: more words than a lane deposits");
    Worker* w = tls_worker;
    if (w && w->current) {
        for (int k = 0; k < words; ++k) w->current->wide[k] = values[k];
        w->current->wide_deposit = true;
    }
    warp_exchange(mask, 0);
    w->current->wide_deposit = false;
    return w->warp_wide[linear_tid(threadIdx, blockDim) / 32];
}

const uint64_t* warp_exchange(unsigned mask, uint64_t value) {
    Worker* w = tls_worker;
    if (!w || !w->launch) fail("warp operation outside a kernel");
    const int t = linear_tid(threadIdx, blockDim);
    if (w->loop_mode || !w->current)
        fail("divergent warp operation: thread 0 of the block finished without reaching one");
    if (!((mask >> (t % 32)) & 1u)) fail("warp operation whose mask does not name the calling lane");
    Fiber& f = *w->current;
    f.deposit = value;
    f.mask = mask;
    f.state = State::kAtWarp;
    yield_to_scheduler(*w, f, false);
    return w->warp_result[t / 32];
}

// __syncwarp orders memory between the lanes of its mask: each lane releases
// on a slot of its own, and after the rendezvous acquires every lane's slot.
// A lane alternates between two slots, and deposits which one it used: it
// may already release again (at its next __syncwarp) before a slower lane
// of this rendezvous has resumed and acquired. Two are enough, with mixed
// masks too (lanes of a warp meeting in different groups, or a lane that
// also syncs alone and so changes parity against the others): run_fibers
// resumes every lane a rendezvous released within one round, before it
// opens the next, so no lane reaches its next-but-one __syncwarp (the same
// slot again) while a lane of this rendezvous has still to acquire from it.
// Were that to change, such a slow lane would acquire releases made after
// the rendezvous, an ordering CUDA does not give, and races would be missed.
void syncwarp(unsigned mask) {
    Worker* w = tls_worker;
    if (!kTsan || !w || !w->current) {  // warp_exchange reports any misuse
        warp_exchange(mask, 0);
        return;
    }
    const int t = linear_tid(threadIdx, blockDim), base = t - t % 32;
    const unsigned slot = w->current->syncwarps++ % 2;
    tsan_release(&w->warp_order[t][slot]);
    const uint64_t* slots = warp_exchange(mask, slot);
    for (int lane = 0; lane < 32; ++lane)
        if ((mask >> lane) & 1u) tsan_acquire(&w->warp_order[base + lane][slots[lane]]);
}

// __syncthreads orders every thread's accesses before it before every
// thread's after it. The barrier's generation picks one of two addresses:
// a thread released from this barrier may reach the next one before a
// slower thread has acquired from this one.
void syncthreads_at(const char* file, int line) {
    Worker* w = tls_worker;
    if (!w || !w->launch) fail("__syncthreads outside a kernel");
    if (w->loop_mode || !w->current)
        fail("divergent __syncthreads: thread 0 of the block finished without reaching it");
    Fiber& f = *w->current;
    f.site_file = file;
    f.site_line = line;
    f.state = State::kAtBarrier;
    char* order = &w->barrier_order[w->barrier_generation % 2];
    tsan_release(order);
    yield_to_scheduler(*w, f, false);
    tsan_acquire(order);
}

// ------------------------------------------------------------ mbarrier
// (sm90.h): a thread that waits on an mbarrier sleeps until its phase
// completes; the scheduler wakes it (run_fibers) or, when no thread of the
// block can go on, fails naming it (stuck_report).
namespace {
Fiber& mbarrier_fiber(const char* what) {
    Worker* w = tls_worker;
    if (!w || !w->launch) fail((std::string(what) + " outside a kernel").c_str());
    if (w->loop_mode || !w->current)
        fail((std::string(what) + ": a thread waits on an mbarrier in a block whose thread 0 finished without "
                                  "touching one (the emulator ran the block as a loop; no thread can complete it)")
                 .c_str());
    return *w->current;
}
}  // namespace

void mbarrier_enter() {
    Worker* w = tls_worker;
    if (!w || !w->current || w->fibers_started || w->loop_mode) return;
    yield_to_scheduler(*w, *w->current, false);  // thread 0, still ready: run_block starts the other fibers
}

void mbarrier_sleep(const uint64_t* bar, unsigned parity) {
    Fiber& f = mbarrier_fiber("mbarrier.try_wait");
    f.mbarrier = bar;
    f.parity = parity & 1u;
    f.state = State::kAtMbarrier;
    yield_to_scheduler(*tls_worker, f, false);
}

void mbarrier_spun(const uint64_t* bar) {
    Fiber& f = mbarrier_fiber("mbarrier.test_wait");
    const uint64_t word = __atomic_load_n(bar, __ATOMIC_RELAXED);
    f.idle_spin = f.mbarrier == bar && f.spin_word == word;
    f.mbarrier = bar;
    f.spin_word = word;
    f.parity = mbar::decode(word).phase;
    yield_to_scheduler(*tls_worker, f, false);
}

}  // namespace fcn_emu
