// sort.cuh: a stable LSD radix sort of (64-bit key, int value) pairs by the low `bits` bits of the keys.
// The dense CRF sorts its lattice vertices' keys with it (crf.cuh).
//
// Layout: keys and values as two arrays of n; each pass reads one pair of buffers and writes the other
// (ops/sort.cu, launch_sort_pairs, says which pair ends up holding the result).
//
// One variant: kSortRadixBits bits a pass, from the lowest; each pass in three launches:
//   sort_count    each thread counts the digits of one chunk of kSortItems consecutive keys;
//   (the counts)  their exclusive scan (scan.cuh), digit-major, gives each (digit, chunk) its first place;
//   sort_scatter  each thread walks its chunk in order again and places every key after the ones before it.
// A thread walks its keys in order, so equal digits keep their order: every pass is stable, and nothing
// depends on the order in which threads run.
#pragma once
#include "common.cuh"

namespace fcn {

constexpr int kSortThreads = 256;
constexpr int kSortRadixBits = 4;  // 16 digits a pass: each thread's counts fit two 64-bit registers
constexpr int kSortDigits = 1 << kSortRadixBits;
constexpr int kSortItems = 32;     // consecutive keys per thread (at most 255: 8-bit counters)

// A thread's 16 digit counters, 8 bits each, in two registers (no indexed local array).
struct DigitCounts {
    unsigned long long lo = 0, hi = 0;

    __device__ __forceinline__ int get(int digit) const {
        return int(((digit < 8 ? lo : hi) >> ((digit & 7) * 8)) & 0xffu);
    }
    // The count before this key, then one more.
    __device__ __forceinline__ int bump(int digit) {
        const int before = get(digit);
        const unsigned long long one = 1ull << ((digit & 7) * 8);
        if (digit < 8) lo += one;
        else hi += one;
        return before;
    }
};

// One thread per chunk t of kSortItems consecutive keys; grid ceil(chunks / 256). counts[digit*chunks + t]
// = how many keys of chunk t have `digit` in bits [shift, shift + 4). Digit-major, so that the exclusive
// scan of counts is, for each (digit, chunk), where that chunk's first key of that digit goes.
__global__ void __launch_bounds__(kSortThreads)
sort_count(const unsigned long long* __restrict__ keys, int n, int shift, int chunks, int* __restrict__ counts) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= chunks) return;
    DigitCounts c;
    const int end = min(n, (t + 1) * kSortItems);
    for (int i = t * kSortItems; i < end; ++i) c.bump(int(keys[i] >> shift) & (kSortDigits - 1));
#pragma unroll
    for (int k = 0; k < kSortDigits; ++k) counts[k * chunks + t] = c.get(k);
}

// One thread per chunk, as sort_count; offsets = the exclusive scan of its counts. The thread walks its
// chunk in order again and puts each key (and its value) at its digit's offset plus the number of keys
// before it in the chunk with the same digit: equal digits keep their order (a stable pass).
__global__ void __launch_bounds__(kSortThreads)
sort_scatter(const unsigned long long* __restrict__ keys_in, const int* __restrict__ vals_in, int n, int shift,
             int chunks, const int* __restrict__ offsets, unsigned long long* __restrict__ keys_out,
             int* __restrict__ vals_out) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= chunks) return;
    DigitCounts c;
    const int end = min(n, (t + 1) * kSortItems);
    for (int i = t * kSortItems; i < end; ++i) {
        const unsigned long long key = keys_in[i];
        const int digit = int(key >> shift) & (kSortDigits - 1);
        const int dst = offsets[digit * chunks + t] + c.bump(digit);
        keys_out[dst] = key;
        vals_out[dst] = vals_in[i];
    }
}

}  // namespace fcn
