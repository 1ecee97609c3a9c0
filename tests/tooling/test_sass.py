"""The nvcc build compiles the Ampere wrappers (csrc/kernels/ptx_sm80.cuh)
into the instructions they name: the SASS of the probe kernels, read with
cuobjdump, holds LDGSTS (cp.async: .ZFILL for src-size, .BYPASS for .cg,
LDGDEPBAR and DEPBAR for commit and wait), LDSM (ldmatrix: .M88 / .MT88
for .trans, .2 / .4 for .x2 / .x4) and HMMA (mma.sync: 1688 TF32 and 16816
BF16); and the Hopper wrappers (ptx_sm90.cuh) into SYNCS, the mbarrier
unit (init: EXCH; arrive: ARRIVE.TRANS64, .A1T0 for a count of 1, .ART0 with
expect_tx; expect_tx / complete_tx: ARRIVE.TRANS64.RED.A0TX; test_wait:
PHASECHK.TRANS64; try_wait: PHASECHK.TRANS64.TRYWAIT), the TMA
wrappers into UTMALDG (cp.async.bulk.tensor: .2D .. .5D), UTMACCTL.PF
(prefetch.tensormap) and FENCE.VIEW.ASYNC.S (fence.proxy.async.shared::cta),
and the wgmma wrappers (ptx_wgmma.cuh) of an sm_90a build into
HGMMA.64xNx8.F32.TF32 and HGMMA.64xNx16.F32.BF16 for every N and both forms,
WARPGROUP.ARRIVE (the fence) and WARPGROUP.DEPBAR.LE (the wait).
The conv2d_mma kernels (both block tiles) hold LDSM.16.M88.4 and HMMA, and no spills (ptxas's report of
the same build); mma_tf32 stages by LDGSTS (4-byte gathers and 16-byte zero-filled weight copies),
mma_bf16 through registers (LDG, F2FP.BF16.F32.PACK_AB, STS; no LDGSTS on fp32 weights) and, on bf16
weights, the weights by LDGSTS.E.128.ZFILL.
The conv2d_wgmma kernels (wgmma_tf32,
wgmma_bf16) hold HGMMA with WARPGROUP.ARRIVE / DEPBAR, UTMALDG (4-D boxes
of x, 3-D of the filters) and SYNCS in their sm_90a code, and no spills.

Needs cuobjdump on PATH (pip install --target DIR nvidia-cuda-cuobjdump and
nvidia-cuda-nvdisasm, then both DIR/nvidia/cu13/bin on PATH; .ci/run does)
and the nvcc build; skips only where either is absent.
"""

import functools
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import fcn_cuda

CUDA_SO = sorted(Path(fcn_cuda.__file__).parent.glob("_cuda*.so"))

pytestmark = [
    pytest.mark.skipif(shutil.which("cuobjdump") is None, reason="cuobjdump is not on PATH"),
    pytest.mark.skipif(not CUDA_SO, reason="fcn_cuda._cuda (the nvcc build) is not built"),
]

