// wmma_input.cuh: how a float operand reaches the tensor cores through
// nvcuda::wmma, for every input type the wmma kernels use (gemm_wmma in
// gemm.cuh, conv2d_igemm_wmma in conv2d.cuh): the type staged in shared
// memory, the depth of one mma step, and the float -> input conversion.
//   precision::tf32: floats rounded with __float_to_tf32 (round half away,
//                    10 mantissa bits kept), m16n16k8;
//   __half, __nv_bfloat16: round to nearest even, m16n16k16.
#pragma once
#include "common.cuh"

namespace fcn {

// What the tensor cores read for each input type.
template <typename T>
struct WmmaInput;
template <>
struct WmmaInput<nvcuda::wmma::precision::tf32> {
    using Stored = float;
    static constexpr int kK = 8;
    __device__ static float convert(float v) { return nvcuda::wmma::__float_to_tf32(v); }
};
template <>
struct WmmaInput<__half> {
    using Stored = __half;
    static constexpr int kK = 16;
    __device__ static __half convert(float v) { return __float2half(v); }
};
template <>
struct WmmaInput<__nv_bfloat16> {
    using Stored = __nv_bfloat16;
    static constexpr int kK = 16;
    __device__ static __nv_bfloat16 convert(float v) { return __float2bfloat16(v); }
};

}  // namespace fcn
