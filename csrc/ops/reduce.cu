#include "kernels/reduce.cuh"
#include "ops/launchers.h"

namespace fcn {

int block_sum_partials(int n) { return max(1, min(ceil_div(n, kBlockSumThreads), 1024)); }

void launch_block_sum(const float* x, float* partial, float* out, int n, cudaStream_t stream) {
    const int blocks = block_sum_partials(n);
    launch("block_sum", block_sum, dim3(blocks), dim3(kBlockSumThreads), 0, stream, x, partial, n);
    launch("block_sum", block_sum, dim3(1), dim3(kBlockSumThreads), 0, stream, (const float*)partial, out, blocks);
}

void launch_warp_segment_sum(const float* x, float* sums, int n, int kind, int width, cudaStream_t stream) {
    const dim3 grid(ceil_div(n, 256)), block(256);
    switch (kind) {
        case kShflIdx: launch("warp_segment_sum<idx>", warp_segment_sum<kShflIdx>, grid, block, 0, stream, x, sums, n, width); break;
        case kShflUp: launch("warp_segment_sum<up>", warp_segment_sum<kShflUp>, grid, block, 0, stream, x, sums, n, width); break;
        case kShflDown: launch("warp_segment_sum<down>", warp_segment_sum<kShflDown>, grid, block, 0, stream, x, sums, n, width); break;
        default: launch("warp_segment_sum<xor>", warp_segment_sum<kShflXor>, grid, block, 0, stream, x, sums, n, width); break;
    }
}

void launch_warp_shuffle(const float* x, float* y, int n, int kind, int arg, int width, cudaStream_t stream) {
    launch("warp_shuffle", warp_shuffle, dim3(ceil_div(n, 256)), dim3(256), 0, stream, x, y, n, kind, arg, width);
}

}  // namespace fcn
