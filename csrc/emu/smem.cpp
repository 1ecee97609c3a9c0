// smem.cpp: copies in flight and bank-conflict counting (see smem.h).
//
// All state is per worker (an OS thread runs one block at a time, and every
// CUDA thread of that block runs on it), so nothing here takes a lock but
// the counters' merge at a block's end. Like runtime.cpp this file is not
// instrumented by TSan: it plays the hardware's bookkeeping, and the copies
// it hands back are performed by kernel code (sm80.h). Its containers still
// call memset, memmove and malloc, which TSan intercepts whatever the
// caller; every entry point therefore runs Unobserved, or TSan would see
// the CUDA threads of a block race on this bookkeeping.
#include <algorithm>
#include <cstring>
#include <cstdio>
#include <deque>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "emu.h"

#if defined(FCN_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#endif
#if defined(FCN_EMU_TSAN)
extern "C" void AnnotateIgnoreReadsBegin(const char* file, int line);
extern "C" void AnnotateIgnoreReadsEnd(const char* file, int line);
extern "C" void AnnotateIgnoreWritesBegin(const char* file, int line);
extern "C" void AnnotateIgnoreWritesEnd(const char* file, int line);
#endif

namespace fcn_emu {
#if defined(FCN_EMU_TSAN)
Unobserved::Unobserved() {
    AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
    AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
}
Unobserved::~Unobserved() {
    AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
    AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
}
#endif
}  // namespace fcn_emu

