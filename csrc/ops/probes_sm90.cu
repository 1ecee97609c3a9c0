#include "kernels/probes_sm90.cuh"
#include "ops/launchers.h"
#include "ops/tensor_map.h"

#include <cstring>

namespace fcn {

void launch_mbarrier_trace_probe(int* out, cudaStream_t stream) {
    launch("mbarrier_trace_probe", mbarrier_trace_probe, dim3(1), dim3(1), 0, stream, out);
}

void launch_mbarrier_pipeline_probe(const float* x, float* y, int rounds, bool consumer_waits, cudaStream_t stream) {
    launch("mbarrier_pipeline_probe", mbarrier_pipeline_probe, dim3(1), dim3(64), 0, stream, x, y, rounds,
           consumer_waits);
}

void launch_mbarrier_fault_probe(int kind, float* y, cudaStream_t stream) {
    launch("mbarrier_fault_probe", mbarrier_fault_probe, dim3(1), dim3(32), 0, stream, kind, y);
}

void launch_tma_load_probe(const void* global, bool bf16, int map_rank, const uint64_t* dims, const uint64_t* strides,
                           const uint32_t* box, int swizzle, int rank, const int* coords, unsigned expect_bytes,
                           int dst_offset, unsigned bytes, int fault, unsigned char* out, cudaStream_t stream) {
    if (rank < 2 || rank > 5) throw std::invalid_argument("tma_load_probe: rank must be in 2 .. 5");
    if (dst_offset < 0 || bytes > unsigned(kTmaProbeSmem - dst_offset))
        throw std::invalid_argument("tma_load_probe: dst_offset + bytes must lie in the probe's shared memory");
    TensorMap map;
    if (fault == 5) std::memset(&map, 0, sizeof map);  // never encoded
    else map = encode_tensor_map(bf16 ? TmaElement::bf16 : TmaElement::f32, map_rank, global, dims, strides, box, swizzle);
    launch("tma_load_probe", tma_load_probe, dim3(1), dim3(64), 0, stream, map, rank, coords[0], coords[1], coords[2],
           coords[3], coords[4], expect_bytes, dst_offset, bytes, fault == 5 ? 0 : fault, out);
}

void launch_tma_ring_probe(const float* x, float* y, int rounds, bool consumer_waits, cudaStream_t stream) {
    const uint64_t dims[2] = {32, uint64_t(rounds)}, strides[1] = {32 * sizeof(float)};
    const uint32_t box[2] = {32, 1};
    const TensorMap map = encode_tensor_map(TmaElement::f32, 2, x, dims, strides, box, 0);
    launch("tma_ring_probe", tma_ring_probe, dim3(1), dim3(64), 0, stream, map, y, rounds, consumer_waits);
}

}  // namespace fcn
