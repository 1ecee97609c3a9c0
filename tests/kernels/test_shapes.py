"""The size structs that cross the binding (csrc/kernels/shapes.h: ConvShape, TransposeShape,
PoolShape, ScoreCropShape, CrfTermShape): what Python builds is what the launchers read, and the
binding refuses a shape no such op has."""

import numpy as np
import pytest

from fcn_cuda.ops.conv2d import conv_out

pytestmark = pytest.mark.kernels


def test_conv_shape_derives_the_output_size(be):
    g = be.ext.ConvShape((2, 3, 10, 9), (4, 3, 3, 2), (2, 1), (1, 0))
    assert (g.N, g.C, g.H, g.W, g.K, g.R, g.S) == (2, 3, 10, 9, 4, 3, 2)
    assert (g.sh, g.sw, g.ph, g.pw) == (2, 1, 1, 0)
    assert (g.P, g.Q) == (conv_out(10, 3, 2, 1), conv_out(9, 2, 1, 0)) == (5, 8)
    assert repr(g) == "ConvShape(x=(2, 3, 10, 9), w=(4, 3, 3, 2), y=(2, 4, 5, 8), stride=(2, 1), padding=(1, 0))"


def test_conv_shape_takes_a_given_output_size(be):
    """A weight gradient's output is a crop (negative padding): P, Q are given, not derived."""
    g = be.ext.ConvShape((1, 5, 10, 11), (3, 5, 1, 1), (1, 1), (-2, -3), out=(6, 7))
    assert (g.P, g.Q, g.ph, g.pw) == (6, 7, -2, -3)


@pytest.mark.parametrize("x,w,stride,padding,out", [
    ((2, 3, 10, 9), (4, 2, 3, 3), (1, 1), (0, 0), None),   # C differs
    ((2, 3, 2, 9), (4, 3, 3, 3), (1, 1), (0, 0), None),    # no window fits: P = 0
    ((2, 3, 10, 9), (4, 3, 3, 3), (0, 1), (0, 0), (1, 1)),  # stride 0
    ((0, 3, 10, 9), (4, 3, 3, 3), (1, 1), (0, 0), None),   # empty batch
])
def test_conv_shape_refuses_what_no_convolution_has(be, x, w, stride, padding, out):
    with pytest.raises(ValueError, match="ConvShape"):
        be.ext.ConvShape(x, w, stride, padding, out)


def test_bf16_weights_need_igemm_bf16_at_the_launcher(be):
    """The weight type crosses beside w; a launcher given bf16 weights and a variant that cannot read them
    refuses (ops.conv2d refuses first, in Python)."""
    g = be.ext.ConvShape((1, 2, 4, 4), (3, 2, 1, 1), (1, 1), (0, 0))
    x, w, y = be.xp.zeros((1, 2, 4, 4), np.float32), be.xp.zeros((3, 2, 1, 1), np.uint16), be.empty((1, 3, 4, 4))
    with pytest.raises(ValueError, match="bf16 weights need variant igemm_bf16 or mma_bf16, got igemm"):
        be.ext.conv2d("igemm", g, be.ptr(x), be.ptr(w), be.ext.WeightType.bf16, 0, be.ptr(y), False, be.stream())


def test_transpose_shape_holds_the_window(be):
    t = be.ext.TransposeShape((2, 4, 5, 6), (4, 3, 4, 2), (2, 3), (1, 0), (7, 17))
    assert (t.N, t.Cin, t.H, t.W, t.Cout, t.R, t.S) == (2, 4, 5, 6, 3, 4, 2)
    assert (t.sy, t.sx, t.oy0, t.ox0, t.Ho, t.Wo) == (2, 3, 1, 0, 7, 17)
    assert repr(t) == "TransposeShape(x=(2, 4, 5, 6), w=(4, 3, 4, 2), stride=(2, 3), origin=(1, 0), out=(7, 17))"


# The full output of x (.., 5, 6) by a 4 x 2 kernel at stride (2, 3) is 12 x 17.
@pytest.mark.parametrize("x,w,stride,origin,out", [
    ((2, 4, 5, 6), (3, 3, 4, 2), (2, 3), (0, 0), (12, 17)),  # Cin differs
    ((2, 4, 5, 6), (4, 3, 4, 2), (2, 3), (1, 0), (12, 17)),  # the window leaves the full output
    ((2, 4, 5, 6), (4, 3, 4, 2), (2, 3), (0, 1), (12, 17)),
    ((2, 4, 5, 6), (4, 3, 4, 2), (2, 3), (-1, 0), (5, 5)),   # origin < 0
    ((2, 4, 5, 6), (4, 3, 4, 2), (0, 3), (0, 0), (1, 1)),    # stride 0
])
def test_transpose_shape_refuses_a_window_off_the_output(be, x, w, stride, origin, out):
    with pytest.raises(ValueError, match="TransposeShape"):
        be.ext.TransposeShape(x, w, stride, origin, out)


def test_crf_term_shape_holds_the_term(be):
    t = be.ext.CrfTermShape(5, 3, 7, 22, 80.0, 13.0)
    assert (t.d, t.H, t.W, t.P, t.sxy, t.srgb) == (5, 3, 7, 22, 80.0, 13.0)


@pytest.mark.parametrize("d,h,w,p,sxy,srgb", [
    (3, 3, 7, 21, 80.0, 13.0),  # d is 2 or 5
    (2, 0, 7, 0, 3.0, 1.0),     # an empty image
    (2, 3, 7, 23, 3.0, 1.0),    # P is H*W or H*W + 1
    (5, 3, 7, 21, 0.0, 13.0),   # sxy > 0
    (5, 3, 7, 21, 80.0, -1.0),  # srgb > 0
])
def test_crf_term_shape_refuses_what_no_term_has(be, d, h, w, p, sxy, srgb):
    with pytest.raises(ValueError, match="CrfTermShape"):
        be.ext.CrfTermShape(d, h, w, p, sxy, srgb)


def test_pool_and_score_crop_shapes_hold_their_sizes(be):
    g = be.ext.PoolShape(6, (11, 9), (6, 5), (2, 3), (2, 2))
    assert (g.planes, g.H, g.W, g.Ho, g.Wo, g.kh, g.kw, g.sh, g.sw) == (6, 11, 9, 6, 5, 2, 3, 2, 2)
    s = be.ext.ScoreCropShape((2, 3, 6, 7), (2, 5, 10, 11), (4, 2))
    assert (s.N, s.K, s.C, s.H, s.W, s.Hf, s.Wf, s.oy, s.ox) == (2, 3, 5, 6, 7, 10, 11, 4, 2)


def test_pool_and_score_crop_shapes_refuse_what_no_such_op_has(be):
    with pytest.raises(ValueError, match="PoolShape"):
        be.ext.PoolShape(6, (11, 9), (0, 5), (2, 2), (2, 2))
    with pytest.raises(ValueError, match="ScoreCropShape: out and feat differ in N"):
        be.ext.ScoreCropShape((2, 3, 6, 7), (1, 5, 10, 11), (0, 0))
    with pytest.raises(ValueError, match="ScoreCropShape: the H x W window"):
        be.ext.ScoreCropShape((2, 3, 6, 7), (2, 5, 10, 11), (5, 0))  # rows 5..10 of 10
    with pytest.raises(ValueError, match="ScoreCropShape: the H x W window"):
        be.ext.ScoreCropShape((2, 3, 6, 7), (2, 5, 10, 11), (0, -1))
