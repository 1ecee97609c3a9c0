#include <stdexcept>

#include "kernels/probes_wgmma.cuh"
#include "ops/launchers.h"
#include "ops/tensor_map.h"

namespace fcn {

namespace {
template <int N, bool kBf16, bool kRs>
void launch_one(const WgmmaProbeArgs& p, cudaStream_t stream) {
    launch("wgmma_probe", wgmma_probe<N, kBf16, kRs>, dim3(1), dim3(p.threads), size_t(p.image_bytes) + 1024, stream,
           p.image, p.image_bytes, WgmmaProbeOperand{p.a[0], unsigned(p.a[1]), unsigned(p.a[2]), unsigned(p.a[3])},
           WgmmaProbeOperand{p.b[0], unsigned(p.b[1]), unsigned(p.b[2]), unsigned(p.b[3])}, p.a_regs, p.d_init, p.out,
           p.out2, p.accumulate, p.mode);
}

template <bool kBf16, bool kRs>
void launch_n(const WgmmaProbeArgs& p, cudaStream_t stream) {
    switch (p.n) {
        case 8: return launch_one<8, kBf16, kRs>(p, stream);
        case 16: return launch_one<16, kBf16, kRs>(p, stream);
        case 32: return launch_one<32, kBf16, kRs>(p, stream);
        case 64: return launch_one<64, kBf16, kRs>(p, stream);
        case 128: return launch_one<128, kBf16, kRs>(p, stream);
        case 256: return launch_one<256, kBf16, kRs>(p, stream);
        default: throw std::invalid_argument("wgmma_probe: N must be 8, 16, 32, 64, 128 or 256");
    }
}
}  // namespace

void launch_wgmma_probe(const WgmmaProbeArgs& p, cudaStream_t stream) {
    if (p.bf16) p.rs ? launch_n<true, true>(p, stream) : launch_n<true, false>(p, stream);
    else p.rs ? launch_n<false, true>(p, stream) : launch_n<false, false>(p, stream);
}

void launch_wgmma_tma_probe(const float* a, const float* b, float* out, bool tma_early, cudaStream_t stream) {
    const uint64_t dims[2] = {32, 64}, strides[1] = {32 * sizeof(float)};
    const uint32_t box[2] = {32, 64};
    const TensorMap map_a = encode_tensor_map(TmaElement::f32, 2, a, dims, strides, box, 128);
    const TensorMap map_b = encode_tensor_map(TmaElement::f32, 2, b, dims, strides, box, 128);
    launch("wgmma_tma_probe", wgmma_tma_probe, dim3(1), dim3(128), 0, stream, map_a, map_b, out, tma_early);
}

void launch_wgmma_descriptor_probe(const int* op, std::uint64_t* out, cudaStream_t stream) {
    launch("wgmma_descriptor_probe", wgmma_descriptor_probe, dim3(1), dim3(1), 0, stream,
           WgmmaProbeOperand{op[0], unsigned(op[1]), unsigned(op[2]), unsigned(op[3])}, out);
}

}  // namespace fcn
