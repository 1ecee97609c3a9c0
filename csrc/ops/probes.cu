#include "kernels/probes.cuh"
#include "ops/launchers.h"

namespace fcn {

bool launch_sync_enabled() { return sync_launches(); }

void launch_barrier_rotate(const float* x, float* y, int n, int rounds, cudaStream_t stream) {
    launch("barrier_rotate", barrier_rotate, dim3(1), dim3(n), 0, stream, x, y, rounds);
}

void launch_divergent_barrier(float* y, cudaStream_t stream) {
    launch("divergent_barrier", divergent_barrier, dim3(1), dim3(32), 0, stream, y);
}

void launch_early_exit_barrier(float* y, cudaStream_t stream) {
    launch("early_exit_barrier", early_exit_barrier, dim3(1), dim3(32), 0, stream, y);
}

void launch_missing_lane_shuffle(float* y, cudaStream_t stream) {
    launch("missing_lane_shuffle", missing_lane_shuffle, dim3(1), dim3(32), 0, stream, y);
}

void launch_deadlock_probe(float* y, cudaStream_t stream) {
    launch("deadlock_probe", deadlock_probe, dim3(1), dim3(32), 0, stream, y);
}

void launch_atomics_probe(const int* v, int n, int bins, int cas_threads, int* counts, int* maximum, int* cas_count,
                          float* fsum, cudaStream_t stream) {
    launch("atomics_probe", atomics_probe, dim3(ceil_div(n, 128)), dim3(128), 0, stream, v, n, bins, cas_threads,
           counts, maximum, cas_count, fsum);
}

void launch_atomic_sum(const float* x, int n, float* out, cudaStream_t stream) {
    launch("atomic_sum", atomic_sum, dim3(ceil_div(n, 128)), dim3(128), 0, stream, x, n, out);
}

void launch_tf32_round(const float* x, float* y, int n, cudaStream_t stream) {
    launch("tf32_round", tf32_round, dim3(ceil_div(n, 128)), dim3(128), 0, stream, x, y, n);
}

void launch_index_probe(int* out, dim3 grid, dim3 block, cudaStream_t stream) {
    launch("index_probe", index_probe, grid, block, 0, stream, out);
}

void launch_dynamic_smem_probe(const float* x, float* y, unsigned* misalignment, int blocks, int threads,
                               cudaStream_t stream) {
    launch("dynamic_smem_probe", dynamic_smem_probe, dim3(blocks), dim3(threads), threads * 4 * sizeof(float), stream,
           x, y, misalignment);
}

void launch_out_of_bounds_probe(const float* x, float* y, int n, int kind, cudaStream_t stream) {
    launch("out_of_bounds_probe", out_of_bounds_probe, dim3(1), dim3(64), 64 * sizeof(float), stream, x, y, n, kind);
}

void launch_race_probe(float* y, int kind, bool ordered, cudaStream_t stream) {
    const dim3 grid(kind == kGlobalRace ? 2 : 1), block(kind == kSharedRace ? 64 : 32);
    launch("race_probe", race_probe, grid, block, 0, stream, y, kind, int(ordered));
}

void launch_failing_block_probe(float* y, int blocks, int threads, int fail, cudaStream_t stream) {
    launch("failing_block_probe", failing_block_probe, dim3(blocks), dim3(threads), 0, stream, y, fail);
}

void launch_cp_async_probe(const float* src, float* out, int bytes, int src_bytes, bool cg, int mode,
                           cudaStream_t stream) {
    launch("cp_async_probe", cp_async_probe, dim3(1), dim3(64), 0, stream, src, out, bytes, src_bytes, int(cg), mode);
}

void launch_ldmatrix_probe(const std::uint16_t* m, const int* rows, std::uint32_t* out, int num, bool trans,
                           cudaStream_t stream) {
    launch("ldmatrix_probe", ldmatrix_probe, dim3(1), dim3(32), 0, stream, m, rows, out, num, int(trans));
}

void launch_mma_probe(const std::uint32_t* a, const std::uint32_t* b, const float* c, float* d, int kind,
                      cudaStream_t stream) {
    launch("mma_probe", mma_probe, dim3(1), dim3(32), 0, stream, a, b, c, d, kind);
}

void launch_smem_bank_probe(float* out, int stride, int width, bool store, int repeat, cudaStream_t stream) {
    launch("smem_bank_probe", smem_bank_probe, dim3(1), dim3(32), 0, stream, out, stride, width, int(store), repeat);
}

}  // namespace fcn
