"""The tensor-core conv2d variants (igemm_tf32, igemm_bf16 on WMMA; mma_tf32,
mma_bf16 on cp.async, ldmatrix and mma.sync) against
torch.nn.functional.conv2d in float64, at the contract's reduced-precision
tolerances: TF32 2e-3, bf16 1e-2 (relative L2 error).

Beyond the tolerance, each variant must compute with the precision it names:
its output matches, to fp32 accuracy, the float64 convolution of inputs
rounded as the variant rounds them (TF32: 10 mantissa bits, half away from
zero; bf16: 7 bits, to nearest even), and differs from the fp32 igemm's.

The output cannot be passed in, so each result is checked whole and finite
(errors() turns any NaN into +inf). Shapes stay small: in the host emulation
every lane of a warp computes a whole wmma tile.
"""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fcn_cuda import ops

from _util import FP32, HALF, TF32, assert_close, errors, to_numpy
# the float64 torch reference, the fixed-seed inputs and the check at each variant's tolerance; test_conv2d's
# shape and relu/bias tests run these variants too
from test_conv2d import check, draw, reference

pytestmark = pytest.mark.kernels

TOL = {"igemm_tf32": TF32, "igemm_bf16": HALF, "mma_tf32": TF32, "mma_bf16": HALF}
VARIANTS = tuple(TOL)


def tf32_round(a):
    """cvt.rna.tf32.f32: keep 10 mantissa bits, round half away from zero (finite inputs)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def bf16_round(a):
    """float -> bfloat16, round to nearest even (torch's conversion)."""
    return torch.from_numpy(np.ascontiguousarray(a)).to(torch.bfloat16).float().numpy()


ROUNDING = {"igemm_tf32": tf32_round, "igemm_bf16": bf16_round, "mma_tf32": tf32_round, "mma_bf16": bf16_round}


def rounded_reference(variant, x, w, b, stride, padding, relu):
    """The float64 convolution of the operands as the variant rounds them
    (the bias is not rounded: the kernels add it in fp32). TF32 and bf16
    products are exact in fp32, so the variant must match this to fp32
    accuracy at any depth, where the exact convolution is only within the
    contract's tolerance for outputs of some depth: a handful of rounded
    products can cancel to far less than their rounding errors."""
    rounded = ROUNDING[variant]
    return reference(rounded(to_numpy(x)), rounded(to_numpy(w)), b, stride, padding, relu)


def test_variants_registered():
    assert set(VARIANTS) <= set(ops.CONV2D_VARIANTS)




# FCN's layer configurations (docs/fcn-reference.md) at small spatial size; the
# channel counts of conv1_1 and conv2_1 are VGG16's, fc6 / fc7 / score_fr
# are narrowed (their real depths would take minutes to emulate).
FCN_LAYERS = {
    "conv1_1_pad100": (1, 3, 5, 5, 64, 3, 3, 1, 100),    # 3 -> 64, 3x3, pad 100: 203 x 203 out of 5 x 5
    "conv2_1_3x3": (2, 64, 5, 5, 128, 3, 3, 1, 1),       # 64 -> 128, 3x3, pad 1
    "fc6_7x7": (2, 64, 8, 8, 64, 7, 7, 1, 0),            # 7x7, pad 0, depth 3136 (512 -> 4096 in VGG16)
    "fc7_1x1": (2, 1024, 2, 2, 128, 1, 1, 1, 0),         # 1x1 (4096 -> 4096 in VGG16)
    "score_fr_1x1": (2, 256, 3, 3, 21, 1, 1, 1, 0),      # 1x1 to 21 classes, no ReLU
}


# conv1_1's 203 x 203 output costs ~0.7 s per variant in the emulator (~15 s
# under ASan), so it runs for one variant of each gather: igemm_tf32 (the
# padding is gathered by conv2d_igemm_stages, which both igemm variants share)
# and mma_tf32 (conv2d_mma's cp.async loader, which both mma variants share).
FCN_CASES = [(v, layer) for v in VARIANTS for layer in FCN_LAYERS
             if not (layer == "conv1_1_pad100" and v not in ("igemm_tf32", "mma_tf32"))]


@pytest.mark.model_scale
@pytest.mark.parametrize("variant, layer", FCN_CASES, ids=lambda a: a)
def test_fcn_layers(be, rng, variant, layer):
    check(be, rng, variant, *FCN_LAYERS[layer], relu=not layer.startswith("score"), bias=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_rounds_like_its_precision(be, rng, variant):
    """Random fp32 operands have products that TF32 / bf16 cannot hold: the
    variant matches the float64 convolution of its rounded inputs to fp32
    accuracy, is measurably off the exact result (so a kernel that silently
    computes in fp32, or rounds the other way, fails) and differs from igemm."""
    shape, stride, padding = (2, 21, 9, 7, 70, 3, 3), 1, 1
    x, wt, b = draw(be, rng, *shape)
    y = ops.conv2d(x, wt, b, stride, padding, True, variant)
    exact = reference(x, wt, b, stride, padding, True)
    assert_close(y, rounded_reference(variant, x, wt, b, stride, padding, True), FP32,
                 what=f"{variant} against the float64 conv of its rounded inputs")
    rel, _ = errors(y, exact)
    assert 10 * FP32 < rel <= TOL[variant], f"{variant}: relative error {rel:.2e} to the exact result"
    rel_fp32, _ = errors(y, ops.conv2d(x, wt, b, stride, padding, True, "igemm"))
    assert rel_fp32 > 10 * FP32, f"{variant} equals the fp32 igemm to {rel_fp32:.1e}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_quarter_ulp_is_dropped(be, variant):
    """x = 1 + 2^-12 is a quarter of a TF32 ulp (and less of a bf16 one) above
    1, so both variants read it as 1: 27 taps of x * 1 give exactly 27, where
    the fp32 igemm gives 27 * (1 + 2^-12)."""
    x = be.xp.full((2, 3, 5, 7), 1 + 2.0**-12, dtype=np.float32)
    w = be.xp.ones((4, 3, 3, 3), dtype=np.float32)
    exact = reference(x, w, None, 1, 0, False)
    assert np.all(exact == 27 * (1 + 2.0**-12))
    y = to_numpy(ops.conv2d(x, w, variant=variant))
    assert np.all(y == 27.0), f"{variant} gave {np.unique(y)}"
    assert_close(y, exact, TOL[variant])
    assert_close(ops.conv2d(x, w, variant="igemm"), exact, FP32)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), n=st.integers(1, 2), c=st.sampled_from([1, 2, 3, 5, 16, 21]), h=st.integers(1, 9),
       w=st.integers(1, 9), k=st.sampled_from([1, 3, 16, 21, 64, 70]),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 3)), padding=st.tuples(st.integers(0, 3), st.integers(0, 3)),
       relu=st.booleans(), bias=st.booleans(), variant=st.sampled_from(VARIANTS), seed=st.integers(0, 2**16))