# kernel (mangled name) -> the SASS opcodes its wrappers must compile to
EXPECTED = {
    "_ZN3fcn14cp_async_probeEPKfPfiiii": {"LDGSTS.E.ZFILL", "LDGSTS.E.64.ZFILL", "LDGSTS.E.128.ZFILL",
                                          "LDGSTS.E.BYPASS.128.ZFILL", "LDGDEPBAR", "DEPBAR.LE"},
    "_ZN3fcn14ldmatrix_probeEPKtPKiPjii": {"LDSM.16.M88", "LDSM.16.M88.2", "LDSM.16.M88.4", "LDSM.16.MT88",
                                           "LDSM.16.MT88.2", "LDSM.16.MT88.4"},
    "_ZN3fcn9mma_probeEPKjS1_PKfPfi": {"HMMA.1688.F32.TF32", "HMMA.16816.F32.BF16"},
    # sm_90: the mbarrier wrappers (ptx_sm90.cuh) in the probe that uses each one
    "_ZN3fcn20mbarrier_trace_probeEPi": {"SYNCS.EXCH.64", "SYNCS.ARRIVE.TRANS64", "SYNCS.ARRIVE.TRANS64.A1T0",
                                         "SYNCS.ARRIVE.TRANS64.ART0", "SYNCS.ARRIVE.TRANS64.RED.A0TX",
                                         "SYNCS.PHASECHK.TRANS64", "SYNCS.PHASECHK.TRANS64.TRYWAIT"},
    # the TMA wrappers: every rank, the prefetch and the proxy fence; the ring's loads complete on its barriers
    "_ZN3fcn14tma_load_probeE14CUtensorMap_stiiiiiijijiPh": {"UTMALDG.2D", "UTMALDG.3D", "UTMALDG.4D", "UTMALDG.5D",
                                                            "UTMACCTL.PF", "FENCE.VIEW.ASYNC.S", "SYNCS.EXCH.64",
                                                            "SYNCS.PHASECHK.TRANS64.TRYWAIT"},
    "_ZN3fcn14tma_ring_probeE14CUtensorMap_stPfib": {"UTMALDG.2D", "FENCE.VIEW.ASYNC.S", "SYNCS.ARRIVE.TRANS64.A1T0",
                                                    "SYNCS.PHASECHK.TRANS64.TRYWAIT"},
}
# The Ampere conv2d rung (conv2d_mma.cuh): conv2d_mma<bf16?, tile, tile, weight type>.
MMA_MANGLED = {"tf32": "_ZN3fcn10conv2d_mmaILb0ELi{0}ELi{0}EfEEvPKfPKT2_S2_PfNS_9ConvShapeEi",
               "bf16": "_ZN3fcn10conv2d_mmaILb1ELi{0}ELi{0}EfEEvPKfPKT2_S2_PfNS_9ConvShapeEi",
               "bf16w": "_ZN3fcn10conv2d_mmaILb1ELi{0}ELi{0}E13__nv_bfloat16EEvPKfPKT2_S3_PfNS_9ConvShapeEi"}
MMA_OPS = {"tf32": {"LDGSTS.E", "LDGSTS.E.128.ZFILL", "LDGDEPBAR", "DEPBAR.LE", "LDSM.16.M88.4", "HMMA.1688.F32.TF32"},
           "bf16": {"LDG.E.CONSTANT", "F2FP.BF16.F32.PACK_AB", "STS", "LDSM.16.M88.4", "HMMA.16816.F32.BF16"},
           "bf16w": {"LDG.E.CONSTANT", "F2FP.BF16.F32.PACK_AB", "STS", "LDGSTS.E.128.ZFILL", "LDGDEPBAR", "DEPBAR.LE",
                     "LDSM.16.M88.4", "HMMA.16816.F32.BF16"}}
MMA_CONV = {name.format(tile): MMA_OPS[v] for v, name in MMA_MANGLED.items() for tile in (64, 128)}
EXPECTED.update(MMA_CONV)
OPCODE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.x]+)")  # x: HGMMA's 64xNxK