namespace fcn_emu {
namespace {

constexpr uintptr_t kGranule = 16;  // the in-flight map's unit: a cp.async never spans two

struct InFlight {
    uint16_t mask = 0;  // which bytes of the granule
    int owner = 0;      // the issuing thread (linear index)
};

struct ThreadCopies {
    std::vector<AsyncCopy> issued;  // in issue order; [head, size) not yet performed
    size_t head = 0;
    std::deque<size_t> group_ends;  // committed groups, oldest first: one past their last copy
    std::vector<AsyncCopy> retired;  // handed to the caller by the last cp_async_retire
};

struct LogEntry {
    const char* file;
    int line;
    Access kind;
    uintptr_t p;
    unsigned bytes;
};

// One cp.async.bulk.tensor load in flight (see smem.h).
struct TensorLoad {
    uintptr_t dst;
    size_t bytes;
    const uint64_t* bar;
    unsigned parity;
    int issuer;
    bool observed;            // some thread's wait saw its phase complete
    std::vector<bool> seen;   // which threads' waits did
};

struct BlockMemory {
    const char* kernel = nullptr;
    int threads = 0;
    std::vector<ThreadCopies> copies;
    std::unordered_map<uintptr_t, InFlight> in_flight;
    std::vector<TensorLoad> tensor_loads;
    std::vector<std::vector<LogEntry>> log;  // per thread, since the last barrier
    Counter local[kAccessKinds];
};

thread_local BlockMemory block;

std::mutex g_counter_mutex;
std::map<std::pair<std::string, int>, std::pair<const char*, Counter>> g_counters;

int this_thread() { return int(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)); }

void poison(void* p, size_t n) {
#if defined(FCN_EMU_ASAN)
    ASAN_POISON_MEMORY_REGION(p, n);
#else
    (void)p, (void)n;
#endif
}

void unpoison(void* p, size_t n) {
#if defined(FCN_EMU_ASAN)
    ASAN_UNPOISON_MEMORY_REGION(p, n);
#else
    (void)p, (void)n;
#endif
}

// Calls f(granule, mask) for each 16-byte granule that [p, p + n) touches.
template <typename F>
void for_granules(uintptr_t p, size_t n, F f) {
    for (uintptr_t g = p & ~(kGranule - 1); g < p + n; g += kGranule) {
        const uintptr_t lo = std::max(p, g), hi = std::min<uintptr_t>(p + n, g + kGranule);
        uint16_t mask = 0;
        for (uintptr_t b = lo; b < hi; ++b) mask |= uint16_t(1u << (b - g));
        f(g, mask);
    }
}

std::string hex(uintptr_t p) {
    char s[32];
    std::snprintf(s, sizeof s, "%#lx", static_cast<unsigned long>(p));
    return s;
}

void settle(const AsyncCopy& c) {
    for_granules(reinterpret_cast<uintptr_t>(c.dst), c.bytes, [](uintptr_t g, uint16_t mask) {
        auto it = block.in_flight.find(g);
        if (it == block.in_flight.end()) return;
        it->second.mask &= uint16_t(~mask);
        if (!it->second.mask) block.in_flight.erase(it);
    });
    unpoison(c.dst, c.bytes);
}

// Wavefronts of one phase: the most distinct 4-byte words in any one bank.
unsigned phase_cost(std::vector<uintptr_t>& words) {
    if (words.empty()) return 0;
    std::sort(words.begin(), words.end());
    words.erase(std::unique(words.begin(), words.end()), words.end());
    unsigned per_bank[32] = {};
    unsigned worst = 0;
    for (uintptr_t w : words) worst = std::max(worst, ++per_bank[w % 32]);
    return worst;
}

void add_words(std::vector<uintptr_t>& words, uintptr_t p, unsigned bytes) {
    for (uintptr_t w = p / 4; w <= (p + bytes - 1) / 4; ++w) words.push_back(w);
}

// One warp-wide access from its lanes' segments, in lane order, split into
// `phases` equal runs of consecutive segments, made at file:line (null: a collective).
void count_access(Access kind, const Segment* segs, int n, int phases, const char* file, int line) {
    Counter& c = block.local[int(kind)];
    std::vector<uintptr_t> words;
    ++c.accesses;
    const int per_phase = (n + phases - 1) / phases;
    for (int first = 0; first < n; first += per_phase) {
        words.clear();
        for (int i = first; i < std::min(n, first + per_phase); ++i)
            if (segs[i].bytes) add_words(words, reinterpret_cast<uintptr_t>(segs[i].p), segs[i].bytes);
        const unsigned cost = phase_cost(words);
        if (!cost) continue;
        c.wavefronts += cost;
        c.ideal += 1;
        c.note_way(cost, file, line);
    }
}

// Matches the logged accesses of each warp by (site, n-th execution) and counts each group.
void flush_log() {
    if (block.log.empty()) return;
    struct Key {
        const char* file;
        int line, nth;
        bool operator==(const Key& o) const { return file == o.file && line == o.line && nth == o.nth; }
    };
    struct KeyHash {
        size_t operator()(const Key& k) const {
            return std::hash<const void*>()(k.file) ^ (size_t(k.line) * 0x9e3779b97f4a7c15ull) ^ (size_t(k.nth) << 20);
        }
    };
    struct Group {
        Access kind;
        unsigned bytes = 0;
        Segment lanes[32] = {};
    };
    for (int base = 0; base < block.threads; base += 32) {
        std::unordered_map<Key, Group, KeyHash> groups;
        for (int lane = 0; lane < 32 && base + lane < block.threads; ++lane) {
            std::unordered_map<uint64_t, int> seen;  // (file, line) -> executions so far
            for (const LogEntry& e : block.log[base + lane]) {
                const uint64_t site = reinterpret_cast<uintptr_t>(e.file) * 31 + uint64_t(e.line);
                const Key key{e.file, e.line, seen[site]++};
                Group& g = groups[key];
                g.kind = e.kind;
                g.bytes = std::max(g.bytes, e.bytes);
                g.lanes[lane] = {reinterpret_cast<const void*>(e.p), e.bytes};
            }
            block.log[base + lane].clear();
        }
        for (auto& [key, g] : groups) {
            const int phases = g.bytes <= 4 ? 1 : g.bytes == 8 ? 2 : 4;
            count_access(g.kind, g.lanes, 32, phases, key.file, key.line);
        }
    }
}

void drop_copies() {
    for (int t = 0; t < int(block.copies.size()); ++t) {
        ThreadCopies& tc = block.copies[t];
        for (size_t i = tc.head; i < tc.issued.size(); ++i) unpoison(tc.issued[i].dst, tc.issued[i].bytes);
        g_shared_watch.fetch_sub(long(tc.issued.size() - tc.head), std::memory_order_relaxed);
        tc.issued.clear();
        tc.head = 0;
        tc.group_ends.clear();
        tc.retired.clear();
    }
    block.in_flight.clear();
    for (const TensorLoad& l : block.tensor_loads)
        if (!l.observed) unpoison(reinterpret_cast<void*>(l.dst), l.bytes);
    g_shared_watch.fetch_sub(long(block.tensor_loads.size()), std::memory_order_relaxed);
    block.tensor_loads.clear();
}

bool overlaps(const TensorLoad& l, uintptr_t p, size_t bytes) { return p < l.dst + l.bytes && l.dst < p + bytes; }

std::string tensor_load_error(const char* what, uintptr_t p, const TensorLoad& l) {
    return std::string(what) + " touches shared memory at " + hex(p) + " that a cp.async.bulk.tensor of thread " +
           std::to_string(l.issuer) + " (linear threadIdx) still has in flight: " +
           (l.observed ? "no wait of this thread has" : "no wait has yet") + " observed the phase of parity " +
           std::to_string(l.parity) + " of the mbarrier at " + hex(reinterpret_cast<uintptr_t>(l.bar)) +
           " that the load completes (mbarrier try_wait.parity; for other threads, then __syncthreads)";
}

void drop_tensor_load(size_t i) {
    block.tensor_loads.erase(block.tensor_loads.begin() + long(i));
    g_shared_watch.fetch_sub(1, std::memory_order_relaxed);
}

}  // namespace

