#include "kernels/probes_sm90.cuh"
#include "ops/launchers.h"

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

}  // namespace fcn