def sass_opcodes(kernel):
    proc = subprocess.run(["cuobjdump", "-sass", "-fun", kernel, str(CUDA_SO[0])], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"Function : {kernel}" in proc.stdout, f"{kernel} is not in {CUDA_SO[0].name}"
    return set(OPCODE.findall(proc.stdout))


@pytest.mark.parametrize("kernel", list(EXPECTED))
def test_wrappers_compile_to_their_instructions(kernel):
    missing = EXPECTED[kernel] - sass_opcodes(kernel)
    assert not missing, f"{kernel}: no {sorted(missing)} in its SASS"


@pytest.mark.parametrize("tile", [64, 128])
def test_mma_bf16_stages_through_registers(tile):
    """mma_bf16 converts x (and fp32 w) on the way into shared memory: no cp.async of them."""
    assert not {op for op in sass_opcodes(MMA_MANGLED["bf16"].format(tile)) if op.startswith("LDGSTS")}
    assert "LDGSTS.E" not in sass_opcodes(MMA_MANGLED["bf16w"].format(tile))  # x: no 4-byte gathers


def test_the_opcode_pattern_reads_sass():
    line = "        /*0120*/                   LDGSTS.E.128.ZFILL [R5], desc[UR4][R2.64], P0 ;  /* 0x... */"
    assert OPCODE.findall(line) == ["LDGSTS.E.128.ZFILL"]
    assert OPCODE.findall("        /*0200*/              @!P0 HMMA.1688.F32.TF32 R4, R8, R12, R4 ;") == \
        ["HMMA.1688.F32.TF32"]
    assert OPCODE.findall("        /*1490*/         HGMMA.64x256x8.F32.TF32 R24, gdesc[UR4], R24, UP0, gsb0 ;") == \
        ["HGMMA.64x256x8.F32.TF32"]


WGMMA_PROBES = {
    f"_ZN3fcn11wgmma_probeILi{n}ELb{bf16}ELb{rs}EEEvPKhiNS_17WgmmaProbeOperandES3_PKjPKfPfS8_bi":
    {f"HGMMA.64x{n}x16.F32.BF16" if bf16 else f"HGMMA.64x{n}x8.F32.TF32", "WARPGROUP.ARRIVE", "WARPGROUP.DEPBAR.LE"}
    for n in (8, 16, 32, 64, 128, 256) for bf16 in (0, 1) for rs in (0, 1)}


@functools.lru_cache(maxsize=None)
def has_sm90a_cubin():
    proc = subprocess.run(["cuobjdump", "-lelf", str(CUDA_SO[0])], capture_output=True, text=True, timeout=300)
    return "sm_90a" in proc.stdout


def check_sm90a_sass(kernel, expected):
    """Every opcode of `expected` is in `kernel`'s sm_90a SASS (skips where the build has none)."""
    if not has_sm90a_cubin():
        pytest.skip("the nvcc build has no sm_90a cubin (wgmma needs it: FCN_CUDA_ARCH naming 90a)")
    missing = expected - sass_opcodes(kernel)
    assert not missing, f"{kernel}: no {sorted(missing)} in its SASS"


@pytest.mark.parametrize("kernel", list(WGMMA_PROBES))
def test_wgmma_wrappers_compile_to_hgmma(kernel):
    check_sm90a_sass(kernel, WGMMA_PROBES[kernel])


# The Hopper conv2d rung (conv2d_wgmma.cuh), in its sm_90a code: wgmma with A from registers (its
# fence and wait), TMA loads of x (4-D) and of the reordered filters (3-D), the mbarrier ring.
WGMMA_CONV = {f"_ZN3fcn12conv2d_wgmmaI{t}EEv14CUtensorMap_stS{s}_PKfPfNS_9ConvShapeEi":
              {mma, "UTMALDG.4D", "UTMALDG.3D", "SYNCS.EXCH.64", "SYNCS.ARRIVE.TRANS64", "SYNCS.ARRIVE.TRANS64.A1T0",
               "SYNCS.PHASECHK.TRANS64.TRYWAIT", "WARPGROUP.ARRIVE", "WARPGROUP.DEPBAR.LE"}
              for t, s, mma in (("N6nvcuda4wmma9precision4tf32E", "5", "HGMMA.64x128x8.F32.TF32"),
                                ("13__nv_bfloat16", "2", "HGMMA.64x128x16.F32.BF16"))}


@pytest.mark.parametrize("kernel", list(WGMMA_CONV))
def test_wgmma_conv_compiles_to_hgmma_utmaldg_syncs(kernel):
    check_sm90a_sass(kernel, WGMMA_CONV[kernel])


@pytest.mark.parametrize("kernel", [*MMA_CONV, *WGMMA_CONV])
def test_mma_conv_kernels_do_not_spill(kernel):
    report = Path(fcn_cuda.__file__).parent.parent / "build" / "ptxas_report.txt"
    if not report.is_file():
        pytest.skip("no build/ptxas_report.txt (the nvcc build writes it)")
    blocks = report.read_text().split("Compiling entry function ")
    mine = [b for b in blocks if b.startswith(f"'{kernel}'")]
    assert mine, f"{kernel} is not in {report}"
    for block in mine:
        assert "0 bytes spill stores, 0 bytes spill loads" in block, block[:600]
