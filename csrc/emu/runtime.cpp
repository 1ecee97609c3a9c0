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
#include <sys/mman.h>
#include <unistd.h>
#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "emu.h"
#include "fiber.h"

#if defined(FCN_EMU_SANITIZE)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

__thread fcn_emu::Builtins fcn_emu_builtins;

namespace fcn_emu {
namespace {

constexpr size_t kStackBytes = 64 * 1024;  // kernels here use 2-8 KB; wmma fragments are the largest
constexpr int kMaxThreads = 1024;
constexpr size_t kMaxDynamicSmem = 227 * 1024;  // sm_90's opt-in limit per block

enum class State : uint8_t { kReady, kAtBarrier, kAtWarp, kDone, kFailed };

struct Fiber {
    void* sp = nullptr;
    State state = State::kDone;
    uint3 tid{0, 0, 0};
    const char* site_file = nullptr;  // which __syncthreads it waits at
    int site_line = 0;
    unsigned mask = 0;           // which lanes its warp operation names
    uint64_t deposit = 0;
    void* asan_fake_stack = nullptr;
};

struct Launch {
    const char* name;
    dim3 grid, block;
    size_t smem;
    Thunk thunk;
    void* ctx;
    long long blocks;
    std::atomic<long long> next{0};
    std::atomic<bool> failed{false};
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
    uint64_t warp_result[kMaxThreads / 32][32];
    unsigned char* smem = nullptr;
    size_t smem_capacity = 0;
    Launch* launch = nullptr;
    std::string block_error;
    const void* scheduler_stack_bottom = nullptr;
    size_t scheduler_stack_size = 0;
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
#if defined(FCN_EMU_SANITIZE)
        // A guard page under every stack: an overflow faults instead of
        // silently writing into the next thread's stack.
        for (int t = 0; t < kMaxThreads; ++t) mprotect(w.stacks + size_t(t) * kStackBytes, 4096, PROT_NONE);
#endif
    }
    return w.stacks + size_t(i) * kStackBytes;
}

void asan_start_switch(void** fake, const void* bottom, size_t size) {
#if defined(FCN_EMU_SANITIZE)
    __sanitizer_start_switch_fiber(fake, bottom, size);
#else
    (void)fake, (void)bottom, (void)size;
#endif
}

void asan_finish_switch(void* fake, const void** bottom, size_t* size) {
#if defined(FCN_EMU_SANITIZE)
    __sanitizer_finish_switch_fiber(fake, bottom, size);
#else
    (void)fake, (void)bottom, (void)size;
#endif
}

void fiber_main(void* arg);

void yield_to_scheduler(Worker& w, Fiber& f, bool dying) {
    asan_start_switch(dying ? nullptr : &f.asan_fake_stack, w.scheduler_stack_bottom, w.scheduler_stack_size);
    fcn_emu_switch(&f.sp, w.scheduler_sp);
    asan_finish_switch(f.asan_fake_stack, nullptr, nullptr);
}

void resume(Worker& w, Fiber& f) {
    w.current = &f;
    threadIdx = f.tid;
    void* fake = nullptr;
    asan_start_switch(&fake, fiber_stack(w, int(&f - w.fibers)), kStackBytes);
    fcn_emu_switch(&w.scheduler_sp, f.sp);
    asan_finish_switch(fake, nullptr, nullptr);
    w.current = nullptr;
}

void fiber_main(void* arg) {
    Worker& w = *static_cast<Worker*>(arg);
    asan_finish_switch(nullptr, &w.scheduler_stack_bottom, &w.scheduler_stack_size);
    Fiber& f = *w.current;
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
    yield_to_scheduler(w, f, /*dying=*/true);
    __builtin_trap();  // a finished fiber is never resumed
}

void start_fiber(Worker& w, int i, uint3 tid) {
    Fiber& f = w.fibers[i];
    f.state = State::kReady;
    f.tid = tid;
    f.site_file = nullptr;
    f.mask = 0;
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
                w.warp_result[base / 32][i] = w.fibers[base + i].deposit;
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
    return true;
}

std::string stuck_report(const Worker& w) {
    for (int i = 0; i < w.nthreads; ++i) {
        const Fiber& f = w.fibers[i];
        if (f.state == State::kAtWarp)
            return "deadlock: thread " + tid_str(f.tid) + " waits at a warp operation (mask " +
                   std::to_string(f.mask) + ") that its lanes never all reach";
    }
    return "deadlock: no thread can make progress";
}

void run_fibers(Worker& w) {
    const int n = w.nthreads;
    for (;;) {
        bool all_done = true;
        for (int i = 0; i < n; ++i) {
            Fiber& f = w.fibers[i];
            if (f.state == State::kReady) resume(w, f);
            if (f.state == State::kFailed) throw std::runtime_error(w.block_error);
            if (f.state != State::kDone) all_done = false;
        }
        if (all_done) return;
        if (release_warps(w)) continue;
        if (release_barrier(w)) continue;
        throw std::runtime_error(stuck_report(w));
    }
}

void run_block(Worker& w, Launch& L, long long b) {
    const dim3 g = L.grid;
    blockIdx = {unsigned(b % g.x), unsigned((b / g.x) % g.y), unsigned(b / (long long)(g.x) / g.y)};
    blockDim = {L.block.x, L.block.y, L.block.z};
    gridDim = {L.grid.x, L.grid.y, L.grid.z};
    const dim3 bd = L.block;
    const int n = int(bd.x * bd.y * bd.z);
    w.nthreads = n;
    auto tid_of = [&](int i) { return uint3{unsigned(i % bd.x), unsigned((i / bd.x) % bd.y), unsigned(i / (bd.x * bd.y))}; };
    try {
        start_fiber(w, 0, tid_of(0));
        resume(w, w.fibers[0]);
        if (w.fibers[0].state == State::kFailed) throw std::runtime_error(w.block_error);
        if (w.fibers[0].state == State::kDone) {
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
        run_fibers(w);
    } catch (const std::exception& e) {
        w.loop_mode = false;
        w.current = nullptr;
        L.set_error(std::string("kernel ") + L.name + ", " + block_str(blockIdx) + ": " + e.what());
    }
}

void work(Launch& L) {
    Worker& w = this_worker();
    w.launch = &L;
    const size_t want = std::max<size_t>(L.smem, 128);
    if (w.smem_capacity < want) {
        std::free(w.smem);
        w.smem_capacity = (want + 127) & ~size_t(127);
        w.smem = static_cast<unsigned char*>(std::aligned_alloc(128, w.smem_capacity));
        if (!w.smem) throw std::bad_alloc();
    }
#if defined(FCN_EMU_SANITIZE)
    // Exactly the requested bytes are usable: a read past them is reported.
    ASAN_UNPOISON_MEMORY_REGION(w.smem, w.smem_capacity);
    ASAN_POISON_MEMORY_REGION(w.smem + L.smem, w.smem_capacity - L.smem);
#endif
    while (!L.failed.load(std::memory_order_relaxed)) {
        const long long b = L.next.fetch_add(1, std::memory_order_relaxed);
        if (b >= L.blocks) break;
        run_block(w, L, b);
    }
    w.launch = nullptr;
}

// ------------------------------------------------------------ worker pool
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
            ++generation_;
        }
        start_.notify_all();
        try {
            work(L);
        } catch (const std::exception& e) {
            L.set_error(std::string("kernel ") + L.name + ": " + e.what());
        }
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
            }
            try {
                work(*L);
            } catch (const std::exception& e) {
                L->set_error(std::string("kernel ") + L->name + ": " + e.what());
            }
            std::lock_guard<std::mutex> lock(mutex_);
            if (--active_ == 0) done_.notify_all();
        }
    }

    std::vector<std::thread> threads_;
    std::mutex mutex_;
    std::condition_variable start_, done_;
    Launch* launch_ = nullptr;
    uint64_t generation_ = 0;
    int helpers_ = 0;
    int active_ = 0;
};

Pool* g_pool = nullptr;
std::mutex g_launch_mutex;  // one launch at a time, like one stream
int g_workers = 0;

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
}

}  // namespace

// ------------------------------------------------------------ public API
void set_workers(int n) {
    std::lock_guard<std::mutex> lock(g_launch_mutex);
    g_workers = n > 0 ? n : 0;
}

int workers() {
    if (sanitize_build()) return 1;  // plain-static __shared__ is one copy for the process
    return g_workers > 0 ? g_workers : default_workers();
}

bool sanitize_build() {
#if defined(FCN_EMU_SANITIZE)
    return true;
#else
    return false;
#endif
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

void syncthreads_at(const char* file, int line) {
    Worker* w = tls_worker;
    if (!w || !w->launch) fail("__syncthreads outside a kernel");
    if (w->loop_mode || !w->current)
        fail("divergent __syncthreads: thread 0 of the block finished without reaching it");
    Fiber& f = *w->current;
    f.site_file = file;
    f.site_line = line;
    f.state = State::kAtBarrier;
    yield_to_scheduler(*w, f, false);
}

}  // namespace fcn_emu
