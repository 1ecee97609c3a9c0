"""The bank-conflict counter on the real kernels (host emulation).

Every kernel that uses shared memory reads and writes it through
fcn::smem_load / smem_store (or ldmatrix, cp.async, wmma), so the counter
(csrc/emu/smem.h) sees all of it. Here: a few kernels' exact counts on tiny
launches, worked out by hand from their access patterns (32 banks of 4-byte
words; a warp-wide access of 4 bytes is one phase, of 16 bytes four
quarter-warp phases; a phase costs the most distinct words any one bank
holds, the same word being a broadcast), and a check that every kernel
whose source declares shared memory is launched here and reports accesses,
so a kernel left uncounted fails.

A new kernel with shared memory gets a row in SHARED_MEMORY_KERNELS.
"""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

import fcn_cuda
from fcn_cuda import ops
from fcn_cuda.ops import gemm, metrics, reduce, scan

pytestmark = pytest.mark.kernels

ROOT = Path(__file__).resolve().parents[2]


def check(kernel, accesses, wavefronts, ideal, max_way, at=None):
    """kernel's "shared" counts are these; its worst access was made on a
    source line that contains `at` (None: there is no conflict to place)."""
    got = dict(fcn_cuda.emulator_counters()[kernel]["shared"])
    where = got.pop("worst_at")
    assert got == {"accesses": accesses, "wavefronts": wavefronts, "ideal": ideal, "conflicts": wavefronts - ideal,
                   "max_way": max_way}
    if at is None:
        assert where is None
    else:
        path, line = where.rsplit(":", 1)
        assert at in (ROOT / path).read_text().splitlines()[int(line) - 1], where


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


# ------------------------------------------------------------ exact counts, by hand


def test_sgemm_tiled_transposed_a_store_is_16_way(counting):
    """One 64 x 64 tile, K = 16: one stage of 256 threads (8 warps).
    As[k][r] stores (4 per thread): lane l of warp w in round j writes
      r = 16 j + 2 w + l // 16, k = l % 16, word 64 k + r: lanes 0-15 all in
      bank r, 16 distinct words: 16-way; lanes 16-31 likewise in bank r + 1.
      32 accesses x 16 wavefronts.
    Bs[k][c] stores: 32 consecutive words per warp: 32 x 1.
    As[k][4 ty + i] loads (16 k x 4 i per warp): half-warps read one word
      each (a broadcast), in two banks: 512 x 1.
    Bs[k][4 tx + j] loads: lanes tx = 0..15 read words 4 tx + j, so tx and
      tx + 8 share a bank (the other half-warp reads the same words): 512 x 2.
    """
    a, b = rand(64, 16), rand(16, 64, seed=1)
    np.testing.assert_allclose(gemm.gemm(a, b, "tiled"), a @ b, rtol=1e-5, atol=1e-5)
    check("sgemm_tiled", 32 + 32 + 512 + 512, 32 * 16 + 32 + 512 + 512 * 2, 1088, 16, at="smem_store(&As[k][r]")


# block_tree_sum over 256 threads, per block: the store s[t] (8 warps), the
# halving tree (strides 128, 64, 32: 4, 2, 1 warps; 16 .. 1: warp 0, five
# times), each step two loads and a store, and the load of s[t] (8 warps).
TREE_STEPS = 3 * (4 + 2 + 1 + 5)  # 36 warp accesses


def test_block_sum_tree_is_conflict_free(counting):
    """One block of partials (n = 256) and the final block: each a
    block_tree_sum, 8 + 36 + 8 warp accesses of consecutive words (or fewer
    lanes of them), one wavefront each."""
    x = np.arange(256, dtype=np.float32)
    assert np.asarray(reduce.block_sum(x)).item() == float(x.sum())
    per_block = 8 + TREE_STEPS + 8
    check("block_sum", 2 * per_block, 2 * per_block, 2 * per_block, 1)


def test_bias_grad_tree_is_conflict_free(counting):
    """K = 3 blocks, each: the store s[t], the tree, and thread 0's load of s[0]."""
    dy = rand(2, 3, 5, 7)
    np.testing.assert_allclose(ops.bias_grad(dy), dy.sum((0, 2, 3)), rtol=1e-5)
    per_block = 8 + TREE_STEPS + 1
    check("bias_grad", 3 * per_block, 3 * per_block, 3 * per_block, 1)