std::atomic<long> g_shared_watch{0};

void Counter::note_way(unsigned way, const char* file, int line) {
    auto before = [](const char* f1, int l1, const char* f2, int l2) {  // a site before another; null last
        if (!f1 || !f2) return f1 && !f2;
        const int c = std::strcmp(f1, f2);
        return c < 0 || (c == 0 && l1 < l2);
    };
    if (way > max_way) {
        max_way = way;
        worst_file = file, worst_line = line;
    } else if (way == max_way && before(file, line, worst_file, worst_line)) {
        worst_file = file, worst_line = line;
    }
}

const char* access_name(int kind) {
    static const char* names[kAccessKinds] = {"shared", "ldmatrix", "cp.async", "wmma"};
    return kind >= 0 && kind < kAccessKinds ? names[kind] : "?";
}

void cp_async_issue(void* dst, const void* src, unsigned bytes, unsigned src_bytes, const char* file, int line) {
    Unobserved unobserved;
    if (bytes != 4 && bytes != 8 && bytes != 16) fail("cp.async: cp-size must be 4, 8 or 16 bytes");
    if (src_bytes > bytes) fail("cp.async: src-size exceeds cp-size");
    check_aligned("cp.async shared-memory destination", dst, bytes);
    check_aligned("cp.async global source", src, bytes);
    check_not_being_read(dst, bytes, "cp.async");
    shared_access(Access::kCpAsync, dst, bytes, file, line);  // also refuses a destination in flight
    const int t = this_thread();
    ThreadCopies& tc = block.copies[t];
    tc.issued.push_back({dst, src, bytes, src_bytes});
    g_shared_watch.fetch_add(1, std::memory_order_relaxed);
    for_granules(reinterpret_cast<uintptr_t>(dst), bytes, [t](uintptr_t g, uint16_t mask) {
        InFlight& f = block.in_flight[g];
        f.mask |= mask;
        f.owner = t;
    });
    poison(dst, bytes);
}

void cp_async_commit() {
    Unobserved unobserved;
    ThreadCopies& tc = block.copies[this_thread()];
    tc.group_ends.push_back(tc.issued.size());
}

