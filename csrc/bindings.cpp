// bindings.cpp: the pybind11 module, compiled twice: as fcn_cuda._host
// (-DFCN_EMU, launchers run the emulator) and as fcn_cuda._cuda (launchers
// run on the GPU). One table, mirrored by fcn_cuda/ops.py and friends.
//
// Arrays cross as integer addresses (NumPy .ctypes.data, CuPy .data.ptr)
// and the stream as an integer handle; Python validated them already. An op
// family's sizes cross as one struct (ConvShape; see ops/launchers.h).
// Every launcher releases the GIL: the emulator runs kernels on its own
// threads, and a GPU launch must not block other Python threads.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>

#include "ops/launchers.h"

#if !defined(FCN_MODULE_NAME)
#error "FCN_MODULE_NAME must be _host or _cuda"
#endif

namespace py = pybind11;
using Addr = std::uintptr_t;

namespace {

template <typename T>
T* P(Addr a) { return reinterpret_cast<T*>(a); }
cudaStream_t S(Addr s) { return reinterpret_cast<cudaStream_t>(s); }

const auto nogil = py::call_guard<py::gil_scoped_release>();

}  // namespace

PYBIND11_MODULE(FCN_MODULE_NAME, m) {
    m.doc() = "fcn_cuda kernels (see csrc/)";
    m.def("sync_launches", &fcn::launch_sync_enabled, "FCN_CUDA_SYNC_LAUNCHES: every launch waits for its kernel and checks it");
#if defined(FCN_EMU)
    m.attr("EMULATED") = true;
    m.attr("SANITIZE") = fcn_emu::sanitizer();
    m.def("set_workers", &fcn_emu::set_workers, "emulator worker threads; 0 = one per core, 1 = deterministic");
    m.def("workers", &fcn_emu::workers);
    m.def("inject_worker_fault", &fcn_emu::inject_worker_fault, "tests only: a worker of the next launch throws");
    m.def("set_counting", &fcn_emu::set_counting, "count shared-memory bank conflicts (csrc/emu/smem.h)");
    m.def("reset_counters", &fcn_emu::reset_counters);
    m.def("counters", [] {
        py::list rows;
        for (const fcn_emu::CounterRow& r : fcn_emu::counter_rows()) {
            py::object file = r.counter.worst_file ? py::object(py::str(r.counter.worst_file)) : py::object(py::none());
            rows.append(py::make_tuple(r.kernel, fcn_emu::access_name(r.kind), r.counter.accesses,
                                       r.counter.wavefronts, r.counter.ideal, r.counter.max_way, file,
                                       r.counter.worst_line));
        }
        return rows;
    }, "(kernel, kind, accesses, wavefronts, ideal, max_way, worst_file, worst_line) per kernel and kind of access");
    m.def("tensor_map_box", [](Addr global, unsigned elem_bytes, std::vector<uint64_t> dim, std::vector<uint64_t> stride,
                               std::vector<uint32_t> box, std::vector<uint32_t> estride, unsigned swizzle, bool nan_fill,
                               std::vector<int32_t> coords, Addr out) {
        const size_t rank = dim.size();
        if (box.size() != rank || estride.size() != rank || coords.size() != rank || stride.size() + 1 != rank)
            throw py::value_error("tensor_map_box: dim, box, estride and coords need one entry per dimension, "
                                  "stride one fewer");
        fcn_emu::TensorMap map;
        const std::string why = fcn_emu::encode_tiled(&map, elem_bytes, unsigned(rank), P<const void>(global),
                                                      dim.data(), stride.data(), box.data(), estride.data(),
                                                      swizzle, nan_fill);
        if (!why.empty()) throw py::value_error("cuTensorMapEncodeTiled: " + why);
        fcn_emu::load_box(P<unsigned char>(out), map, coords.data());
        return fcn_emu::box_bytes(map);
    }, "the emulator's tensor map (csrc/emu/tma.h): encodes one, then writes the box at coords to out");
#else
    m.attr("EMULATED") = false;
    m.attr("SANITIZE") = "";
#endif

    // ---- the size structs (kernels/shapes.h). module_local: _host and _cuda each bind their own, so both
    // load in one process; fcn_cuda/ops builds them through the active backend's module.
    py::class_<fcn::ConvShape>(m, "ConvShape", py::module_local(),
                               "every size of one convolution: x N x C x H x W, w K x C x R x S, y N x K x P x Q; "
                               "P, Q are conv_out's unless `out` gives them (a weight gradient's cropped output)")
        .def(py::init([](std::array<int, 4> x, std::array<int, 4> w, std::array<int, 2> stride,
                         std::array<int, 2> padding, std::optional<std::array<int, 2>> out) {
            if (x[1] != w[1]) throw py::value_error("ConvShape: x and w differ in C");
            const int P = out ? (*out)[0] : fcn::conv_out(x[2], w[2], stride[0], padding[0]);
            const int Q = out ? (*out)[1] : fcn::conv_out(x[3], w[3], stride[1], padding[1]);
            if (std::min({x[0], x[1], x[2], x[3], w[0], w[2], w[3], stride[0], stride[1], P, Q}) < 1)
                throw py::value_error("ConvShape: every size and stride must be >= 1");
            return fcn::ConvShape{x[0], x[1], x[2], x[3], w[0], w[2], w[3], P, Q, stride[0], stride[1], padding[0],
                                  padding[1]};
        }), py::arg("x"), py::arg("w"), py::arg("stride"), py::arg("padding"), py::arg("out") = py::none())
        .def_readonly("N", &fcn::ConvShape::N).def_readonly("C", &fcn::ConvShape::C)
        .def_readonly("H", &fcn::ConvShape::H).def_readonly("W", &fcn::ConvShape::W)
        .def_readonly("K", &fcn::ConvShape::K).def_readonly("R", &fcn::ConvShape::R)
        .def_readonly("S", &fcn::ConvShape::S).def_readonly("P", &fcn::ConvShape::P)
        .def_readonly("Q", &fcn::ConvShape::Q).def_readonly("sh", &fcn::ConvShape::sh)
        .def_readonly("sw", &fcn::ConvShape::sw).def_readonly("ph", &fcn::ConvShape::ph)
        .def_readonly("pw", &fcn::ConvShape::pw)
        .def("__repr__", [](const fcn::ConvShape& g) {
            return py::str("ConvShape(x={}, w={}, y={}, stride={}, padding={})")
                .format(py::make_tuple(g.N, g.C, g.H, g.W), py::make_tuple(g.K, g.C, g.R, g.S),
                        py::make_tuple(g.N, g.K, g.P, g.Q), py::make_tuple(g.sh, g.sw), py::make_tuple(g.ph, g.pw));
        });
    py::class_<fcn::TransposeShape>(m, "TransposeShape", py::module_local(),
                                    "every size of one transposed convolution on a window: x N x Cin x H x W, "
                                    "w Cin x Cout x R x S, y the Ho x Wo window at `origin` of the full output")
        .def(py::init([](std::array<int, 4> x, std::array<int, 4> w, std::array<int, 2> stride,
                         std::array<int, 2> origin, std::array<int, 2> out) {
            if (x[1] != w[0]) throw py::value_error("TransposeShape: x and w differ in Cin");
            if (std::min({x[0], x[1], x[2], x[3], w[1], w[2], w[3], stride[0], stride[1], out[0], out[1]}) < 1 ||
                std::min(origin[0], origin[1]) < 0)
                throw py::value_error("TransposeShape: every size and stride must be >= 1, the origin >= 0");
            // In 64 bits: Python refuses a full output beyond int first; this is the backstop.
            if (origin[0] + (long long)out[0] > (x[2] - 1LL) * stride[0] + w[2] ||
                origin[1] + (long long)out[1] > (x[3] - 1LL) * stride[1] + w[3])
                throw py::value_error("TransposeShape: the window leaves the full output");
            return fcn::TransposeShape{x[0], x[1], x[2], x[3], w[1], w[2], w[3], stride[0], stride[1], origin[0],
                                       origin[1], out[0], out[1]};
        }), py::arg("x"), py::arg("w"), py::arg("stride"), py::arg("origin"), py::arg("out"))
        .def_readonly("N", &fcn::TransposeShape::N).def_readonly("Cin", &fcn::TransposeShape::Cin)
        .def_readonly("H", &fcn::TransposeShape::H).def_readonly("W", &fcn::TransposeShape::W)
        .def_readonly("Cout", &fcn::TransposeShape::Cout).def_readonly("R", &fcn::TransposeShape::R)
        .def_readonly("S", &fcn::TransposeShape::S).def_readonly("sy", &fcn::TransposeShape::sy)
        .def_readonly("sx", &fcn::TransposeShape::sx).def_readonly("oy0", &fcn::TransposeShape::oy0)
        .def_readonly("ox0", &fcn::TransposeShape::ox0).def_readonly("Ho", &fcn::TransposeShape::Ho)
        .def_readonly("Wo", &fcn::TransposeShape::Wo)
        .def("__repr__", [](const fcn::TransposeShape& t) {
            return py::str("TransposeShape(x={}, w={}, stride={}, origin={}, out={})")
                .format(py::make_tuple(t.N, t.Cin, t.H, t.W), py::make_tuple(t.Cin, t.Cout, t.R, t.S),
                        py::make_tuple(t.sy, t.sx), py::make_tuple(t.oy0, t.ox0), py::make_tuple(t.Ho, t.Wo));
        });
    py::class_<fcn::PoolShape>(m, "PoolShape", py::module_local(),
                               "every size of one max pooling: `planes` H x W planes pooled to Ho x Wo by a "
                               "kernel window at a stride")
        .def(py::init([](int planes, std::array<int, 2> x, std::array<int, 2> out, std::array<int, 2> kernel,
                         std::array<int, 2> stride) {
            if (std::min({planes, x[0], x[1], out[0], out[1], kernel[0], kernel[1], stride[0], stride[1]}) < 1)
                throw py::value_error("PoolShape: every size, kernel and stride must be >= 1");
            return fcn::PoolShape{planes, x[0], x[1], out[0], out[1], kernel[0], kernel[1], stride[0], stride[1]};
        }), py::arg("planes"), py::arg("x"), py::arg("out"), py::arg("kernel"), py::arg("stride"))
        .def_readonly("planes", &fcn::PoolShape::planes).def_readonly("H", &fcn::PoolShape::H)
        .def_readonly("W", &fcn::PoolShape::W).def_readonly("Ho", &fcn::PoolShape::Ho)
        .def_readonly("Wo", &fcn::PoolShape::Wo).def_readonly("kh", &fcn::PoolShape::kh)
        .def_readonly("kw", &fcn::PoolShape::kw).def_readonly("sh", &fcn::PoolShape::sh)
        .def_readonly("sw", &fcn::PoolShape::sw);
    py::class_<fcn::ScoreCropShape>(m, "ScoreCropShape", py::module_local(),
                                    "every size of the fused score layer: out N x K x H x W, the H x W window at "
                                    "`offset` of feat N x C x Hf x Wf")
        .def(py::init([](std::array<int, 4> out, std::array<int, 4> feat, std::array<int, 2> offset) {
            if (out[0] != feat[0]) throw py::value_error("ScoreCropShape: out and feat differ in N");
            if (std::min({out[0], out[1], out[2], out[3], feat[1]}) < 1 || std::min(offset[0], offset[1]) < 0 ||
                offset[0] + (long long)out[2] > feat[2] || offset[1] + (long long)out[3] > feat[3])
                throw py::value_error("ScoreCropShape: the H x W window at the offset must lie within feat");
            return fcn::ScoreCropShape{out[0], out[1], feat[1], out[2], out[3], feat[2], feat[3], offset[0],
                                       offset[1]};
        }), py::arg("out"), py::arg("feat"), py::arg("offset"))
        .def_readonly("N", &fcn::ScoreCropShape::N).def_readonly("K", &fcn::ScoreCropShape::K)
        .def_readonly("C", &fcn::ScoreCropShape::C).def_readonly("H", &fcn::ScoreCropShape::H)
        .def_readonly("W", &fcn::ScoreCropShape::W).def_readonly("Hf", &fcn::ScoreCropShape::Hf)
        .def_readonly("Wf", &fcn::ScoreCropShape::Wf).def_readonly("oy", &fcn::ScoreCropShape::oy)
        .def_readonly("ox", &fcn::ScoreCropShape::ox);

    // ---- elementwise
    m.def("axpy", [](const std::string& variant, int n, float a, Addr x, Addr y, Addr s) {
        fcn::launch_axpy(variant.c_str(), n, a, P<const float>(x), P<float>(y), S(s));
    }, nogil);

    // ---- reduce
    m.def("block_sum_partials", &fcn::block_sum_partials);
    m.def("block_sum", [](Addr x, Addr partial, Addr out, int n, Addr s) {
        fcn::launch_block_sum(P<const float>(x), P<float>(partial), P<float>(out), n, S(s));
    }, nogil);
    m.def("warp_segment_sum", [](Addr x, Addr sums, int n, int kind, int width, Addr s) {
        fcn::launch_warp_segment_sum(P<const float>(x), P<float>(sums), n, kind, width, S(s));
    }, nogil);
    m.def("warp_shuffle", [](Addr x, Addr y, int n, int kind, int arg, int width, Addr s) {
        fcn::launch_warp_shuffle(P<const float>(x), P<float>(y), n, kind, arg, width, S(s));
    }, nogil);

    // ---- gemm
    m.def("gemm", [](const std::string& variant, Addr a, Addr b, Addr c, int M, int N, int K, Addr s) {
        fcn::launch_gemm(variant.c_str(), P<const float>(a), P<const float>(b), P<float>(c), M, N, K, S(s));
    }, nogil);

    // ---- metrics
    m.def("confusion_matrix", [](Addr gt, Addr pred, int n, int C, Addr hist, Addr s) {
        fcn::launch_confusion_matrix(P<const int>(gt), P<const int>(pred), n, C, P<unsigned long long>(hist), S(s));
    }, nogil);

    // ---- probes
    m.def("barrier_rotate", [](Addr x, Addr y, int n, int rounds, Addr s) {
        fcn::launch_barrier_rotate(P<const float>(x), P<float>(y), n, rounds, S(s));
    }, nogil);
    m.def("divergent_barrier", [](Addr y, Addr s) { fcn::launch_divergent_barrier(P<float>(y), S(s)); }, nogil);
    m.def("early_exit_barrier", [](Addr y, Addr s) { fcn::launch_early_exit_barrier(P<float>(y), S(s)); }, nogil);
    m.def("missing_lane_shuffle", [](Addr y, Addr s) { fcn::launch_missing_lane_shuffle(P<float>(y), S(s)); }, nogil);
    m.def("deadlock_probe", [](Addr y, Addr s) { fcn::launch_deadlock_probe(P<float>(y), S(s)); }, nogil);
    m.def("atomics_probe", [](Addr v, int n, int bins, int cas_threads, Addr counts, Addr maximum, Addr cas, Addr fsum, Addr s) {
        fcn::launch_atomics_probe(P<const int>(v), n, bins, cas_threads, P<int>(counts), P<int>(maximum), P<int>(cas),
                                  P<float>(fsum), S(s));
    }, nogil);
    m.def("atomic_sum", [](Addr x, int n, Addr out, Addr s) { fcn::launch_atomic_sum(P<const float>(x), n, P<float>(out), S(s)); }, nogil);
    m.def("tf32_round", [](Addr x, Addr y, int n, Addr s) { fcn::launch_tf32_round(P<const float>(x), P<float>(y), n, S(s)); }, nogil);
    m.def("index_probe", [](Addr out, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, Addr s) {
        fcn::launch_index_probe(P<int>(out), dim3(gx, gy, gz), dim3(bx, by, bz), S(s));
    }, nogil);
    m.def("dynamic_smem_probe", [](Addr x, Addr y, Addr mis, int blocks, int threads, Addr s) {
        fcn::launch_dynamic_smem_probe(P<const float>(x), P<float>(y), P<unsigned>(mis), blocks, threads, S(s));
    }, nogil);
    m.def("out_of_bounds_probe", [](Addr x, Addr y, int n, int kind, Addr s) {
        fcn::launch_out_of_bounds_probe(P<const float>(x), P<float>(y), n, kind, S(s));
    }, nogil);
    m.def("race_probe", [](Addr y, int kind, bool ordered, Addr s) {
        fcn::launch_race_probe(P<float>(y), kind, ordered, S(s));
    }, nogil);
    m.def("failing_block_probe", [](Addr y, int blocks, int threads, int fail, Addr s) {
        fcn::launch_failing_block_probe(P<float>(y), blocks, threads, fail, S(s));
    }, nogil);
    m.def("cp_async_probe", [](Addr src, Addr out, int bytes, int src_bytes, bool cg, int mode, Addr s) {
        fcn::launch_cp_async_probe(P<const float>(src), P<float>(out), bytes, src_bytes, cg, mode, S(s));
    }, nogil);
    m.def("ldmatrix_probe", [](Addr m_, Addr rows, Addr out, int num, bool trans, Addr s) {
        fcn::launch_ldmatrix_probe(P<const std::uint16_t>(m_), P<const int>(rows), P<std::uint32_t>(out), num, trans,
                                   S(s));
    }, nogil);
    m.def("mma_probe", [](Addr a, Addr b, Addr c, Addr d, int kind, Addr s) {
        fcn::launch_mma_probe(P<const std::uint32_t>(a), P<const std::uint32_t>(b), P<const float>(c), P<float>(d),
                              kind, S(s));
    }, nogil);
    m.def("smem_bank_probe", [](Addr out, int stride, int width, bool store, int repeat, Addr s) {
        fcn::launch_smem_bank_probe(P<float>(out), stride, width, store, repeat, S(s));
    }, nogil);
    m.def("mbarrier_trace_probe", [](Addr out, Addr s) { fcn::launch_mbarrier_trace_probe(P<int>(out), S(s)); }, nogil);
    m.def("mbarrier_pipeline_probe", [](Addr x, Addr y, int rounds, bool consumer_waits, Addr s) {
        fcn::launch_mbarrier_pipeline_probe(P<const float>(x), P<float>(y), rounds, consumer_waits, S(s));
    }, nogil);
    m.def("mbarrier_fault_probe", [](int kind, Addr y, Addr s) { fcn::launch_mbarrier_fault_probe(kind, P<float>(y), S(s)); }, nogil);
    m.def("tma_load_probe", [](Addr global, bool bf16, std::vector<uint64_t> dims, std::vector<uint64_t> strides,
                               std::vector<uint32_t> box, int swizzle, int rank, std::vector<int> coords,
                               unsigned expect_bytes, int dst_offset, unsigned bytes, int fault, Addr out, Addr s) {
        if (dims.size() != box.size() || strides.size() + 1 != dims.size() || coords.size() != 5)
            throw py::value_error("tma_load_probe: dims and box need one entry per dimension, strides one fewer, "
                                  "coords 5");
        py::gil_scoped_release release;
        fcn::launch_tma_load_probe(P<const void>(global), bf16, int(dims.size()), dims.data(), strides.data(),
                                   box.data(), swizzle, rank, coords.data(), expect_bytes, dst_offset, bytes, fault,
                                   P<unsigned char>(out), S(s));
    });
    m.def("tma_ring_probe", [](Addr x, Addr y, int rounds, bool consumer_waits, Addr s) {
        fcn::launch_tma_ring_probe(P<const float>(x), P<float>(y), rounds, consumer_waits, S(s));
    }, nogil);
    m.def("wgmma_probe", [](int n, bool bf16, bool rs, Addr image, int image_bytes, std::array<int, 4> a,
                            std::array<int, 4> b, Addr a_regs, Addr d_init, Addr out, Addr out2, bool accumulate,
                            int mode, int threads, Addr s) {
        fcn::WgmmaProbeArgs args{n, bf16, rs, P<const unsigned char>(image), image_bytes, {a[0], a[1], a[2], a[3]},
                                 {b[0], b[1], b[2], b[3]}, P<const std::uint32_t>(a_regs), P<const float>(d_init),
                                 P<float>(out), P<float>(out2), accumulate, mode, threads};
        fcn::launch_wgmma_probe(args, S(s));
    }, nogil);
    m.def("wgmma_tma_probe", [](Addr a, Addr b, Addr out, bool tma_early, Addr s) {
        fcn::launch_wgmma_tma_probe(P<const float>(a), P<const float>(b), P<float>(out), tma_early, S(s));
    }, nogil);
    m.def("wgmma_descriptor_probe", [](std::array<int, 4> op, Addr out, Addr s) {
        fcn::launch_wgmma_descriptor_probe(op.data(), P<std::uint64_t>(out), S(s));
    }, nogil);

    // ---- scan
    m.def("scan_workspace", &fcn::scan_workspace);
    m.def("exclusive_scan", [](Addr data, int n, Addr ws, Addr total, Addr s) {
        fcn::launch_exclusive_scan(P<int>(data), n, P<int>(ws), P<int>(total), S(s));
    }, nogil);

    // ---- sort
    m.def("sort_pairs_workspace", &fcn::sort_pairs_workspace);
    m.def("sort_pairs", [](Addr keys, Addr vals, Addr keys_alt, Addr vals_alt, Addr ws, int n, int bits, Addr s) {
        return fcn::launch_sort_pairs(P<unsigned long long>(keys), P<int>(vals), P<unsigned long long>(keys_alt),
                                      P<int>(vals_alt), P<int>(ws), n, bits, S(s));
    }, nogil);

    // ---- conv2d
    py::enum_<fcn::WeightType>(m, "WeightType", py::module_local(), "the element type of conv2d's w")
        .value("fp32", fcn::WeightType::fp32)
        .value("bf16", fcn::WeightType::bf16);
    m.def("conv2d", [](const std::string& variant, const fcn::ConvShape& g, Addr x, Addr w, fcn::WeightType wt, Addr b,
                       Addr y, bool relu, Addr s) {
        fcn::launch_conv2d(variant.c_str(), g, P<const float>(x), P<const void>(w), wt, P<const float>(b), P<float>(y),
                           relu, S(s));
    }, nogil);
    m.def("conv2d_relu_maxpool", [](const std::string& variant, const fcn::ConvShape& g, Addr x, Addr w,
                                    fcn::WeightType wt, Addr b, Addr y, Addr s) {
        fcn::launch_conv2d_relu_maxpool(variant.c_str(), g, P<const float>(x), P<const void>(w), wt, P<const float>(b),
                                        P<float>(y), S(s));
    }, nogil);
    m.def("conv2d_split", [](const std::string& variant, const fcn::ConvShape& g, int splits, Addr x, Addr w,
                             fcn::WeightType wt, Addr b, Addr y, Addr workspace, bool relu, Addr s) {
        fcn::launch_conv2d_split(variant.c_str(), g, splits, P<const float>(x), P<const void>(w), wt, P<const float>(b),
                                 P<float>(y), P<float>(workspace), relu, S(s));
    }, nogil);
    m.def("conv2d_wgmma_channels", &fcn::conv2d_wgmma_channels, "C rounded up to the wgmma variants' 32-channel stages");
    m.def("conv2d_wgmma_code_loaded", &fcn::conv2d_wgmma_code_loaded,
          "whether the code loaded for the current GPU is sm_90a's (the wgmma kernels'; always on the host)");
    m.def("conv2d_wgmma", [](const std::string& variant, const fcn::ConvShape& g, int splits, int mode, Addr x, Addr w,
                             Addr b, Addr y, Addr w_reordered, Addr workspace, Addr s) {
        fcn::launch_conv2d_wgmma(variant.c_str(), g, splits, mode, P<const float>(x), P<const float>(w),
                                 P<const float>(b), P<float>(y), P<void>(w_reordered), P<float>(workspace), S(s));
    }, nogil);
    m.def("conv2d_to_bf16", [](Addr w, Addr w_bf16, int n, Addr s) {
        fcn::launch_conv2d_to_bf16(P<const float>(w), P<std::uint16_t>(w_bf16), n, S(s));
    }, nogil);

    // ---- head
    m.def("upsample_argmax", [](const fcn::TransposeShape& t, Addr x, Addr w, Addr labels, Addr probs, Addr s) {
        fcn::launch_upsample_argmax(t, P<const float>(x), P<const float>(w), P<int>(labels), P<float>(probs), S(s));
    }, nogil);

    // ---- pool
    m.def("max_pool2d", [](const fcn::PoolShape& g, Addr x, Addr y, Addr indices, Addr s) {
        fcn::launch_max_pool2d(g, P<const float>(x), P<float>(y), P<int>(indices), S(s));
    }, nogil);

    // ---- upsample
    m.def("conv_transpose2d", [](const std::string& variant, const fcn::TransposeShape& t, Addr x, Addr w, Addr bias,
                                 Addr y, Addr s) {
        fcn::launch_conv_transpose2d(variant.c_str(), t, P<const float>(x), P<const float>(w), P<const float>(bias),
                                     P<float>(y), S(s));
    }, nogil);

    // ---- crop
    m.def("crop_add", [](Addr a, Addr b, Addr out, int planes, int H, int W, int Hb, int Wb, int oy, int ox, Addr s) {
        fcn::launch_crop_add(P<const float>(a), P<const float>(b), P<float>(out), planes, H, W, Hb, Wb, oy, ox, S(s));
    }, nogil);
    m.def("score_crop_add", [](const fcn::ScoreCropShape& g, Addr up, Addr feat, Addr w, Addr bias, Addr out,
                               float scale, Addr s) {
        fcn::launch_score_crop_add(g, P<const float>(up), P<const float>(feat), P<const float>(w), P<const float>(bias),
                                   P<float>(out), scale, S(s));
    }, nogil);

    // ---- softmax
    m.def("softmax_argmax", [](const std::string& variant, Addr x, Addr probs, Addr labels, int N, int C, int HW, Addr s) {
        fcn::launch_softmax_argmax(variant.c_str(), P<const float>(x), P<float>(probs), P<int>(labels), N, C, HW, S(s));
    }, nogil);

    // ---- preprocess
    m.def("preprocess", [](Addr img, Addr out, int N, int HW, float mb, float mg, float mr, Addr s) {
        fcn::launch_preprocess(P<const unsigned char>(img), P<float>(out), N, HW, mb, mg, mr, S(s));
    }, nogil);

    // ---- backward
    m.def("conv2d_grad_input", [](const fcn::ConvShape& g, Addr dy, Addr w, Addr mask, Addr dx, Addr wf, Addr s) {
        fcn::launch_conv2d_grad_input(g, P<const float>(dy), P<const float>(w), P<const float>(mask), P<float>(dx),
                                      P<float>(wf), S(s));
    }, nogil);
    m.def("conv2d_grad_weight_splits", &fcn::conv2d_grad_weight_splits);
    m.def("conv2d_grad_weight", [](const fcn::ConvShape& g, Addr x, Addr dy, Addr mask, Addr dw, Addr ws, float alpha,
                                   Addr s) {
        fcn::launch_conv2d_grad_weight(g, P<const float>(x), P<const float>(dy), P<const float>(mask), P<float>(dw),
                                       P<float>(ws), alpha, S(s));
    }, nogil);
    m.def("bias_grad", [](Addr dy, Addr mask, Addr db, int N, int K, int PQ, Addr s) {
        fcn::launch_bias_grad(P<const float>(dy), P<const float>(mask), P<float>(db), N, K, PQ, S(s));
    }, nogil);
    m.def("relu_backward", [](Addr dy, Addr y, Addr dx, int n, Addr s) {
        fcn::launch_relu_backward(P<const float>(dy), P<const float>(y), P<float>(dx), n, S(s));
    }, nogil);
    m.def("max_pool2d_backward", [](const fcn::PoolShape& g, Addr dy, Addr indices, Addr dx, Addr s) {
        fcn::launch_max_pool2d_backward(g, P<const float>(dy), P<const int>(indices), P<float>(dx), S(s));
    }, nogil);
    m.def("crop_backward", [](Addr g, Addr db, int planes, int H, int W, int Hb, int Wb, int oy, int ox, Addr s) {
        fcn::launch_crop_backward(P<const float>(g), P<float>(db), planes, H, W, Hb, Wb, oy, ox, S(s));
    }, nogil);
    m.def("score_feat_grad", [](const fcn::ScoreCropShape& g, Addr grad_out, Addr w, Addr dfeat, float scale, Addr s) {
        fcn::launch_score_feat_grad(g, P<const float>(grad_out), P<const float>(w), P<float>(dfeat), scale, S(s));
    }, nogil);
    m.def("softmax_xent_workspace", &fcn::softmax_xent_workspace);
    m.def("softmax_xent", [](Addr scores, Addr labels, Addr weight, Addr grad, Addr ws, Addr loss, int N, int C, int HW,
                             int ignore, float inv_divisor, Addr s) {
        fcn::launch_softmax_xent(P<const float>(scores), P<const int>(labels), P<const float>(weight), P<float>(grad),
                                 P<float>(ws), P<float>(loss), N, C, HW, ignore, inv_divisor, S(s));
    }, nogil);
    m.def("dropout", [](Addr x, Addr y, int n, unsigned long long offset, unsigned seed, unsigned step,
                        unsigned threshold, float scale, Addr s) {
        fcn::launch_dropout(P<const float>(x), P<float>(y), n, offset, seed, step, threshold, scale, S(s));
    }, nogil);
    m.def("philox_probe", [](Addr in, Addr out, int n, Addr s) {
        fcn::launch_philox_probe(P<const unsigned>(in), P<unsigned>(out), n, S(s));
    }, nogil);
    m.def("sgd_step", [](Addr w, Addr g, Addr v, int n, float lr, float momentum, float weight_decay, Addr s) {
        fcn::launch_sgd_step(P<float>(w), P<const float>(g), P<float>(v), n, lr, momentum, weight_decay, S(s));
    }, nogil);

    // ---- crf (dense CRF; fcn_cuda/crf.py drives these in order)
    m.def("crf_key_bits", [](int d, int H, int W, float sxy, float srgb) {
        bool fits = false;
        const int bits = fcn::crf_key_bits(d, H, W, sxy, srgb, &fits);
        return py::make_tuple(bits, fits);
    });
    py::class_<fcn::CrfTermShape>(m, "CrfTermShape", py::module_local(),
                                  "one CRF term over an H x W image: d features (2: x, y; 5: and R, G, B), their "
                                  "scales, P lattice points (H*W, or H*W + 1 with pydensecrf's padding point)")
        .def(py::init([](int d, int H, int W, int P_, float sxy, float srgb) {
            if (d != 2 && d != 5) throw py::value_error("CrfTermShape: d must be 2 or 5");
            if (H < 1 || W < 1 || (long long)H * W + 1 > 2147483647LL)
                throw py::value_error("CrfTermShape: H and W must be >= 1, H*W + 1 within int");
            if (P_ != H * W && P_ != H * W + 1) throw py::value_error("CrfTermShape: P must be H*W or H*W + 1");
            if (!(sxy > 0.f) || !(srgb > 0.f)) throw py::value_error("CrfTermShape: sxy and srgb must be > 0");
            return fcn::CrfTermShape{d, H, W, P_, sxy, srgb};
        }), py::arg("d"), py::arg("H"), py::arg("W"), py::arg("P"), py::arg("sxy"), py::arg("srgb"))
        .def_readonly("d", &fcn::CrfTermShape::d).def_readonly("H", &fcn::CrfTermShape::H)
        .def_readonly("W", &fcn::CrfTermShape::W).def_readonly("P", &fcn::CrfTermShape::P)
        .def_readonly("sxy", &fcn::CrfTermShape::sxy).def_readonly("srgb", &fcn::CrfTermShape::srgb);
    // A built lattice: its term's sizes, M vertices and the addresses of its tables, which the caller keeps
    // alive as long as the view (fcn_cuda/crf.py's _Lattice holds both).
    py::class_<fcn::CrfLatticeView>(m, "CrfLatticeView", py::module_local())
        .def(py::init([](const fcn::CrfTermShape& t, int M, Addr bary, Addr vertex_of, Addr vertex_start,
                         Addr splat_pixel, Addr splat_weight, Addr neighbours) {
            if (M < 1) throw py::value_error("CrfLatticeView: M must be >= 1");
            return fcn::CrfLatticeView{t.d, t.H * t.W, t.P, M, P<const float>(bary), P<const int>(vertex_of),
                                       P<const int>(vertex_start), P<const int>(splat_pixel),
                                       P<const float>(splat_weight), P<const int>(neighbours)};
        }), py::arg("term"), py::arg("M"), py::arg("bary"), py::arg("vertex_of"), py::arg("vertex_start"),
            py::arg("splat_pixel"), py::arg("splat_weight"), py::arg("neighbours"))
        .def_readonly("M", &fcn::CrfLatticeView::M);
    m.def("crf_lattice_points", [](const fcn::CrfTermShape& t, Addr img, Addr bary, Addr keys, Addr entries, Addr s) {
        fcn::launch_crf_lattice_points(t, P<const unsigned char>(img), P<float>(bary), P<unsigned long long>(keys),
                                       P<int>(entries), S(s));
    }, nogil);
    m.def("crf_vertex_count", [](Addr keys, int n, Addr first, Addr ws, Addr count, Addr s) {
        fcn::launch_crf_vertex_count(P<const unsigned long long>(keys), n, P<int>(first), P<int>(ws), P<int>(count),
                                     S(s));
    }, nogil);
    m.def("crf_lattice_tables", [](const fcn::CrfTermShape& t, Addr keys, Addr entries, Addr first, int M, Addr bary,
                                   Addr vertex_start, Addr vertex_keys, Addr vertex_of, Addr splat_pixel,
                                   Addr splat_weight, Addr neighbours, Addr s) {
        fcn::launch_crf_lattice_tables(t, P<const unsigned long long>(keys), P<const int>(entries), P<const int>(first),
                                       M, P<const float>(bary), P<int>(vertex_start), P<unsigned long long>(vertex_keys),
                                       P<int>(vertex_of), P<int>(splat_pixel), P<float>(splat_weight),
                                       P<int>(neighbours), S(s));
    }, nogil);
    m.def("crf_lattice_norm", [](const fcn::CrfLatticeView& L, Addr a, Addr b, Addr norm, Addr s) {
        fcn::launch_crf_lattice_norm(L, P<float>(a), P<float>(b), P<float>(norm), S(s));
    }, nogil);
    m.def("crf_lattice_message", [](const fcn::CrfLatticeView& L, Addr norm, Addr Q, int V, float compat, Addr a, Addr b,
                                    Addr t_in, Addr t_out, Addr s) {
        fcn::launch_crf_lattice_message(L, P<const float>(norm), P<const float>(Q), V, compat, P<float>(a), P<float>(b),
                                        P<const float>(t_in), P<float>(t_out), S(s));
    }, nogil);
    m.def("crf_unary", [](Addr probs, int N, int C, int V, Addr t0, Addr Q, Addr s) {
        fcn::launch_crf_unary(P<const float>(probs), N, C, V, P<float>(t0), P<float>(Q), S(s));
    }, nogil);
    m.def("crf_math_probe", [](Addr x, Addr y, int n, bool log, Addr s) {
        fcn::launch_crf_math_probe(P<const float>(x), P<float>(y), n, log, S(s));
    }, nogil);
    m.def("crf_softmax", [](Addr t, int N, int C, int V, Addr Q, Addr out, Addr s) {
        fcn::launch_crf_softmax(P<const float>(t), N, C, V, P<float>(Q), P<float>(out), S(s));
    }, nogil);
    m.def("crf_naive_setup", [](Addr img, int H, int W, int d, float sxy, float srgb, Addr f, Addr norm, Addr s) {
        fcn::launch_crf_naive_setup(P<const unsigned char>(img), H, W, d, sxy, srgb, P<float>(f), P<float>(norm), S(s));
    }, nogil);
    m.def("crf_naive_message", [](Addr f, Addr norm, int d, int N, Addr Q, int C, int V, float compat, Addr t_in,
                                  Addr t_out, Addr s) {
        fcn::launch_crf_naive_message(P<const float>(f), P<const float>(norm), d, N, P<const float>(Q), C, V, compat,
                                      P<const float>(t_in), P<float>(t_out), S(s));
    }, nogil);
}