def test_scan_block_warp_sums_are_broadcasts(counting):
    """Lane 31 of each of the 8 warps stores its warp's sum (8 accesses of
    one lane); then every warp reads all 8 sums, each read one word for the
    whole warp (a broadcast): 64 accesses, one wavefront each."""
    counts = np.arange(1000, dtype=np.int32) % 7
    got, total = scan.exclusive_scan(counts)
    np.testing.assert_array_equal(got, np.concatenate([[0], np.cumsum(counts)[:-1]]))
    assert int(total[0]) == int(counts.sum())
    check("scan_block", 8 + 64, 8 + 64, 8 + 64, 1)


def test_conv2d_small_c_weights_are_broadcast(counting):
    """x 1 x 3 x 8 x 8, w 8 x 3 x 3 x 3, padding 1: kTaps = 32, 64 pixels,
    one block of 256 threads.
    ws stores: 64 x 32 floats, 8 rounds of 32 consecutive words per warp: 64 x 1.
    bs stores: threads 0-63 (2 warps): 2 x 1.
    Threads 64-255 have no pixel and leave; no window lies in the padding,
    so warps 0 and 1 each take 2 rounds of 4 channels: 4 bias loads (every
    lane the same word: 1 wavefront) and 4 x 8 float4 loads of ws, every lane
    the same 16 bytes: 4 quarter-warp phases of one wavefront each.
    2 warps x 2 rounds x (4 + 32) = 144 accesses, 2 x 2 x (4 + 32 x 4) = 528 wavefronts."""
    x, w = rand(1, 3, 8, 8), rand(8, 3, 3, 3, seed=1)
    ops.conv2d(x, w, None, 1, 1, False, "small_c")
    check("conv2d_small_c", 64 + 2 + 144, 64 + 2 + 528, 64 + 2 + 528, 1)


def test_conv2d_grad_weight_stage_stores_are_4_way(counting):
    """x 1 x 3 x 8 x 8, dy 1 x 8 x 8 x 8, 3x3, padding 1: K = 8 picks the
    8-channel tile (64-pixel stages, kLdK = 12, kGradLd = 68, 8 groups of one
    warp), 64 pixels: one block, one stage. Thread t stages pixel
    lm = t % 64, column lcol = t / 64 (+ 4 i).
    Ds[lm][lcol + 4 i] (2 per thread): lane l of a warp at word 12 l + c,
      12 l mod 32 repeats every 8 lanes: 8 banks of 4 distinct words, 4-way:
      16 accesses x 4.
    Xs[lm][lcol + 4 i] (16 per thread): word 68 l + c, 68 l mod 32 = 4 l mod
      32, again 4-way: 128 x 4.
    The float4 loads (8 pixels per warp, one of Ds and one of Xs each): a
      quarter-warp reads 2 (Ds) or 4 (Xs) consecutive float4s: 128 x 4 phases
      of one wavefront.
    The group reduction: 16 stores per warp of consecutive words (128 x 1),
      then warp 0 loads the 7 other groups' 16 (112 x 1)."""
    x, dy = rand(1, 3, 8, 8), rand(1, 8, 8, 8, seed=1)
    ops.conv2d_grad_weight(x, dy, 3, 1, 1)
    accesses = 16 + 128 + 128 + 128 + 112
    wavefronts = 16 * 4 + 128 * 4 + 128 * 4 + 128 + 112
    ideal = 16 + 128 + 128 * 4 + 128 + 112
    check("conv2d_grad_weight_igemm<8>", accesses, wavefronts, ideal, 4, at="smem_store(&Ds[stage][lm]")


def test_confusion_matrix_counts_its_plain_accesses(counting):
    """C = 4, 200 pixels: one block. Its 16 cells are zeroed by lanes 0-15
    of warp 0 and read back by them: 2 accesses of 16 consecutive words. The
    shared atomicAdds in between are not counted."""
    gt = np.arange(200, dtype=np.int32) % 4
    hist = metrics.confusion_matrix(gt, gt[::-1].copy(), 4)
    assert int(np.asarray(hist).sum()) == 200
    check("confusion_matrix", 2, 2, 2, 1)


# ------------------------------------------------------- every kernel is counted


def _conv(k, variant, bf16_weights=False):
    x, w = rand(1, 4, 9, 9), rand(k, 4, 3, 3, seed=1)
    if bf16_weights:
        w = ops.to_bf16_weights(w)
    return lambda: ops.conv2d(x, w, rand(k, seed=2), 1, 1, True, variant)


def _conv_mma(variant, splits, bf16_weights=False):
    """splits 1: the 64 x 64 tile; 132: the 128 x 128 one (conv2d_mma_tile), one block per split."""
    x, w = rand(1, 240, 3, 3), rand(72, 240, 3, 3, seed=1)
    if bf16_weights:
        w = ops.to_bf16_weights(w)
    return lambda: ops.conv2d(x, w, None, 1, 1, True, variant, splits)