const AsyncCopy* cp_async_retire(int allowed, size_t* count) {
    Unobserved unobserved;
    ThreadCopies& tc = block.copies[this_thread()];
    tc.retired.clear();
    while (int(tc.group_ends.size()) > allowed) {
        const size_t end = tc.group_ends.front();
        tc.group_ends.pop_front();
        for (; tc.head < end; ++tc.head) {
            settle(tc.issued[tc.head]);
            g_shared_watch.fetch_sub(1, std::memory_order_relaxed);
            tc.retired.push_back(tc.issued[tc.head]);
        }
    }
    if (tc.head == tc.issued.size()) {  // nothing in flight: start the log over
        tc.issued.clear();
        tc.head = 0;
        tc.group_ends.clear();
    }
    *count = tc.retired.size();
    return tc.retired.data();
}

namespace {
void check_cp_async(const void* p, size_t bytes, const char* what) {
    if (block.in_flight.empty()) return;
    for_granules(reinterpret_cast<uintptr_t>(p), bytes, [&](uintptr_t g, uint16_t mask) {
        auto it = block.in_flight.find(g);
        if (it == block.in_flight.end() || !(it->second.mask & mask)) return;
        throw std::runtime_error(std::string(what) + " touches shared memory at " + hex(reinterpret_cast<uintptr_t>(p)) +
                                 " that a cp.async of thread " + std::to_string(it->second.owner) +
                                 " (linear threadIdx) still has in flight: its group is not complete "
                                 "(cp.async.wait_group / wait_all, then __syncthreads for other threads)");
    });
}
}  // namespace

void check_settled(const void* p, size_t bytes, const char* what) {
    Unobserved unobserved;
    check_cp_async(p, bytes, what);
    const int t = this_thread();
    for (const TensorLoad& l : block.tensor_loads)
        if (overlaps(l, reinterpret_cast<uintptr_t>(p), bytes) && !(t < int(l.seen.size()) && l.seen[size_t(t)]))
            throw std::runtime_error(tensor_load_error(what, reinterpret_cast<uintptr_t>(p), l));
}

// A tensor load writes: it needs only that some wait observed the phase of the load it replaces (the
// issuing thread is ordered after the readers by the ring's other barrier, which this does not see).
void tma_issue_check(const void* dst, size_t bytes, const char* what) {
    Unobserved unobserved;
    check_cp_async(dst, bytes, what);
    check_not_being_read(dst, bytes, what);
    const uintptr_t p = reinterpret_cast<uintptr_t>(dst);
    for (size_t i = block.tensor_loads.size(); i-- > 0;) {
        const TensorLoad& l = block.tensor_loads[i];
        if (!overlaps(l, p, bytes)) continue;
        if (!l.observed) throw std::runtime_error(tensor_load_error(what, p, l));
        drop_tensor_load(i);  // its phase was observed: the new load replaces it
    }
}

void tma_register(void* dst, size_t bytes, const uint64_t* bar, unsigned parity) {
    Unobserved unobserved;
    TensorLoad l{reinterpret_cast<uintptr_t>(dst), bytes, bar, parity & 1u, this_thread(), false, {}};
    l.seen.assign(size_t(block.threads), false);
    block.tensor_loads.push_back(std::move(l));
    g_shared_watch.fetch_add(1, std::memory_order_relaxed);
    poison(dst, bytes);
}

void tma_observe(const uint64_t* bar, unsigned parity) {
    Unobserved unobserved;
    const int t = this_thread();
    for (TensorLoad& l : block.tensor_loads) {
        if (l.bar != bar || l.parity != (parity & 1u)) continue;
        if (!l.observed) unpoison(reinterpret_cast<void*>(l.dst), l.bytes);
        l.observed = true;
        if (t < int(l.seen.size())) l.seen[size_t(t)] = true;
    }
}

