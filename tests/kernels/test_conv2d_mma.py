"""The Ampere tensor-core conv2d variants (mma_tf32, mma_bf16:
csrc/kernels/conv2d_mma.cuh) beyond what test_conv2d_tensorcore.py runs on
every tensor-core variant (FCN's layers, rounding, fuzzing, bad input) and
test_conv2d.py, test_conv2d_splitk.py and test_conv2d_pool.py on every
variant, split and fused one: both block tiles (128 x 128 only appears with
132 or more blocks, so those shapes are wide, or split), FCN's paddings 0, 1
and 100, filters whose depth is not a multiple of 4 (w copied 4 bytes at a
time) or is (16 bytes at a time), split-K ranges that end inside a 32-tap
(64-tap for mma_bf16) stage, determinism, mma_bf16 on bf16 weights (its
cp.async path for w; the rest is in test_conv2d_bf16_weights.py), mma_bf16
equal to igemm_bf16 bit for bit in the emulator, and the bank conflicts the
emulator counts.

Each result is checked against the float64 convolution of the operands
rounded as the variant rounds them, to fp32 accuracy (rounded_reference; it
also holds the precision's tolerance against the exact result on these
depths), and the fused and split paths against their own definitions.
"""

import numpy as np
import pytest

import fcn_cuda
from fcn_cuda import ops
from fcn_cuda.ops.conv2d import conv2d_mma_tile

from _util import FP32, HALF, TF32, assert_close, assert_same_bits_for_any_worker_count, same_bits, to_numpy
from test_conv2d import draw, reference
from test_conv2d_pool import unfused
from test_conv2d_tensorcore import rounded_reference

pytestmark = pytest.mark.kernels

VARIANTS = ("mma_tf32", "mma_bf16")
TOL = {"mma_tf32": TF32, "mma_bf16": HALF}


def test_registered():
    for v in VARIANTS:
        assert v in ops.CONV2D_VARIANTS and v in ops.CONV2D_SPLIT_VARIANTS and v in ops.CONV2D_RELU_MAXPOOL_VARIANTS
        assert ops.CONV2D_PRECISION[v] == v.split("_")[1]


def test_tile_rule():
    assert conv2d_mma_tile(128 * 132, 128) == 128 and conv2d_mma_tile(128 * 131, 128) == 64
    assert conv2d_mma_tile(128 * 65, 250) == 64 and conv2d_mma_tile(128 * 66, 250) == 128  # 66 x 2 tiles
    assert conv2d_mma_tile(128 * 1000, 64) == 64 and conv2d_mma_tile(128 * 1000, 129) == 64  # K padded further
    assert conv2d_mma_tile(100, 100, splits=132) == 128


def check(be, rng, variant, n, c, h, w, k, r, s, stride, padding, relu=True, bias=True, splits=1, tile=None):
    """conv2d through `variant` against the rounded and the exact reference."""
    if tile is not None:
        p, q = (h + 2 * padding - r) // stride + 1, (w + 2 * padding - s) // stride + 1
        assert conv2d_mma_tile(n * p * q, k, splits) == tile, "the shape does not select the tile it is meant to"
    x, wt, b = draw(be, rng, n, c, h, w, k, r, s, bias)
    y = ops.conv2d(x, wt, b, stride, padding, relu, variant, splits)
    what = f"{variant} splits={splits} x{(n, c, h, w)} w{(k, c, r, s)} stride {stride} pad {padding}"
    assert_close(y, rounded_reference(variant, x, wt, b, stride, padding, relu), FP32, what=what)
    assert_close(y, reference(x, wt, b, stride, padding, relu), TOL[variant], what=what)
    return y


# (N, C, H, W, K, R, S, stride, padding): odd sizes, FCN's kernels (1x1,
# 3x3, 7x7) and paddings (0, 1, 100); all at the 64 x 64 tile.
SHAPES = {
    "1x1_depth1": (2, 1, 3, 5, 3, 1, 1, 1, 0),
    "3x3_depth27_pad1": (2, 3, 7, 5, 5, 3, 3, 1, 1),             # depth 27: one partial stage; w by 4 bytes
    "3x3_depth63_stride2": (3, 7, 11, 9, 13, 3, 3, 2, 1),
    "3x3_depth36": (2, 4, 9, 7, 70, 3, 3, 1, 1),                 # depth 36: w by 16 bytes, the last chunk partly zero-filled
    "7x7_pad0": (2, 5, 9, 8, 21, 7, 7, 1, 0),                    # fc6's kernel; depth 245
    "1x1_depth100": (2, 100, 3, 4, 67, 1, 1, 1, 0),              # fc7-like; 3 partial channel tiles
    "conv1_1_pad100": (1, 3, 3, 2, 9, 3, 3, 1, 100),             # 201 x 200 pixels, nearly all padding
    "pixels_65": (1, 13, 5, 13, 64, 3, 3, 1, 1),                 # 65 pixels: a second, 1-pixel tile
}


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes(be, rng, variant, shape):
    check(be, rng, variant, *SHAPES[shape], tile=64)


