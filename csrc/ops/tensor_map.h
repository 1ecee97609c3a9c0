// tensor_map.h: the host side of the TMA (csrc/kernels/ptx_sm90.cuh): a
// launcher encodes the tensor map of a global tensor here and passes it to
// its kernel by value (`const __grid_constant__ fcn::TensorMap map`).
//
// encode_tensor_map(type, rank, global, dims, strides, box, swizzle_bytes):
// tiled mode, as cuTensorMapEncodeTiled defines it: dims innermost first (in
// elements), strides[i] the byte stride of dimension i + 1 (rank - 1 of
// them), box innermost first, every element stride 1, swizzle_bytes 0, 32,
// 64 or 128, out-of-bounds elements read as zero, no interleave, no L2
// promotion. The emulator's model (csrc/emu/tma.h, fcn_emu::encode_tiled)
// checks the driver's documented requirements in both builds, so a refusal
// says which argument is wrong; the nvcc build then calls the driver's
// cuTensorMapEncodeTiled, found through cudaGetDriverEntryPointByVersion
// (the runtime hands out the driver's entry point: nothing links against
// libcuda), and the host build keeps the emulator's map. A refusal throws
// std::invalid_argument (ValueError in Python).
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#include "../emu/tma.h"
#include "../kernels/ptx_sm90.cuh"

#if !defined(FCN_EMU)
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled
#endif

namespace fcn {

enum class TmaElement { f32, bf16 };

#if !defined(FCN_EMU)
// The driver's cuTensorMapEncodeTiled (CUDA 12.0's ABI, the one it has had since).
inline PFN_cuTensorMapEncodeTiled_v12000 driver_encode_tiled() {
    static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
        void* p = nullptr;
        cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
        const cudaError_t e =
            cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &found);
        if (e != cudaSuccess || found != cudaDriverEntryPointSuccess || !p)
            throw std::runtime_error(std::string("encode_tensor_map: the driver has no cuTensorMapEncodeTiled (") +
                                     cudaGetErrorString(e) + ")");
        return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
    }();
    return fn;
}
#endif

inline TensorMap encode_tensor_map(TmaElement type, int rank, const void* global, const uint64_t* dims,
                                   const uint64_t* strides, const uint32_t* box, int swizzle_bytes) {
    if (type != TmaElement::f32 && type != TmaElement::bf16)
        throw std::invalid_argument("encode_tensor_map: the element type must be f32 or bf16");
    if (rank < 1 || rank > 5)
        throw std::invalid_argument("cuTensorMapEncodeTiled: tensorRank must be in 1 .. 5, got " + std::to_string(rank));
    if (swizzle_bytes < 0) throw std::invalid_argument("cuTensorMapEncodeTiled: swizzle must be none, 32, 64 or 128 B");
    const uint32_t estride[5] = {1, 1, 1, 1, 1};
    const uint32_t elem_bytes = type == TmaElement::f32 ? 4 : 2;
    ::fcn_emu::TensorMap model;
    const std::string why = ::fcn_emu::encode_tiled(&model, elem_bytes, uint32_t(rank), global, dims, strides, box,
                                                    estride, uint32_t(swizzle_bytes), false);
    if (!why.empty()) throw std::invalid_argument("cuTensorMapEncodeTiled: " + why);
#if defined(FCN_EMU)
    return model;
#else
    TensorMap map;
    const CUtensorMapSwizzle swizzle = swizzle_bytes == 0    ? CU_TENSOR_MAP_SWIZZLE_NONE
                                       : swizzle_bytes == 32 ? CU_TENSOR_MAP_SWIZZLE_32B
                                       : swizzle_bytes == 64 ? CU_TENSOR_MAP_SWIZZLE_64B
                                                             : CU_TENSOR_MAP_SWIZZLE_128B;
    const CUresult r = driver_encode_tiled()(
        &map, type == TmaElement::f32 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT32 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        cuuint32_t(rank), const_cast<void*>(global), dims, strides, box, estride, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
        CU_TENSOR_MAP_L2_PROMOTION_NONE, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS)
        throw std::invalid_argument("cuTensorMapEncodeTiled refused the map (CUresult " + std::to_string(int(r)) + ")");
    return map;
#endif
}

}  // namespace fcn