void shared_access(Access kind, const void* p, unsigned bytes, const char* file, int line, bool write) {
    Unobserved unobserved;
    if (bytes & (bytes - 1)) fail("shared-memory access of a size that is not a power of two");
    check_aligned(access_name(int(kind)), p, bytes);
    if (write) check_not_being_read(p, bytes, "a shared-memory store");
    check_settled(p, bytes, kind == Access::kCpAsync ? "cp.async" : "a shared-memory access");
    const int t = this_thread();
    if (!counting() || t >= int(block.log.size())) return;  // counting was switched on during this block
    block.log[t].push_back({file, line, kind, reinterpret_cast<uintptr_t>(p), bytes});
}

void count_collective(Access kind, const Segment* segs, int n, int phases) {
    Unobserved unobserved;
    if (counting()) count_access(kind, segs, n, phases, nullptr, 0);
}

void count_tile(const void* p, int rows, int cols, unsigned ldm, unsigned elem_bytes, bool row_major) {
    Unobserved unobserved;
    if (!counting()) return;
    // The tile as runs of contiguous memory (rows of a row-major tile, columns of a column-major one).
    const int runs = row_major ? rows : cols, run = row_major ? cols : rows;
    std::vector<uintptr_t> words;
    for (int i = 0; i < runs; ++i)
        add_words(words, reinterpret_cast<uintptr_t>(p) + uintptr_t(i) * ldm * elem_bytes, unsigned(run) * elem_bytes);
    const unsigned ideal = unsigned((size_t(rows) * cols * elem_bytes + 127) / 128);
    const unsigned cost = std::max(ideal, phase_cost(words));
    Counter& c = block.local[int(Access::kWmma)];
    ++c.accesses;
    c.wavefronts += cost;
    c.ideal += ideal;
    c.note_way((cost + ideal - 1) / ideal, nullptr, 0);
}

bool counting() { return g_shared_watch.load() >= kCountingOn; }

void set_counting(bool on) {
    if (on != counting()) g_shared_watch.fetch_add(on ? kCountingOn : -kCountingOn);
}

std::vector<CounterRow> counter_rows() {
    Unobserved unobserved;
    std::lock_guard<std::mutex> lock(g_counter_mutex);
    std::vector<CounterRow> rows;
    for (const auto& [key, value] : g_counters) rows.push_back({value.first, key.second, value.second});
    return rows;
}

void reset_counters() {
    Unobserved unobserved;
    std::lock_guard<std::mutex> lock(g_counter_mutex);
    g_counters.clear();
}

void smem_block_begin(const char* kernel, int threads) {
    Unobserved unobserved;
    block.kernel = kernel;
    block.threads = threads;
    if (int(block.copies.size()) < threads) block.copies.resize(threads);
    if (counting() && int(block.log.size()) < threads) block.log.resize(threads);
    drop_copies();
    wgmma_block_begin(threads);
}

void smem_barrier() {
    Unobserved unobserved;
    // A wait observed these loads' phases and this barrier orders it before every thread's next access.
    for (size_t i = block.tensor_loads.size(); i-- > 0;)
        if (block.tensor_loads[i].observed) drop_tensor_load(i);
    if (counting()) flush_log();
}

void smem_block_end() {
    Unobserved unobserved;
    // Copies never waited for die with the block's shared memory, as do wgmma operations.
    drop_copies();
    wgmma_block_end();
    if (!counting()) return;
    flush_log();
    std::lock_guard<std::mutex> lock(g_counter_mutex);
    for (int k = 0; k < kAccessKinds; ++k) {
        Counter& local = block.local[k];
        if (!local.accesses) continue;
        auto& [name, total] = g_counters[{block.kernel, k}];
        name = block.kernel;
        total.accesses += local.accesses;
        total.wavefronts += local.wavefronts;
        total.ideal += local.ideal;
        total.note_way(local.max_way, local.worst_file, local.worst_line);
        local = Counter();
    }
}

}  // namespace fcn_emu
