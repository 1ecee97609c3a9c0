// wgmma.cpp: the bookkeeping of the emulated warpgroup instructions (see
// wgmma.h): descriptor windows, each thread's pending operations and groups,
// the operand bytes being read, and each warpgroup's instruction sequence.
// All of it is per worker (one block at a time, all its CUDA threads on one
// OS thread), like smem.cpp's, and runs Unobserved for the same reason.
#include <deque>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "emu.h"

namespace fcn_emu {
namespace {

constexpr size_t kMaxWindows = 1023;  // the index (from 1) fits the descriptor's 10 reserved bits 52-61

struct Windows {
    std::vector<uintptr_t> base;  // base[i - 1]: window i
    std::unordered_map<uintptr_t, unsigned> index;
};
thread_local Windows windows;

struct ThreadOps {
    std::vector<wg::Op> issued;  // in issue order; [head, size) not yet retired
    size_t head = 0;
    std::deque<size_t> group_ends;  // committed groups, oldest first: one past their last operation
    std::vector<wg::Op> retired;
    std::deque<std::vector<uintptr_t>> marks;  // lane 0: the granules of each operation not yet released
    std::vector<std::vector<uintptr_t>> releasing;
    bool fenced = false;
};

// A warpgroup's instructions in order, as the first of its warps executed
// them, until all four have: each warp's must match.
struct Sequence {
    std::deque<std::pair<uint64_t, uint64_t>> sig;  // (kind and operands, descriptor B)
    std::deque<int> seen;
    size_t base = 0, next[4] = {};
};

struct BlockOps {
    int threads = 0;
    std::vector<ThreadOps> ops;
    std::unordered_map<uintptr_t, std::pair<int, int>> being_read;  // 16-byte granule -> (count, a reading warp)
    std::vector<Sequence> groups;
};
thread_local BlockOps block;

int this_thread() { return int(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)); }

std::string hex(uintptr_t p) {
    char s[32];
    std::snprintf(s, sizeof s, "%#lx", static_cast<unsigned long>(p));
    return s;
}

const char* kind_name(uint64_t kind) {
    switch (kind) {
        case 1: return "wgmma.fence";
        case 2: return "wgmma.mma_async";
        case 3: return "wgmma.commit_group";
        case 4: return "wgmma.wait_group";
        default: return "setmaxnreg";
    }
}

// Warp `warp` of the block executes a warpgroup instruction (lane 0 reports it).
void record(int warp, uint64_t kind, uint64_t operands, uint64_t b_desc) {
    const int warps = (block.threads + 31) / 32, first = warp - warp % 4;
    if (first + 3 >= warps)
        fail((std::string(kind_name(kind)) + " in warp " + std::to_string(warp) + ": its warpgroup (warps " +
              std::to_string(first) + " .. " + std::to_string(first + 3) + ") is incomplete, the block has " +
              std::to_string(warps) + " warp" + (warps == 1 ? "" : "s") +
              " (a warpgroup is four consecutive warps from a warp index divisible by 4)")
                 .c_str());
    Sequence& s = block.groups[warp / 4];
    const size_t i = s.next[warp % 4]++;
    const std::pair<uint64_t, uint64_t> sig{kind << 56 | operands, b_desc};
    if (i - s.base < s.sig.size()) {
        if (s.sig[i - s.base] != sig)
            fail(("warp " + std::to_string(warp) + " executes " + kind_name(kind) + " as its warpgroup instruction " +
                  std::to_string(i + 1) + " where another warp of its warpgroup executed " +
                  kind_name(s.sig[i - s.base].first >> 56) +
                  " or the same with other operands (all four warps must execute the same instructions)")
                     .c_str());
        ++s.seen[i - s.base];
    } else {
        s.sig.push_back(sig);
        s.seen.push_back(1);
    }
    while (!s.seen.empty() && s.seen.front() == 4) {
        s.sig.pop_front();
        s.seen.pop_front();
        ++s.base;
    }
}

void clear_block() {
    for (ThreadOps& t : block.ops) t = ThreadOps();
    if (!block.being_read.empty()) g_shared_watch.fetch_sub(long(block.being_read.size()), std::memory_order_relaxed);
    block.being_read.clear();
    block.groups.clear();
}

}  // namespace

unsigned wgmma_window(uintptr_t base) {
    Unobserved unobserved;
    auto it = windows.index.find(base);
    if (it != windows.index.end()) return it->second;
    if (windows.base.size() >= kMaxWindows) fail("wgmma_descriptor: too many distinct 1024-byte windows in one block");
    windows.base.push_back(base);
    return windows.index[base] = unsigned(windows.base.size());
}

uintptr_t wgmma_window_base(unsigned index) {
    Unobserved unobserved;
    return index >= 1 && index <= windows.base.size() ? windows.base[index - 1] : 0;
}

void wgmma_fence_executed(int warp) {
    Unobserved unobserved;
    block.ops[this_thread()].fenced = true;
    if (lane_id() == 0) record(warp, 1, 0, 0);
}