def test_fuzz(be, data, n, c, h, w, k, stride, padding, relu, bias, variant, seed):
    """Random valid shapes (kernels up to 7x7 that fit the padded image) match
    torch's float64 convolution of the rounded operands to fp32 accuracy
    (rounded_reference: the bound that holds at any depth; the contract's
    tolerance against the exact result is checked on shapes of some depth,
    test_conv2d.py's). Invalid arguments take conv2d's one validation path
    whatever the variant: test_conv2d.py fuzzes it, and test_bad_input below
    runs it with these variants."""
    r = data.draw(st.integers(1, min(7, h + 2 * padding[0])), label="r")
    s = data.draw(st.integers(1, min(7, w + 2 * padding[1])), label="s")
    x, wt, b = draw(be, np.random.default_rng(seed), n, c, h, w, k, r, s, bias)
    y = ops.conv2d(x, wt, b, stride, padding, relu, variant)
    assert_close(y, rounded_reference(variant, x, wt, b, stride, padding, relu), FP32)


@pytest.mark.parametrize("variant", VARIANTS)
def test_bad_input(be, rng, variant):
    """The variants go through conv2d's one validation layer."""
    x, w, b = draw(be, rng, 2, 3, 7, 5, 4, 3, 3)
    with pytest.raises(TypeError, match="x must be float32"):
        ops.conv2d(x.astype(np.float64), w, b, variant=variant)
    with pytest.raises(ValueError, match="w has 2 input channels"):
        ops.conv2d(x, w[:, :2].copy(), b, variant=variant)
    with pytest.raises(ValueError, match="padding"):
        ops.conv2d(x, w, b, padding=-1, variant=variant)
    with pytest.raises(ValueError, match="variant must be one of"):
        ops.conv2d(x, w, b, variant="igemm_fp16")
