// tma.h: the emulator's model of a CUtensorMap in tiled mode (included by
// sm90.h), as the CUDA driver API's cuTensorMapEncodeTiled defines it, and
// the box a tiled cp.async.bulk.tensor load writes to shared memory.
//
// encode_tiled checks the driver's documented requirements and refuses the
// rest with a message naming the argument (the driver returns
// CUDA_ERROR_INVALID_VALUE): the map 64-byte aligned; rank 1 .. 5; the global
// address 16-byte aligned; each global dimension 1 .. 2^32; each global
// stride (bytes, dimensions 1 .. rank - 1) a multiple of 16 and below 2^40;
// each box dimension 1 .. 256, the inner one's bytes a multiple of 16; each
// element stride 1 .. 8; with a swizzle, the inner box's bytes at most the
// swizzle's span (32, 64 or 128). Not modelled: interleaved layouts (no
// such parameter here) and the NaN fill of 2-byte floats (refused).
//
// load_box: the box at signed coordinates c (innermost first) holds, along
// each dimension d, ceil(box[d] / estride[d]) elements, at c[d] + i *
// estride[d]; an element outside [0, dim[d]) in any dimension reads as zero
// (or NaN, with the NaN fill). Shared memory holds the box densely,
// innermost first; with a swizzle of span S bytes (32, 64, 128), the 16-byte
// chunk j of a span is stored at chunk j ^ (line % (S / 16)), where line is
// the 128-byte line of shared memory the byte falls in: address bits
// [4, 4 + log2(S / 16)) XORed with bits [7, 7 + log2(S / 16)), a pattern that
// repeats every 256, 512 or 1024 bytes. Computed here from the offset
// within the box: the hardware's pattern when the box starts on such a
// boundary.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace fcn_emu {

struct alignas(64) TensorMap {
    uint32_t magic;  // kTensorMapMagic once encoded
    uint32_t rank, elem_bytes, swizzle;  // swizzle: 0, 32, 64 or 128 bytes
    uint32_t nan_fill;
    uint16_t box[5];
    uint8_t estride[5];
    uint64_t dim[5];     // in elements
    uint64_t stride[4];  // in bytes, of dimensions 1 .. 4 (dimension 0's is elem_bytes)
    const void* global;
};
static_assert(sizeof(TensorMap) == 128, "a CUtensorMap is 128 bytes");
constexpr uint32_t kTensorMapMagic = 0x544d4150u;  // "TMAP"

// Returns "" on success, else what is wrong.
inline std::string encode_tiled(TensorMap* map, uint32_t elem_bytes, uint32_t rank, const void* global,
                                const uint64_t* dim, const uint64_t* stride, const uint32_t* box,
                                const uint32_t* estride, uint32_t swizzle, bool nan_fill) {
    auto at = [](const char* name, uint32_t d) { return std::string(name) + "[" + std::to_string(d) + "]"; };
    if (reinterpret_cast<uintptr_t>(map) % 64) return "tensorMap must be 64-byte aligned";
    if (elem_bytes != 1 && elem_bytes != 2 && elem_bytes != 4 && elem_bytes != 8)
        return "tensorDataType: elements of 1, 2, 4 or 8 bytes";
    if (rank < 1 || rank > 5) return "tensorRank must be in 1 .. 5";
    if (reinterpret_cast<uintptr_t>(global) % 16) return "globalAddress must be 16-byte aligned";
    for (uint32_t d = 0; d < rank; ++d) {
        if (dim[d] < 1 || dim[d] > (1ull << 32)) return at("globalDim", d) + " must be in 1 .. 2^32";
        if (box[d] < 1 || box[d] > 256) return at("boxDim", d) + " must be in 1 .. 256";
        if (estride[d] < 1 || estride[d] > 8) return at("elementStrides", d) + " must be in 1 .. 8";
    }
    for (uint32_t d = 1; d < rank; ++d)
        if (stride[d - 1] % 16 || stride[d - 1] >= (1ull << 40))
            return at("globalStrides", d - 1) + " must be a multiple of 16 below 2^40";
    const uint64_t inner = uint64_t(box[0]) * elem_bytes;
    if (inner % 16) return "boxDim[0] * elementSize must be a multiple of 16 bytes";
    if (swizzle != 0 && swizzle != 32 && swizzle != 64 && swizzle != 128) return "swizzle must be none, 32, 64 or 128 B";
    if (swizzle && inner > swizzle) return "boxDim[0] * elementSize must not exceed the swizzle's span";
    if (nan_fill && elem_bytes < 4) return "the NaN fill is modelled for 4- and 8-byte floats only";
    std::memset(map, 0, sizeof *map);
    map->magic = kTensorMapMagic;
    map->rank = rank;
    map->elem_bytes = elem_bytes;
    map->swizzle = swizzle;
    map->nan_fill = nan_fill;
    map->global = global;
    for (uint32_t d = 0; d < 5; ++d) {
        const bool in = d < rank;
        map->dim[d] = in ? dim[d] : 1;
        map->box[d] = uint16_t(in ? box[d] : 1);
        map->estride[d] = uint8_t(in ? estride[d] : 1);
        if (d > 0) map->stride[d - 1] = in ? stride[d - 1] : 0;
    }
    return "";
}