wg::Op* wgmma_issue(const uint64_t (&sig)[3], const uintptr_t* granules, size_t count, bool lane0) {
    Unobserved unobserved;
    const int t = this_thread();
    ThreadOps& mine = block.ops[t];
    if (!mine.fenced)
        fail("wgmma.mma_async before any wgmma.fence of this thread (the ISA requires one before the first "
             "wgmma.mma_async)");
    if (lane0) {
        record(t / 32, 2, sig[0] ^ (sig[2] * 0x9e3779b97f4a7c15ull), sig[1]);
        std::vector<uintptr_t> marked(granules, granules + count);
        for (uintptr_t g : marked) {
            auto& entry = block.being_read[g];
            if (entry.first++ == 0) g_shared_watch.fetch_add(1, std::memory_order_relaxed);
            entry.second = t / 32;
        }
        mine.marks.push_back(std::move(marked));
    }
    mine.issued.emplace_back();
    return &mine.issued.back();
}

void setmaxnreg_executed(bool inc, unsigned count) {
    Unobserved unobserved;
    if (lane_id() == 0) record(this_thread() / 32, 5, uint64_t(count) << 1 | uint64_t(inc), 0);
}

void wgmma_commit_executed(bool lane0) {
    Unobserved unobserved;
    const int t = this_thread();
    ThreadOps& mine = block.ops[t];
    mine.group_ends.push_back(mine.issued.size());
    if (lane0) record(t / 32, 3, 0, 0);
}

const wg::Op* wgmma_retire(int allowed, bool lane0, size_t* count) {
    Unobserved unobserved;
    const int t = this_thread();
    ThreadOps& mine = block.ops[t];
    if (lane0) record(t / 32, 4, uint64_t(allowed), 0);
    mine.retired.clear();
    mine.releasing.clear();
    while (int(mine.group_ends.size()) > allowed) {
        const size_t end = mine.group_ends.front();
        mine.group_ends.pop_front();
        for (; mine.head < end; ++mine.head) {
            mine.retired.push_back(mine.issued[mine.head]);
            if (lane0) {
                mine.releasing.push_back(std::move(mine.marks.front()));
                mine.marks.pop_front();
            }
        }
    }
    if (mine.head == mine.issued.size()) {  // nothing pending: start over
        mine.issued.clear();
        mine.head = 0;
        for (size_t& e : mine.group_ends) e = 0;
    }
    *count = mine.retired.size();
    return mine.retired.data();
}

void wgmma_release(size_t count) {
    Unobserved unobserved;
    ThreadOps& mine = block.ops[this_thread()];
    (void)count;
    for (const std::vector<uintptr_t>& marked : mine.releasing)
        for (uintptr_t g : marked) {
            auto it = block.being_read.find(g);
            if (it == block.being_read.end()) continue;
            if (--it->second.first == 0) {
                block.being_read.erase(it);
                g_shared_watch.fetch_sub(1, std::memory_order_relaxed);
            }
        }
    mine.releasing.clear();
}

void check_not_being_read(const void* p, size_t bytes, const char* what) {
    Unobserved unobserved;
    if (block.being_read.empty() || bytes == 0) return;
    const uintptr_t lo = reinterpret_cast<uintptr_t>(p);
    for (uintptr_t g = lo & ~uintptr_t(15); g < lo + bytes; g += 16) {
        auto it = block.being_read.find(g);
        if (it == block.being_read.end()) continue;
        throw std::runtime_error(std::string(what) + " writes shared memory at " + hex(lo) +
                                 " that a wgmma.mma_async of warp " + std::to_string(it->second.second) +
                                 " still reads: its group is not retired (wgmma.wait_group, then a barrier or "
                                 "mbarrier for other threads)");
    }
}

void wgmma_block_check() {
    Unobserved unobserved;
    for (size_t w = 0; w < block.groups.size(); ++w) {
        const Sequence& s = block.groups[w];
        if (s.sig.empty()) continue;
        for (int i = 0; i < 4; ++i)
            if (s.next[i] - s.base < s.sig.size())
                fail(("warp " + std::to_string(4 * w + i) + " never executed " + kind_name(s.sig[s.next[i] - s.base].first >> 56) +
                      " (warpgroup instruction " + std::to_string(s.next[i] + 1) +
                      ") that another warp of its warpgroup executed (all four warps must execute the same "
                      "instructions)")
                         .c_str());
    }
}

void wgmma_block_begin(int threads) {
    Unobserved unobserved;
    block.threads = threads;
    if (int(block.ops.size()) < threads) block.ops.resize(threads);
    clear_block();
    block.groups.resize((threads + 127) / 128);
    if (windows.base.size() > kMaxWindows / 2) {  // no descriptor outlives its block
        windows.base.clear();
        windows.index.clear();
    }
}

void wgmma_block_end() {
    Unobserved unobserved;
    clear_block();
}

}  // namespace fcn_emu
