#include <utility>

#include "kernels/sort.cuh"
#include "ops/launchers.h"

namespace fcn {

int sort_pairs_workspace(int n) {
    const int counts = kSortDigits * ceil_div(n, kSortItems);
    return counts + scan_workspace(counts);
}

int launch_sort_pairs(unsigned long long* keys, int* vals, unsigned long long* keys_alt, int* vals_alt,
                      int* workspace, int n, int bits, cudaStream_t stream) {
    const int chunks = ceil_div(n, kSortItems);
    const int counts = kSortDigits * chunks;
    const dim3 grid(ceil_div(chunks, kSortThreads));
    int passes = 0;
    for (int shift = 0; shift < bits; shift += kSortRadixBits, ++passes) {
        launch("sort_count", sort_count, grid, dim3(kSortThreads), 0, stream, keys, n,
               shift, chunks, workspace);
        launch_exclusive_scan(workspace, counts, workspace + counts, nullptr, stream);
        launch("sort_scatter", sort_scatter, grid, dim3(kSortThreads), 0, stream, keys,
               vals, n, shift, chunks, workspace, keys_alt, vals_alt);
        std::swap(keys, keys_alt);
        std::swap(vals, vals_alt);
    }
    return passes % 2;
}

}  // namespace fcn