// The shared-memory bytes of a box: the product of its loaded extents.
inline uint64_t box_bytes(const TensorMap& m) {
    uint64_t n = m.elem_bytes;
    for (uint32_t d = 0; d < m.rank; ++d) n *= (m.box[d] + m.estride[d] - 1) / m.estride[d];
    return n;
}

// The offset at which the swizzle stores the byte at dense offset `off`.
inline uint64_t swizzled(uint64_t off, uint32_t swizzle) {
    if (!swizzle) return off;
    const uint64_t chunks = swizzle / 16;  // 2, 4 or 8 chunks of 16 bytes in a span
    return off ^ (((off >> 7) & (chunks - 1)) << 4);
}

// Writes the box at coordinates c into dst (box_bytes(m) bytes).
inline void load_box(unsigned char* dst, const TensorMap& m, const int32_t* c) {
    uint32_t n[5];
    for (uint32_t d = 0; d < 5; ++d) n[d] = d < m.rank ? (m.box[d] + m.estride[d] - 1) / m.estride[d] : 1;
    const unsigned char* g = static_cast<const unsigned char*>(m.global);
    uint64_t off = 0;
    unsigned char fill[8] = {};
    if (m.nan_fill) {
        const float f = __builtin_nanf("");
        const double dd = __builtin_nan("");
        if (m.elem_bytes == 4) std::memcpy(fill, &f, 4);
        else std::memcpy(fill, &dd, 8);
    }
    for (uint32_t i4 = 0; i4 < n[4]; ++i4)
        for (uint32_t i3 = 0; i3 < n[3]; ++i3)
            for (uint32_t i2 = 0; i2 < n[2]; ++i2)
                for (uint32_t i1 = 0; i1 < n[1]; ++i1)
                    for (uint32_t i0 = 0; i0 < n[0]; ++i0, off += m.elem_bytes) {
                        const uint32_t i[5] = {i0, i1, i2, i3, i4};
                        bool inside = true;
                        uint64_t src = 0;
                        for (uint32_t d = 0; d < m.rank; ++d) {
                            const long long x = (long long)c[d] + (long long)i[d] * m.estride[d];
                            if (x < 0 || (uint64_t)x >= m.dim[d]) inside = false;
                            else src += (uint64_t)x * (d == 0 ? m.elem_bytes : m.stride[d - 1]);
                        }
                        unsigned char* out = dst + swizzled(off, m.swizzle);
                        if (inside) std::memcpy(out, g + src, m.elem_bytes);
                        else std::memcpy(out, fill, m.elem_bytes);
                    }
}

}  // namespace fcn_emu