# At the 128 x 128 tile: 132+ blocks, either by pixels x channels (model
# scale in the emulator) or by splits of a small one.
@pytest.mark.parametrize("variant", VARIANTS)
def test_big_tile_split(be, rng, variant):
    # 578 pixels x 120 channels: 5 x 1 tiles, both partial; depth 540 in 33 splits of one or two 16-tap
    # stages, so every split ends inside a 32-tap stage of the kernel.
    check(be, rng, variant, 2, 60, 17, 17, 120, 3, 3, 1, 1, splits=33, tile=128)


@pytest.mark.model_scale
@pytest.mark.parametrize("variant", VARIANTS)
def test_big_tile(be, rng, variant):
    # 2 x 65 x 71 = 9230 pixels (73 tiles, the last partial) x 250 channels (2 tiles, one partial): 146 blocks.
    check(be, rng, variant, 2, 19, 65, 71, 250, 3, 3, 1, 1, tile=128)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("relu", [False, True])
def test_relu_and_no_bias(be, rng, variant, relu):
    check(be, rng, variant, 2, 21, 9, 7, 70, 3, 3, 1, 1, relu=relu, bias=False)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("splits", [2, 3, 7])
def test_split(be, rng, variant, splits):
    """Splits (the first ends at tap 16 or 32, mid-stage for 3 and 7) at the
    rounded reference's accuracy, and the same bits on every run."""
    shape = (2, 13, 11, 10, 21, 3, 3, 1, 1)  # depth 117: 8 stages of 16
    y = check(be, rng, variant, *shape, splits=splits)
    x, wt, b = draw(be, rng, *shape[:7])
    run = lambda: ops.conv2d(x, wt, b, 1, 1, True, variant, splits)
    assert same_bits(run(), run())
    assert y.shape == (2, 21, 11, 10)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", [(2, 21, 9, 7, 70, 3, 3, 1, 1), (2, 5, 9, 8, 21, 7, 7, 1, 0),
                                   (2, 8, 8, 8, 16, 1, 1, 1, 0)], ids=str)
def test_relu_maxpool(be, rng, variant, shape):
    """The fused epilogue: max_pool2d(relu(conv)) bit for bit."""
    n, c, h, w, k, r, s, stride, padding = shape
    x, wt, b = draw(be, rng, n, c, h, w, k, r, s)
    y = ops.conv2d_relu_maxpool(x, wt, b, stride, padding, variant)
    assert same_bits(y, unfused(x, wt, b, stride, padding, variant))
    assert np.isfinite(to_numpy(y)).all()


@pytest.mark.model_scale
@pytest.mark.parametrize("variant", VARIANTS)
def test_relu_maxpool_big_tile(be, rng, variant):
    n, c, h, w, k, r, s = 2, 3, 65, 71, 250, 3, 3
    assert conv2d_mma_tile(n * h * w, k) == 128
    x, wt, b = draw(be, rng, n, c, h, w, k, r, s)
    assert same_bits(ops.conv2d_relu_maxpool(x, wt, b, 1, 1, variant), unfused(x, wt, b, 1, 1, variant))


@pytest.mark.parametrize("variant", VARIANTS)
def test_deterministic(be, rng, variant):
    x, wt, b = draw(be, rng, 2, 21, 9, 7, 70, 3, 3)
    assert_same_bits_for_any_worker_count(be, lambda: ops.conv2d(x, wt, b, 1, 1, True, variant, 2))


def test_misaligned_weights_take_the_4_byte_path(be, rng):
    """w one float past a 16-byte boundary (a view) cannot go by 16 bytes:
    the kernel copies it 4 bytes at a time, and the result is the aligned one's."""
    x, wt, b = draw(be, rng, 2, 4, 9, 7, 21, 3, 3)  # depth 36: the 16-byte path when aligned
    flat = be.xp.zeros(wt.size + 1, dtype=np.float32)
    flat[1:] = wt.ravel()
    shifted = flat[1:].reshape(wt.shape)
    assert be.ptr(shifted) % 16 == 4
    for v in VARIANTS:
        assert same_bits(ops.conv2d(x, shifted, b, 1, 1, True, v), ops.conv2d(x, wt, b, 1, 1, True, v))