def _conv_wgmma(variant):
    x, w = rand(1, 8, 9, 8), rand(16, 8, 3, 3, seed=1)  # a width of 8: TMA reads rows of 16-byte multiples
    return lambda: ops.conv2d(x, w, rand(16, seed=2), 1, 1, True, variant)


def _conv_small_c(c, r):
    x, w = rand(1, c, 6, 6), rand(5, c, r, r, seed=1)
    return lambda: ops.conv2d(x, w, None, 1, r // 2, False, "small_c")


def _grad_weight(k, masked):
    x, dy = rand(1, 3, 6, 6), rand(1, k, 6, 6, seed=1)
    relu_y = np.maximum(rand(1, k, 6, 6, seed=2), 0) if masked else None
    return lambda: ops.conv2d_grad_weight(x, dy, 3, 1, 1, relu_y)


def _loss():
    scores, labels = rand(1, 3, 4, 5), (np.arange(20, dtype=np.int32) % 3).reshape(1, 4, 5)
    return lambda: ops.softmax_cross_entropy(scores, labels)


def _gemm(variant):
    a, b = rand(20, 24), rand(24, 18, seed=1)
    return lambda: gemm.gemm(a, b, variant)


# __global__ function -> [(the name its launch gives, a call that launches it)]: every
# template instance the launchers can pick.
SHARED_MEMORY_KERNELS = {
    "conv2d_igemm": [("conv2d_igemm", _conv(k, "igemm")) for k in (16, 32, 64)],
    "conv2d_igemm_wmma": [("conv2d_igemm_tf32", _conv(16, "igemm_tf32")),
                          ("conv2d_igemm_bf16", _conv(16, "igemm_bf16")),
                          ("conv2d_igemm_bf16w", _conv(16, "igemm_bf16", bf16_weights=True))],
    "conv2d_mma": [(f"conv2d_{v}", _conv_mma(v, splits)) for v in ("mma_tf32", "mma_bf16") for splits in (1, 132)]
                  + [("conv2d_mma_bf16w", _conv_mma("mma_bf16", splits, True)) for splits in (1, 132)],
    "conv2d_wgmma": [(f"conv2d_{v}", _conv_wgmma(v)) for v in ("wgmma_tf32", "wgmma_bf16")],
    "conv2d_small_c": [("conv2d_small_c", _conv_small_c(c, r)) for c, r in ((1, 1), (1, 3), (3, 3), (6, 3))],
    "conv2d_grad_weight_igemm": [(f"conv2d_grad_weight_igemm<{k}{',masked' if m else ''}>", _grad_weight(k, m))
                                 for k in (8, 16, 32, 64) for m in (False, True)],
    "bias_grad": [("bias_grad", _grad_weight(8, False)), ("bias_grad<masked>", _grad_weight(8, True))],
    "sgemm_tiled": [("sgemm_tiled", _gemm("tiled"))],
    "gemm_wmma": [(f"gemm_wmma<{t}>", _gemm(f"wmma_{t}")) for t in ("tf32", "f16", "bf16")],
    "softmax_xent": [("softmax_xent", _loss())],
    "block_sum": [("block_sum", lambda: reduce.block_sum(rand(300)))],
    "scan_block": [("scan_block", lambda: scan.exclusive_scan(np.ones(100, np.int32)))],
    "confusion_matrix": [("confusion_matrix", lambda: metrics.confusion_matrix(np.zeros(9, np.int32),
                                                                          np.zeros(9, np.int32), 3))],
}
# The instruction probes test the emulator itself (some make plain accesses on purpose), and
# the PTX wrappers are not kernels.
NOT_KERNELS = re.compile(r"^(probes|ptx_).*\.cuh$")
# The conv2d_mma launches and the kinds of access each makes: mma_tf32's shared memory only
# instructions touch (cp.async writes, ldmatrix reads); mma_bf16 stores x (and fp32 w) from
# registers, and with bf16 weights copies w by cp.async.
MMA_KINDS = {"conv2d_mma_tf32": {"cp.async", "ldmatrix"}, "conv2d_mma_bf16": {"shared", "ldmatrix"},
             "conv2d_mma_bf16w": {"shared", "ldmatrix", "cp.async"}}


def kernels_with_shared_memory():
    """The __global__ functions of csrc/kernels whose body declares shared memory."""
    found = set()
    for path in sorted((ROOT / "csrc" / "kernels").glob("*.cuh")):
        if NOT_KERNELS.match(path.name):
            continue
        text = path.read_text()
        for m in re.finditer(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(", text):
            depth, i = 0, text.index("{", m.end())
            for j in range(i, len(text)):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    break
            if re.search(r"__shared__|FCN_DYNAMIC_SMEM", text[i:j]):
                found.add(m.group(1))
    return found


def test_every_kernel_with_shared_memory_is_listed():
    found = kernels_with_shared_memory()
    assert "sgemm_tiled" in found and "block_sum" in found  # the scan itself works
    assert found == set(SHARED_MEMORY_KERNELS), (
        "kernels that declare shared memory must be listed in SHARED_MEMORY_KERNELS (and counted): "
        f"missing {sorted(found - set(SHARED_MEMORY_KERNELS))}, stale {sorted(set(SHARED_MEMORY_KERNELS) - found)}")


def shared_names(text):
    """The names a kernel file gives its shared memory: __shared__ arrays,
    FCN_DYNAMIC_SMEM pointers, and pointers made from them (`auto Ds =
    reinterpret_cast<...>(smem)`, `const float4* a4 = as_vector<...>(&As[..])`)."""
    names = set(re.findall(r"__shared__[^;]*?\b(\w+)\s*\[", text))
    names |= set(re.findall(r"FCN_DYNAMIC_SMEM\(\s*\w+\s*,\s*(\w+)\s*\)", text))
    pointers = re.findall(r"(?:\bauto\*?|\*)\s*(\w+)\s*=\s*([^;]*);", text)
    while True:
        more = {p for p, rhs in pointers if p not in names and any(re.search(rf"\b{n}\b", rhs) for n in names)}
        if not more:
            return names
        names |= more


def test_no_plain_shared_memory_access():
    """No kernel indexes its shared memory directly (`As[k][r] = v`), which
    the counter would not see: an index follows `&`, inside smem_load /
    smem_store or an instruction wrapper."""
    plain, seen = [], set()
    for path in sorted((ROOT / "csrc" / "kernels").glob("*.cuh")):
        if NOT_KERNELS.match(path.name):
            continue
        text = path.read_text()
        names = shared_names(text)
        seen |= names
        for no, line in enumerate(text.splitlines(), 1):
            code = line.split("//")[0]
            if "__shared__" in code:
                continue
            for n in names:
                if re.search(rf"(?<![&\w.]){n}\s*\[", code):
                    plain.append(f"{path.name}:{no}: {line.strip()}")
    assert {"As", "Bs", "Cs", "Ds", "Xs", "red", "ws4", "a4", "local", "warp_sums"} <= seen  # the scan finds them
    assert not plain, "plain shared-memory accesses, invisible to the counter:\n" + "\n".join(plain)


CASES = [(fn, name, run) for fn, runs in SHARED_MEMORY_KERNELS.items() for name, run in runs]


@pytest.mark.parametrize("function,name,run", CASES, ids=[f"{name}-{i}" for i, (_, name, _) in enumerate(CASES)])
def test_every_kernel_with_shared_memory_is_counted(counting, function, name, run):
    run()
    counters = fcn_cuda.emulator_counters()
    assert name in counters, f"{function}: no shared-memory access of {name} was counted (launched: {sorted(counters)})"
    for kind, c in counters[name].items():
        assert c["accesses"] > 0 and c["ideal"] > 0 and c["wavefronts"] >= c["ideal"], (name, kind, c)
        assert 1 <= c["max_way"] <= 32, (name, kind, c)
    if name in MMA_KINDS:
        assert set(counters[name]) == MMA_KINDS[name], (name, counters[name])
        return
    # The plain loads and stores are there too, not only wmma's or an instruction's.
    assert counters[name].get("shared", {}).get("accesses", 0) > 0, (name, counters[name])


@pytest.mark.model_scale  # a VGG layer per conv variant; the cases above launch every kernel small
def test_the_benchmark_reports_every_kernel(counting):
    """benchmarks/emu_bank_conflicts.py has a row for some launch of every
    function listed above, each with its counts."""
    spec = importlib.util.spec_from_file_location("emu_bank_conflicts", ROOT / "benchmarks" / "emu_bank_conflicts.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.table()
    kernels = {row["kernel"] for row in rows}
    for function, launches in SHARED_MEMORY_KERNELS.items():
        assert kernels & {name for name, _ in launches}, f"benchmarks/emu_bank_conflicts.py runs no {function}"
    assert len(rows) == len({(row["kernel"], row["kind"]) for row in rows})  # one row per kernel and kind
    assert all(row["accesses"] > 0 and row["wavefronts"] >= row["ideal"] > 0 for row in rows)