# ------------------------------------------------------------ bank conflicts
@pytest.mark.parametrize("variant", [*VARIANTS, "mma_bf16w"])
@pytest.mark.parametrize("shape", [(1, 64, 16, 16, 64, 3, 3, 1), (2, 60, 17, 17, 120, 3, 3, 33),
                                   (2, 64, 17, 17, 120, 3, 3, 33), (2, 5, 9, 8, 21, 7, 7, 1)],
                         ids=["vgg_64tile", "split_128tile", "split_128tile_depth576", "depth245"])
def test_no_bank_conflicts(counting, variant, shape):
    """Every ldmatrix, cp.async write and staging store (mma_bf16's x, and w
    unless it goes by cp.async) of the kernel is served in the ideal number
    of wavefronts (the counter's model: csrc/emu/smem.h): the XOR swizzle at
    work, at both tiles and on every path of w (mma_bf16w: bf16 weights,
    by cp.async where C*R*S % 8 == 0, else through registers)."""
    n, c, h, w, k, r, s, splits = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((k, c, r, s), dtype=np.float32)
    if variant == "mma_bf16w":
        ops.conv2d(x, ops.to_bf16_weights(wt), None, 1, 1, True, "mma_bf16", splits)
        kinds = {"ldmatrix", "shared", "cp.async"} if c * r * s % 8 == 0 else {"ldmatrix", "shared"}
    else:
        ops.conv2d(x, wt, None, 1, 1, True, variant, splits)
        kinds = {"ldmatrix", "cp.async"} if variant == "mma_tf32" else {"ldmatrix", "shared"}
    got = fcn_cuda.emulator_counters()[f"conv2d_{variant}"]
    assert set(got) == kinds, got
    for kind, cnt in got.items():
        assert cnt["accesses"] > 0 and cnt["conflicts"] == 0 and cnt["max_way"] == 1, (kind, cnt)


def test_bf16_staging_halves_the_wavefronts(counting):
    """mma_bf16 stages bf16 (64 taps per 128-byte row): on the VGG-like
    layer it needs half mma_tf32's wavefronts (ldmatrix and staging writes
    alike), with fp32 weights (stored from registers) and bf16 ones (by
    cp.async) alike: 18432 against 36864, as docs/performance.md (rung 9) gives."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 64, 16, 16), dtype=np.float32)
    wt = rng.standard_normal((64, 64, 3, 3), dtype=np.float32)
    ops.conv2d(x, wt, None, 1, 1, True, "mma_tf32")
    ops.conv2d(x, wt, None, 1, 1, True, "mma_bf16")
    ops.conv2d(x, ops.to_bf16_weights(wt), None, 1, 1, True, "mma_bf16")
    got = fcn_cuda.emulator_counters()
    total = {v: sum(c["wavefronts"] for c in got[f"conv2d_{v}"].values()) for v in VARIANTS + ("mma_bf16w",)}
    assert total == {"mma_tf32": 36864, "mma_bf16": 18432, "mma_bf16w": 18432}, total
    assert got["conv2d_mma_bf16"]["ldmatrix"]["wavefronts"] == got["conv2d_mma_tf32"]["ldmatrix"]["wavefronts"] // 2


# ------------------------------------------------------------ bf16 weights, and igemm_bf16's bits
@pytest.mark.parametrize("shape", [(2, 16, 9, 7, 70, 3, 3, 1, 1, 3), (2, 64, 17, 17, 120, 3, 3, 1, 1, 33),
                                   (2, 5, 9, 8, 21, 7, 7, 1, 0, 1)], ids=["depth144", "depth576_128tile", "depth245"])
def test_bf16_weights(be, rng, shape):
    """mma_bf16 on ops.Bf16Weights (w by cp.async where the depth is a
    multiple of 8; depth 245 through registers): its result on the fp32
    filters bit for bit, plain, split and fused, within the bf16 tolerance."""
    n, c, h, w, k, r, s, stride, padding, splits = shape
    x, wt, b = draw(be, rng, n, c, h, w, k, r, s)
    wb = ops.to_bf16_weights(wt)
    y = ops.conv2d(x, wb, b, stride, padding, True, "mma_bf16", splits)
    assert same_bits(y, ops.conv2d(x, wt, b, stride, padding, True, "mma_bf16", splits))
    assert_close(y, rounded_reference("mma_bf16", x, wt, b, stride, padding, True), FP32)
    assert_close(y, reference(x, wt, b, stride, padding, True), HALF)
    assert same_bits(ops.conv2d(x, wb, b, stride, padding, False, "mma_bf16"),
                     ops.conv2d(x, wt, b, stride, padding, False, "mma_bf16"))
    assert same_bits(ops.conv2d_relu_maxpool(x, wb, b, stride, padding, "mma_bf16"),
                     ops.conv2d_relu_maxpool(x, wt, b, stride, padding, "mma_bf16"))


@pytest.mark.parametrize("shape", [(2, 3, 7, 5, 8, 3, 3, 1, 1, 2), (2, 70, 5, 3, 21, 3, 3, 1, 1, 7),
                                   (1, 32, 8, 9, 64, 7, 7, 1, 0, 4), (2, 60, 17, 17, 120, 3, 3, 1, 1, 33)], ids=str)
def test_equals_igemm_bf16_in_the_emulator(rng, shape):
    """Both sum each output over 16-tap mma steps in tap order, one fp32
    accumulator chain, with the same rounding of x and w: in the emulator
    (its mma.sync and wmma both add a step's 16 products the same way)
    mma_bf16 gives igemm_bf16's bits, split or not. On a GPU the two are
    the same HMMA.16816 instructions in the same order; not yet checked there."""
    fcn_cuda.use_backend("host")
    n, c, h, w, k, r, s, stride, padding, splits = shape
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((k, c, r, s), dtype=np.float32)
    b = rng.standard_normal(k, dtype=np.float32)
    for sp in (1, splits):
        assert same_bits(ops.conv2d(x, wt, b, stride, padding, False, "mma_bf16", sp),
                         ops.conv2d(x, wt, b, stride, padding, False, "igemm_bf16", sp))


# ------------------------------------------------------------ the policy
def test_default_variant_per_precision():
    """tf32 / bf16: the mma variants on the GPU (the rung-9 prediction), the
    WMMA ones on the host (faster to emulate); fp32 unchanged."""
    from fcn_cuda.ops.conv2d import conv2d_default_variant
    for m, k, crs in ((64 * 64, 64, 576), (4, 512, 512 * 49), (3, 64, 27)):
        assert conv2d_default_variant(m, k, crs, "cuda", "tf32") == "mma_tf32"
        assert conv2d_default_variant(m, k, crs, "cuda", "bf16") == "mma_bf16"
        assert conv2d_default_variant(m, k, crs, "host", "tf32") == "igemm_tf32"
        assert conv2d_default_variant(m, k, crs, "host", "bf16") == "igemm_bf16"
        assert conv2d_default_variant(m, k, crs, "cuda", "fp32") == conv2d_default_variant(m, k, crs, "cuda")
    with pytest.raises(ValueError, match="precision must be one of"):
        conv2d_default_variant(1, 1, 1, "cuda", "fp16")


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_precision_argument(be, rng, precision):
    from fcn_cuda.ops.conv2d import conv2d_default_variant
    x, wt, b = draw(be, rng, 2, 21, 9, 7, 70, 3, 3)
    chosen = conv2d_default_variant(2 * 9 * 7, 70, 189, be.name, precision)
    assert same_bits(ops.conv2d(x, wt, b, 1, 1, True, precision=precision),
                     ops.conv2d(x, wt, b, 1, 1, True, chosen))
    assert same_bits(ops.conv2d_relu_maxpool(x, wt, b, 1, 1, precision=precision),
                     ops.conv2d_relu_maxpool(x, wt, b, 1, 1, chosen))
    assert same_bits(ops.conv2d(x, wt, b, 1, 1, True, f"mma_{precision}", precision=precision),
                     ops.conv2d(x, wt, b, 1, 1, True, f"mma_{precision}"))
    with pytest.raises(ValueError, match=f"variant igemm computes in fp32, not the precision '{precision}'"):
        ops.conv2d(x, wt, b, variant="igemm", precision=precision)
    with pytest.raises(ValueError, match="variant igemm computes in fp32"):
        ops.conv2d_relu_maxpool(x, wt, b, variant="igemm", precision=precision)
    with pytest.raises(ValueError, match="precision must be one of"):
        ops.conv2d(x, wt, b, precision="fp16")
    with pytest.raises(ValueError, match="computes in bf16"):
        ops.conv2d(x, ops.to_bf16_weights(wt), b, precision="tf32")
