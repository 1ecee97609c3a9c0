"""fcn_cuda.torch: the kernels as PyTorch operators (torch.ops.fcn_cuda.*),
their autograd through the hand-written backward kernels, and the nn.Module
FCN, checked by torch.library.opcheck, against PyTorch in float64, and
against fcn_cuda's own engine (forward bit for bit, SGD steps of its Trainer).

CPU tensors run on the host emulation; the CUDA cases (marked gpu) skip
themselves where there is no GPU.
"""

import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

import fcn_cuda
import fcn_cuda.torch as fct
from fcn_cuda.torch.dispatch import device_backend, to_array, to_tensor
from fcn_cuda import _backend, ops
from fcn_cuda.bilinear import bilinear_weights
from fcn_cuda.model import dropout_key
from fcn_cuda.training import TrainConfig, Trainer

from _util import FP32, ROOT, assert_close
from torch_fcn import SMALL_FC, SMALL_WIDTHS, random_fcn, state_dict_f32

_NO_GPU = _backend.cuda_unavailable_reason() or (None if torch.cuda.is_available() else "this torch has no CUDA")
needs_gpu = [pytest.mark.gpu, pytest.mark.skipif(_NO_GPU is not None, reason=f"no GPU: {_NO_GPU}")]
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=needs_gpu)]


@pytest.fixture(autouse=True)
def host_engine():
    """fcn_cuda's own calls (the engine the module is compared with) run on the host."""
    previous = fcn_cuda.backend()
    fcn_cuda.use_backend("host")
    yield
    fcn_cuda.use_backend(previous)


@pytest.fixture
def nan_outputs(monkeypatch):
    """Every array a kernel writes starts as NaN (integers: their minimum), so an unwritten element fails."""
    original = _backend.Backend.empty

    def empty(self, shape, dtype=np.float32):
        a = original(self, shape, dtype)
        a.fill(np.nan if np.dtype(dtype).kind == "f" else np.iinfo(dtype).min)
        return a

    monkeypatch.setattr(_backend.Backend, "empty", empty)


def randn(gen, *shape, scale=1.0, device="cpu", grad=False):
    t = (torch.randn(*shape, generator=gen) * scale).to(device)
    return t.requires_grad_(grad)


def labels_for(gen, n, h, w, classes, device="cpu"):
    labels = torch.randint(0, classes, (n, h, w), generator=gen, dtype=torch.int32)
    labels[torch.rand(n, h, w, generator=gen) < 0.2] = 255
    return labels.to(device)


# ----------------------------------------------------------------------- opcheck
def _opcheck_cases(device):
    """(op name, args) covering every registered op, odd shapes, batch 2;
    differentiable inputs require grad so the autograd registration is checked."""
    g = torch.Generator().manual_seed(0)

    def r(*shape, grad=False, scale=1.0):
        return randn(g, *shape, grad=grad, scale=scale, device=device)

    bil = torch.from_numpy(bilinear_weights(3, 4)).to(device)
    mask = torch.relu(r(2, 5, 5, 9))
    _, indices = fct.max_pool2d(r(2, 3, 9, 11), 3, 2, ceil_mode=True, return_indices=True)
    return [
        ("conv2d", (r(2, 3, 9, 11, grad=True), r(5, 3, 3, 3, grad=True), r(5, grad=True), [2, 1], [1, 0], True)),
        ("conv2d", (r(2, 3, 9, 11, grad=True), r(5, 3, 3, 3, grad=True), None, [1, 1], [0, 0], False)),
        ("conv2d_grad_input", (r(2, 5, 5, 9), r(5, 3, 3, 3), [2, 3, 9, 11], [2, 1], [1, 0], mask)),
        ("conv2d_grad_weight", (r(2, 3, 9, 11), r(2, 5, 5, 9), [3, 3], [2, 1], [1, 0], None)),
        ("bias_grad", (r(2, 5, 5, 11),)),
        ("conv2d_relu_maxpool", (r(2, 3, 9, 11), r(5, 3, 3, 3), r(5), 1)),
        ("conv2d_relu_maxpool", (r(2, 16, 9, 11), r(64, 16, 3, 3), None, 1)),
        ("conv_transpose2d", (r(2, 3, 5, 7, grad=True), r(3, 4, 4, 3, grad=True), r(4, grad=True), [2, 3], [1, 0])),
        ("conv_transpose2d", (r(2, 3, 5, 7, grad=True), bil, None, [2, 2], [0, 0])),
        ("conv_transpose2d_window", (r(2, 3, 5, 7, grad=True), r(3, 4, 4, 3, grad=True), r(4, grad=True), [2, 2],
                                     [7, 9], [2, 3])),
        ("conv_transpose2d_grad_input", (r(2, 4, 10, 21), r(3, 4, 4, 3), [2, 3, 5, 7], [2, 3], [1, 0])),
        ("conv_transpose2d_grad_weight", (r(2, 3, 5, 7), r(2, 4, 10, 21), [4, 3], [2, 3], [1, 0])),
        ("max_pool2d", (r(2, 3, 9, 11), [2, 2], [2, 2], True)),
        ("max_pool2d_with_indices", (r(2, 3, 9, 11, grad=True), [3, 3], [2, 2], True)),
        ("max_pool2d_with_indices", (r(2, 3, 9, 11, grad=True), [2, 3], [2, 3], False)),
        ("max_pool2d_backward", (r(2, 3, 4, 5), indices, [2, 3, 9, 11], [3, 3], [2, 2])),
        ("crop_add", (r(2, 3, 5, 7, grad=True), r(2, 3, 9, 12, grad=True), [3, 4])),
        ("crop_backward", (r(2, 3, 5, 7), [2, 3, 9, 12], [3, 4])),
        ("score_crop_add", (r(2, 4, 5, 7, grad=True), r(2, 6, 9, 12, grad=True), r(4, 6, 1, 1, grad=True),
                            r(4, grad=True), [3, 4], 1.0)),
        ("score_crop_add", (r(2, 4, 5, 7, grad=True), r(2, 6, 9, 12, grad=True), r(4, 6, 1, 1, grad=True), None,
                            [0, 5], 0.01)),
        ("score_crop_add_backward", (r(2, 4, 5, 7), r(2, 6, 9, 12), r(4, 6, 1, 1), [3, 4], 0.01)),
        ("softmax", (r(2, 5, 3, 7, scale=3.0),)),
        ("argmax", (r(2, 5, 3, 7),)),
        ("upsample_argmax", (r(2, 3, 5, 7), bil, [2, 2], [9, 13], [1, 2])),
        ("upsample_softmax_argmax", (r(2, 3, 5, 7), bil, [2, 2], [9, 13], [1, 2])),
        ("softmax_cross_entropy", (r(2, 5, 3, 7, grad=True, scale=3.0), labels_for(g, 2, 3, 7, 5, device), 255,
                                   False, None)),
        ("softmax_cross_entropy", (r(2, 5, 3, 7, grad=True, scale=3.0), labels_for(g, 2, 3, 7, 5, device), 255,
                                   True, torch.tensor([0.5, 2.0, 0.0, 1.0, 3.0], device=device))),
        ("dropout", (r(2, 3, 5, 7, grad=True), 0.5, 9, 4, 0)),
        ("dropout", (r(2, 3, 5, 7, grad=True), 0.5, 9, 4, 3 * 5 * 7)),
        ("dense_crf", (torch.randint(0, 256, (7, 9, 3), generator=g, dtype=torch.uint8).to(device),
                       torch.softmax(r(3, 7, 9), 0), 2, 3.0, 3.0, 80.0, 13.0, 10.0, "lattice")),
    ]


OPCHECK_CASES = [f"{name}-{i}" for i, (name, _) in enumerate(_opcheck_cases("cpu"))]


def test_every_op_is_registered_and_opchecked():
    assert {c.rsplit("-", 1)[0] for c in OPCHECK_CASES} == set(fct.OPS)
    for name, op in fct.OPS.items():
        assert getattr(torch.ops.fcn_cuda, name).default is op._opoverload
    assert str(torch.ops.fcn_cuda.conv2d.default._schema) == (
        "fcn_cuda::conv2d(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, bool relu) -> Tensor")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck(case, device):
    """torch.library.opcheck: schema, fake tensors, autograd registration, and
    eager against torch.compile's aot dispatch with dynamic shapes (outputs
    and, where inputs require grad, gradients)."""
    name, args = _opcheck_cases(device)[OPCHECK_CASES.index(case)]
    result = opcheck(getattr(torch.ops.fcn_cuda, name).default, args, raise_exception=False)
    assert result == dict.fromkeys(("test_schema", "test_autograd_registration", "test_faketensor",
                                    "test_aot_dispatch_dynamic"), "SUCCESS"), result


# ------------------------------------------------------------ values and gradients vs torch (float64)
def _check_against_torch(ours, theirs, inputs, gen, what):
    """ours(*float32 tensors) against theirs(*float64 copies): values, and
    gradients of sum(out * g) for a random g, at the fp32 tolerance."""
    ref_inputs = [t.detach().double().requires_grad_(t.requires_grad) for t in inputs]
    out, ref = ours(*inputs), theirs(*ref_inputs)
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert_close(out, ref, FP32, what=f"{what}: values")
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    wanted = [t for t in inputs if t.requires_grad]
    grads = torch.autograd.grad((out * g.float()).sum(), wanted)
    ref_grads = torch.autograd.grad((ref * g).sum(), [t for t in ref_inputs if t.requires_grad])
    for i, (d, rd) in enumerate(zip(grads, ref_grads)):
        assert_close(d, rd, FP32, what=f"{what}: gradient {i}")


CONV_CASES = [  # (x shape, w shape, stride, padding, relu, bias)
    ((2, 3, 13, 17), (5, 3, 3, 3), 1, 1, True, True),
    ((2, 6, 11, 9), (7, 6, 3, 3), (2, 1), (1, 0), True, False),
    ((2, 8, 10, 13), (3, 8, 7, 7), 1, 0, False, True),      # fc6-like: 7x7, no padding
    ((2, 3, 5, 6), (4, 3, 3, 3), 1, 4, True, True),        # padding past the filter (conv1_1's case)
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}-p{c[3]}")
def test_conv2d_against_torch(nan_outputs, case):
    xs, ws, stride, padding, relu, bias = case
    gen = torch.Generator().manual_seed(1)
    x = randn(gen, *xs, grad=True)
    w = randn(gen, *ws, scale=(2.0 / np.prod(ws[1:])) ** 0.5, grad=True)
    b = randn(gen, ws[0], scale=0.1, grad=True) if bias else None

    def theirs(x, w, b=None):
        y = F.conv2d(x, w, b, stride, padding)
        return F.relu(y) if relu else y

    inputs = [x, w] + ([b] if bias else [])
    _check_against_torch(lambda x, w, b=None: fct.conv2d(x, w, b, stride, padding, relu), theirs, inputs, gen,
                         f"conv2d {case}")


@pytest.mark.parametrize("channels", [(3, 5), (16, 64)], ids=["unfused", "fused"])
def test_conv2d_relu_maxpool_against_torch(nan_outputs, channels):
    """Both paths (small_c has no fused epilogue: conv2d then max_pool2d; igemm fuses)."""
    gen = torch.Generator().manual_seed(10)
    c, k = channels
    x, w, b = randn(gen, 2, c, 9, 11), randn(gen, k, c, 3, 3, scale=0.2), randn(gen, k, scale=0.1)
    y = fct.conv2d_relu_maxpool(x, w, b, padding=1)
    ref = F.max_pool2d(F.relu(F.conv2d(x.double(), w.double(), b.double(), padding=1)), 2, 2, ceil_mode=True)
    assert_close(y, ref, FP32, what="conv2d_relu_maxpool")
    assert torch.equal(y, fct.max_pool2d(fct.conv2d(x, w, b, padding=1, relu=True)))


@pytest.mark.parametrize("per_channel", [False, True], ids=["general", "per-channel"])
@pytest.mark.parametrize("stride,padding", [(2, 0), ((2, 3), (1, 0))])
def test_conv_transpose2d_against_torch(nan_outputs, per_channel, stride, padding):
    gen = torch.Generator().manual_seed(2)
    x = randn(gen, 2, 3, 5, 7, grad=True)
    if per_channel:
        w = torch.from_numpy(bilinear_weights(3, 4)).requires_grad_()
        b = None
    else:
        w = randn(gen, 3, 4, 4, 3, grad=True)
        b = randn(gen, 4, scale=0.1, grad=True)
    inputs = [x, w] + ([b] if b is not None else [])
    _check_against_torch(lambda x, w, b=None: fct.conv_transpose2d(x, w, b, stride, padding),
                         lambda x, w, b=None: F.conv_transpose2d(x, w, b, stride, padding), inputs, gen,
                         f"conv_transpose2d stride {stride} padding {padding}")


def test_conv_transpose2d_window_against_torch(nan_outputs):
    gen = torch.Generator().manual_seed(3)
    x, w, b = randn(gen, 2, 3, 5, 7, grad=True), randn(gen, 3, 4, 4, 4, grad=True), randn(gen, 4, grad=True)
    _check_against_torch(lambda x, w, b: fct.conv_transpose2d_window(x, w, 2, (7, 9), (2, 3), bias=b),
                         lambda x, w, b: F.conv_transpose2d(x, w, b, 2)[:, :, 2:9, 3:12], [x, w, b], gen,
                         "conv_transpose2d_window")


@pytest.mark.parametrize("kernel,stride,ceil_mode", [(2, 2, True), (3, 2, True), ((2, 3), (2, 3), False)])
def test_max_pool2d_against_torch(nan_outputs, kernel, stride, ceil_mode):
    gen = torch.Generator().manual_seed(4)
    x = randn(gen, 2, 3, 9, 11, grad=True)
    _check_against_torch(lambda x: fct.max_pool2d(x, kernel, stride, ceil_mode),
                         lambda x: F.max_pool2d(x, kernel, stride, ceil_mode=ceil_mode), [x], gen,
                         f"max_pool2d {kernel} {stride}")
    y, idx = fct.max_pool2d(x.detach(), kernel, stride, ceil_mode, return_indices=True)
    ref_y, ref_idx = F.max_pool2d(x.detach(), kernel, stride, ceil_mode=ceil_mode, return_indices=True)
    assert idx.dtype == torch.int32 and torch.equal(idx.long(), ref_idx) and torch.equal(y, ref_y)


def test_crop_add_and_score_crop_add_against_torch(nan_outputs):
    gen = torch.Generator().manual_seed(5)
    a, b = randn(gen, 2, 3, 5, 7, grad=True), randn(gen, 2, 3, 9, 12, grad=True)
    _check_against_torch(lambda a, b: fct.crop_add(a, b, (3, 4)), lambda a, b: a + b[:, :, 3:8, 4:11], [a, b], gen,
                         "crop_add")
    up, feat = randn(gen, 2, 4, 5, 7, grad=True), randn(gen, 2, 6, 9, 12, grad=True)
    w, bias = randn(gen, 4, 6, 1, 1, grad=True), randn(gen, 4, grad=True)
    for scale in (1.0, 0.01):
        _check_against_torch(lambda u, f, w, b: fct.score_crop_add(u, f, w, b, (3, 4), scale),
                             lambda u, f, w, b: u + F.conv2d(scale * f, w, b)[:, :, 3:8, 4:11], [up, feat, w, bias],
                             gen, f"score_crop_add scale {scale}")


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_cross_entropy_against_torch(nan_outputs, normalize, weighted):
    gen = torch.Generator().manual_seed(6)
    scores = randn(gen, 2, 5, 7, 9, scale=4.0, grad=True)
    labels = labels_for(gen, 2, 7, 9, 5)
    weight = torch.tensor([0.5, 2.0, 0.0, 1.0, 3.0]) if weighted else None
    loss = fct.softmax_cross_entropy(scores, labels, normalize=normalize, weight=weight)
    ref_scores = scores.detach().double().requires_grad_()
    ref_weight = None if weight is None else weight.double()
    ref = F.cross_entropy(ref_scores, labels.long(), ref_weight, ignore_index=255,
                          reduction="mean" if normalize else "sum")
    ref = ref if normalize else ref / 2
    assert loss.shape == () and loss.dtype == torch.float32
    assert abs(loss.item() - ref.item()) <= FP32 * abs(ref.item())
    (2.5 * loss).backward()  # the incoming gradient scales the kernel's
    (2.5 * ref).backward()
    assert_close(scores.grad, ref_scores.grad, FP32, what="loss gradient")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("normalize,weighted,ignored", [(False, False, False), (True, False, False),
                                                        (False, True, False), (True, True, False), (True, False, True)])
def test_softmax_cross_entropy_loss_stays_on_the_device_with_the_same_bits(monkeypatch, device, normalize, weighted,
                                                                           ignored):
    """The op's loss is ops.softmax_cross_entropy's float loss rounded to float32, bit for bit (every
    pixel ignored: 0), and never passes through the host on its way to the tensor."""
    gen = torch.Generator().manual_seed(8)
    scores = randn(gen, 3, 6, 5, 11, scale=5.0, device=device)
    labels = labels_for(gen, 3, 5, 11, 6, device)
    if ignored:
        labels.fill_(255)
    weight = torch.tensor([0.5, 2.0, 0.0, 1.0, 3.0, 0.25], device=device) if weighted else None
    dev = scores.device
    with device_backend(dev):
        arrays = [to_array(t, name, dev) for t, name in ((scores, "scores"), (labels, "labels"))]
        expected = np.float32(ops.softmax_cross_entropy(*arrays, normalize=normalize,
                                                        weight=None if weight is None else weight.cpu().numpy())[0])
    if not (normalize or weighted):  # the other cases bring their class counts or weights over, not the loss
        def no_transfer(self, a):
            raise AssertionError("the loss went through the host")

        monkeypatch.setattr(_backend.Backend, "to_numpy", no_transfer)
    loss = fct.softmax_cross_entropy(scores, labels, normalize=normalize, weight=weight)
    monkeypatch.undo()
    assert loss.device == dev and loss.shape == () and loss.dtype == torch.float32
    assert loss.cpu().numpy().tobytes() == expected.tobytes(), (loss.item(), float(expected))
    assert (float(expected) == 0.0) == ignored


def test_dropout_mask_scale_and_backward(nan_outputs):
    gen = torch.Generator().manual_seed(7)
    x = randn(gen, 2, 3, 17, 19, grad=True)
    y = fct.dropout(x, 0.5, seed=9, step=4)
    kept = y != 0
    assert 0.4 < kept.float().mean() < 0.6
    assert torch.equal(y[kept], x.detach()[kept] * np.float32(2.0))
    g = torch.randn(y.shape, generator=gen)
    (y * g).sum().backward()
    assert torch.equal(x.grad, torch.where(kept, g * np.float32(2.0), torch.zeros(())))
    assert torch.equal(y, fct.dropout(x, 0.5, seed=9, step=4))           # the same key, the same mask
    assert not torch.equal(y, fct.dropout(x, 0.5, seed=9, step=5))
    assert fct.dropout(x, 0.5, training=False) is x
    assert fct.dropout(x, 0.5, 9, 4, False) is x  # training positionally, where it has always been
    with pytest.raises(TypeError):
        fct.dropout(x, 0.5, 9, 4, True, 0)  # offset is keyword-only
    # offset places x in a larger batch: image 1 alone draws the whole batch's mask for image 1
    assert torch.equal(fct.dropout(x[1:], 0.5, seed=9, step=4, offset=x[0].numel()), y[1:])


def test_softmax_argmax_and_upsample_argmax_against_torch(nan_outputs):
    gen = torch.Generator().manual_seed(8)
    x = randn(gen, 2, 5, 7, 9, scale=3.0)
    assert_close(fct.softmax(x), torch.softmax(x.double(), 1), FP32, what="softmax")
    labels = fct.argmax(x)
    assert labels.dtype == torch.int32 and torch.equal(labels.long(), torch.argmax(x, 1))
    coarse = randn(gen, 2, 3, 5, 7, scale=3.0)
    w = torch.from_numpy(bilinear_weights(3, 4))
    up = F.conv_transpose2d(coarse.double(), w.double(), stride=2)[:, :, 1:10, 2:15]
    lab, probs = fct.upsample_argmax(coarse, w, 2, (9, 13), (1, 2), probs=True)
    assert torch.equal(lab.long(), up.argmax(1)) and torch.equal(fct.upsample_argmax(coarse, w, 2, (9, 13), (1, 2)), lab)
    assert_close(probs, torch.softmax(up, 1), FP32, what="upsample_argmax probabilities")


def test_a_non_contiguous_incoming_gradient_is_made_contiguous():
    """y.sum().backward() hands the backward an expanded (stride 0) gradient."""
    gen = torch.Generator().manual_seed(9)
    x, w = randn(gen, 2, 3, 7, 8, grad=True), randn(gen, 4, 3, 3, 3, grad=True)
    fct.conv2d(x, w, padding=1).sum().backward()
    ref_x, ref_w = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    F.conv2d(ref_x, ref_w, padding=1).sum().backward()
    assert_close(x.grad, ref_x.grad, FP32, what="grad x")
    assert_close(w.grad, ref_w.grad, FP32, what="grad w")


def test_every_extra_asks_for_the_torch_fcn_cuda_torch_needs():
    """pyproject.toml's torch floors (the test, torch and dist extras) are one: the version fcn_cuda.torch checks."""
    floors = re.findall(r'"torch>=([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    checked = re.findall(r'torch.__version__ < "([0-9.]+)"', (ROOT / "fcn_cuda" / "torch" / "__init__.py").read_text())
    assert len(floors) == 3 and set(floors) == set(checked) == {"2.4"}, (floors, checked)


def test_the_cpu_path_is_zero_copy():
    t = torch.randn(2, 3, 4, 5)
    a = to_array(t, "x", t.device)
    assert isinstance(a, np.ndarray) and a.ctypes.data == t.data_ptr()
    y = np.ones((2, 3), np.float32)
    assert to_tensor(y).data_ptr() == y.ctypes.data


def test_using_switches_the_backend_of_its_thread_only(monkeypatch):
    """Ops run from any thread (autograd's workers too) without switching another thread's backend."""
    elsewhere = _backend.Backend("elsewhere", None, None)
    monkeypatch.setattr(_backend, "_active", elsewhere)
    seen = {}
    with _backend.using("host") as be:
        worker = threading.Thread(target=lambda: seen.update(worker=_backend.active()))
        worker.start()
        worker.join()
        assert _backend.active() is be and be.name == "host"
    assert seen["worker"] is elsewhere and _backend.active() is elsewhere


@pytest.mark.parametrize("switch", ["use_backend", "using"])
def test_backend_names_are_checked_alike(switch):
    """use_backend and using take the same names: a str, any case, blanks ignored; others refused."""
    def select(name):
        if switch == "use_backend":
            _backend.use_backend(name)
            return _backend.active()
        with _backend.using(name) as be:
            return be

    assert select(" Host ").name == "host"
    with pytest.raises(TypeError, match="backend name must be a str, got int"):
        select(3)
    with pytest.raises(ValueError, match="backend must be 'host' or 'cuda', got 'gpu'"):
        select("gpu")


# ----------------------------------------------------------------------- bad input
def test_bool_arguments_are_checked_alike_in_ops_and_the_wrappers():
    """One check (fcn_cuda._validate.flag) for every bool argument: a bool or NumPy bool, never 1 or None."""
    x, w = torch.randn(2, 3, 9, 11), torch.randn(5, 3, 3, 3)
    labels = torch.zeros(2, 9, 11, dtype=torch.int32)
    calls = {  # name: (the torch wrapper, the ops call), each with the flag as its one argument
        "relu": (lambda v: fct.conv2d(x, w, relu=v), lambda v: ops.conv2d(x.numpy(), w.numpy(), relu=v)),
        "ceil_mode": (lambda v: fct.max_pool2d(x, 2, ceil_mode=v), lambda v: ops.max_pool2d(x.numpy(), 2, ceil_mode=v)),
        "return_indices": (lambda v: fct.max_pool2d(x, 2, return_indices=v),
                           lambda v: ops.max_pool2d(x.numpy(), 2, return_indices=v)),
        "normalize": (lambda v: fct.softmax_cross_entropy(x, labels, normalize=v),
                      lambda v: ops.softmax_cross_entropy(x.numpy(), labels.numpy(), normalize=v)),
    }

    def arrays(out):
        return [np.asarray(o) for o in (out if isinstance(out, tuple) else (out,))]

    for name, fns in calls.items():
        for fn in fns:
            for bad in (1, None, "yes"):
                with pytest.raises(TypeError, match=f"^{name} must be a bool, got {type(bad).__name__}$"):
                    fn(bad)
            for numpy_bool in (np.True_, np.False_):
                got, expected = arrays(fn(numpy_bool)), arrays(fn(bool(numpy_bool)))
                assert len(got) == len(expected) and all(np.array_equal(a, b) for a, b in zip(got, expected)), name


def test_bad_input_through_the_wrappers():
    x, w = torch.randn(2, 3, 9, 11), torch.randn(5, 3, 3, 3)
    cases = [
        (lambda: fct.conv2d(x.numpy(), w), TypeError, "x must be a torch.Tensor"),
        (lambda: fct.conv2d(x, w, bias=[0.0] * 5), TypeError, "bias must be a torch.Tensor or None"),
        (lambda: fct.conv2d(x.double(), w), TypeError, "x must be float32, got float64"),
        (lambda: fct.conv2d(x.bfloat16(), w), TypeError, "x: a torch.bfloat16 tensor cannot"),
        (lambda: fct.conv2d(x[0], w), ValueError, "x must be 4-D"),
        (lambda: fct.conv2d(x.transpose(2, 3), w), ValueError, "x must be C-contiguous"),
        (lambda: fct.conv2d(x, w[:, :2].contiguous()), ValueError, "w has 2 input channels"),
        (lambda: fct.conv2d(x, w, stride=0), ValueError, "stride must be >= 1"),
        (lambda: fct.conv2d(x, w, padding=(1, 2, 3)), ValueError, "padding must be an int or a pair"),
        (lambda: fct.conv2d(x, w, relu=1), TypeError, "relu must be a bool"),
        (lambda: fct.conv2d(x[:, :, :2].contiguous(), w), ValueError, "output size would be"),
        (lambda: fct.conv2d(torch.empty(0, 3, 4, 4), w), ValueError, "x is empty"),
        (lambda: fct.max_pool2d(x, 0), ValueError, "kernel_size must be >= 1"),
        (lambda: fct.max_pool2d(x, 2, ceil_mode=1), TypeError, "ceil_mode must be a bool"),
        (lambda: fct.max_pool2d(x, 12, 12, ceil_mode=False), ValueError, "leaves no output"),
        (lambda: fct.crop_add(x, x[:, :, :5].contiguous(), 0), ValueError, "outside b"),
        (lambda: fct.crop_add(x, x, -1), ValueError, "offset must be >= 0"),
        (lambda: fct.score_crop_add(x, x, w), ValueError, "w must be K x C x 1 x 1"),
        (lambda: fct.score_crop_add(x, x, torch.randn(3, 3, 1, 1), scale="big"), TypeError, "scale must be a real"),
        (lambda: fct.conv_transpose2d(x, w), ValueError, "w must be C_in x C_out x R x S with C_in"),
        (lambda: fct.upsample_argmax(x, torch.randn(3, 3, 4, 4), 2, (5, 5), 0), ValueError, "per-channel"),
        (lambda: fct.softmax_cross_entropy(x, torch.zeros(2, 9, 11, dtype=torch.int64)), TypeError,
         "labels must be int32"),
        (lambda: fct.softmax_cross_entropy(x, torch.full((2, 9, 11), 7, dtype=torch.int32)), ValueError,
         "labels must lie in"),
        (lambda: fct.softmax_cross_entropy(x, torch.zeros(2, 9, 11, dtype=torch.int32), normalize="yes"),
         TypeError, "normalize must be a bool"),
        (lambda: fct.dropout(x, 1.0), ValueError, "p must be in"),
        (lambda: fct.dropout(x, 0.5, seed=-1), ValueError, "seed must be >= 0"),
        (lambda: fct.dropout(x, 0.5, offset=-1), ValueError, "offset must be >= 0"),
        (lambda: fct.dense_crf(x[0].permute(1, 2, 0).contiguous(), x[0]), TypeError, "img must be uint8"),
        (lambda: fct.dense_crf(torch.zeros(9, 11, 3, dtype=torch.uint8), x[0], 1.5), TypeError,
         "iterations must be an int"),
        (lambda: fct.dense_crf(torch.zeros(9, 11, 3, dtype=torch.uint8), x[0].abs(), bilateral_srgb=0.0),
         ValueError, "bilateral_srgb must be > 0"),
        (lambda: fct.FCN("9s"), ValueError, "variant must be one of"),
        (lambda: fct.FCN.from_model("fcn8s.safetensors"), TypeError, "model must be an fcn_cuda.FCN"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


def test_dense_crf_is_the_engines_bit_for_bit():
    """fct.dense_crf hands the tensors to fcn_cuda.dense_crf (no copy, no
    other math): the same Q, bit for bit, for both rungs."""
    gen = torch.Generator().manual_seed(11)
    img = torch.randint(0, 256, (13, 17, 3), generator=gen, dtype=torch.uint8)
    probs = torch.softmax(torch.randn(4, 13, 17, generator=gen) * 3, 0)
    for variant, params in (("lattice", {}), ("naive", {"bilateral_sxy": 20.0, "gaussian_compat": 0.0})):
        q = fct.dense_crf(img, probs, 3, variant=variant, **params)
        ref = fcn_cuda.dense_crf(img.numpy(), probs.numpy(), 3, variant=variant, **params)
        assert q.dtype == torch.float32 and q.shape == probs.shape
        assert np.array_equal(q.numpy(), ref), variant


def test_ops_without_a_backward_kernel_refuse_clearly():
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    with pytest.raises(NotImplementedError, match="no backward kernel for softmax"):
        fct.softmax(x).sum().backward()
    with pytest.raises(NotImplementedError, match="no backward kernel for max_pool2d without indices"):
        torch.ops.fcn_cuda.max_pool2d(x, [2, 2], [2, 2], True).sum().backward()
    probs = torch.softmax(torch.randn(3, 4, 5), 0).requires_grad_(True)
    with pytest.raises(NotImplementedError, match="no backward kernel for dense_crf"):
        fct.dense_crf(torch.zeros(4, 5, 3, dtype=torch.uint8), probs, 1).sum().backward()
    fct.max_pool2d(x).sum().backward()  # the wrapper takes the indexed op where a gradient is wanted
    assert x.grad is not None


def test_importing_without_torch_is_a_clear_import_error():
    code = "import sys; sys.modules['torch'] = None\nimport fcn_cuda\nimport fcn_cuda.torch"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0
    assert "ImportError: fcn_cuda.torch needs PyTorch >= 2.4" in proc.stderr and "pip install torch" in proc.stderr


# ----------------------------------------------------------------------- the nn.Module
def engine_model(variant, at_once=False, seed=3, classes=5):
    """A small fcn_cuda.FCN with every weight random (score layers and biases too)."""
    m = fcn_cuda.FCN(variant, classes, widths=SMALL_WIDTHS, fc=SMALL_FC, seed=seed, at_once=at_once)
    rng = np.random.default_rng(seed)
    sd = m.state_dict()
    for k in sd:
        if k.startswith("score") or k.endswith(".bias"):
            sd[k] = (rng.standard_normal(sd[k].shape) * 0.1).astype(np.float32)
    m.load_state_dict(sd)
    return m


def images(seed, n, h, w):
    return np.random.default_rng(seed).uniform(-120, 130, (n, 3, h, w)).astype(np.float32)


@pytest.mark.parametrize("variant,at_once", [("32s", False), ("16s", False), ("8s", False), ("8s", True)],
                         ids=["32s", "16s", "8s", "8s-at-once"])
def test_module_forward_equals_the_engine_bit_for_bit(variant, at_once):
    model = engine_model(variant, at_once)
    net = fct.FCN.from_model(model).eval()
    assert [k for k, _ in net.named_parameters()] == list(model.state_dict())
    for n, h, w in ((2, 23, 37), (1, 1, 1)):
        x = images(n + h, n, h, w)
        with torch.no_grad():
            scores = net(torch.from_numpy(x))
            labels = net.labels(torch.from_numpy(x))
            lab2, probs = net.labels(torch.from_numpy(x), probs=True)
        np.testing.assert_array_equal(scores.numpy(), model(x))
        np.testing.assert_array_equal(labels.numpy(), model.labels(x))
        np.testing.assert_array_equal(lab2.numpy(), labels.numpy())
        np.testing.assert_array_equal(probs.numpy(), model.labels(x, probs=True)[1])


def test_module_loads_our_weight_files(tmp_path):
    """An fcn_cuda safetensors file, read by the safetensors package's torch loader, is a state dict for the module."""
    from safetensors.torch import load_file

    model = engine_model("16s")
    model.save(tmp_path / "fcn16s.safetensors")
    net = fct.FCN("16s", 5, widths=SMALL_WIDTHS, fc=SMALL_FC).eval()
    net.load_state_dict(load_file(tmp_path / "fcn16s.safetensors"))
    x = images(6, 1, 17, 22)
    with torch.no_grad():
        np.testing.assert_array_equal(net(torch.from_numpy(x)).numpy(), model(x))


def test_module_loads_pytorch_fcn_state_dicts_and_matches_it():
    ref_net = random_fcn("8s", seed=5, num_classes=5)
    net = fct.FCN("8s", 5, widths=SMALL_WIDTHS, fc=SMALL_FC).eval()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict_f32(ref_net).items()})
    x = images(1, 2, 29, 31)
    with torch.no_grad():
        assert_close(net(torch.from_numpy(x)), ref_net(torch.from_numpy(x).double()), FP32, what="scores")
    back = net.to_model()
    np.testing.assert_array_equal(back(x), net(torch.from_numpy(x)).detach().numpy())


def test_a_fresh_module_starts_as_a_fresh_engine_model():
    net = fct.FCN("16s", 4, widths=SMALL_WIDTHS, fc=SMALL_FC, seed=11)
    model = fcn_cuda.FCN("16s", 4, widths=SMALL_WIDTHS, fc=SMALL_FC, seed=11)
    for k, v in model.state_dict().items():
        assert torch.equal(net.state_dict()[k], torch.from_numpy(v)), k
    frozen = [k for k, p in net.named_parameters() if not p.requires_grad]
    assert frozen == ["upscore2.weight", "upscore16.weight"]
    assert net.conv1_1.padding == (100, 100) and net.upscore16.stride == (16, 16)


def test_a_frozen_trunk_still_passes_gradients_to_the_layers_after_it():
    """Blocks 1 and 2 frozen: they end in the fused inference kernel, block 3 on
    must keep its pool indices; its gradients are those of the fully trainable model."""
    model = engine_model("8s")
    x = torch.from_numpy(images(4, 2, 21, 19))
    labels = labels_for(torch.Generator().manual_seed(3), 2, 21, 19, 5)
    grads = []
    for frozen in (False, True):
        net = fct.FCN.from_model(model, dropout=False).train()
        for k, p in net.named_parameters():
            if frozen and k.startswith(("conv1_", "conv2_")):
                p.requires_grad_(False)
        fct.softmax_cross_entropy(net(x), labels).backward()
        grads.append({k: p.grad for k, p in net.named_parameters() if p.grad is not None})
    assert set(grads[1]) == {k for k in grads[0] if not k.startswith(("conv1_", "conv2_"))}
    for k, g in grads[1].items():
        assert torch.equal(g, grads[0][k]), k


def test_torch_compile_runs_the_module_without_a_graph_break():
    """fullgraph=True fails on any graph break. One small case: the first
    compile costs several seconds (dynamo and inductor; our ops stay opaque)."""
    model = engine_model("8s")
    net = fct.FCN.from_model(model).eval()
    torch._dynamo.reset()
    compiled = torch.compile(net, fullgraph=True)
    x = images(2, 2, 23, 37)
    started = time.perf_counter()
    with torch.no_grad():
        out = compiled(torch.from_numpy(x))
    print(f"torch.compile + first run: {time.perf_counter() - started:.1f} s")
    np.testing.assert_array_equal(out.numpy(), model(x))


def test_a_compiled_training_step_traces_our_backward_and_gives_eager_gradients():
    """The loss and its backward under torch.compile(fullgraph=True): the
    backward graph is our gradient ops. backend="aot_eager" traces exactly
    what inductor would (dynamo, then AOT autograd's joint forward/backward
    graph) and runs it eagerly: inductor's C++ build of this graph took
    about a minute on the 2-core CI machine."""
    model = engine_model("8s")
    net = fct.FCN.from_model(model, dropout=False).train()
    x = torch.from_numpy(images(5, 2, 23, 37))
    labels = labels_for(torch.Generator().manual_seed(5), 2, 23, 37, 5)
    torch._dynamo.reset()
    step = torch.compile(lambda x: fct.softmax_cross_entropy(net(x), labels), fullgraph=True, backend="aot_eager")
    step(x).backward()
    compiled = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
    net.zero_grad()
    fct.softmax_cross_entropy(net(x), labels).backward()
    assert len(compiled) == 36  # every trainable parameter (the upsampling is frozen)
    for k, p in net.named_parameters():
        if p.grad is not None:
            assert torch.equal(compiled[k], p.grad), k


# ----------------------------------------------------------------------- training: torch.optim vs our Trainer
def _sgd_for(net, lr, momentum, weight_decay):
    """torch.optim.SGD with the reference's groups: weights at lr with decay,
    biases at 2x lr without, upsampling frozen (not in the optimizer)."""
    weights = [p for k, p in net.named_parameters() if p.requires_grad and not k.endswith(".bias")]
    biases = [p for k, p in net.named_parameters() if p.requires_grad and k.endswith(".bias")]
    return torch.optim.SGD([{"params": weights, "weight_decay": weight_decay},
                            {"params": biases, "lr": 2 * lr, "weight_decay": 0.0}], lr=lr, momentum=momentum)


def _train_both(config, steps):
    """(Trainer losses, module losses, engine weights, module weights) after
    `steps` steps of the same batches from the same weights."""
    model = engine_model("8s", seed=4, classes=4)
    net = fct.FCN.from_model(model, dropout=config.dropout, dropout_seed=config.seed).train()
    trainer = Trainer(model, config)
    opt = _sgd_for(net, config.lr, config.momentum, config.weight_decay)
    gen = torch.Generator().manual_seed(12)
    ours, theirs = [], []
    for step in range(steps):
        x = images(step, 2, 19, 26)
        labels = labels_for(gen, 2, 19, 26, 4)
        ours.append(trainer.train_step(x, labels.numpy())[0])
        opt.zero_grad()
        loss = fct.softmax_cross_entropy(net(torch.from_numpy(x)), labels)
        loss.backward()
        opt.step()
        theirs.append(loss.item())
    return ours, theirs, model.state_dict(), {k: v.numpy() for k, v in net.state_dict().items()}


def test_torch_sgd_on_the_module_is_the_trainer_bit_for_bit():
    """Caffe's update v = mu v + lr (g + wd w), w -= v (the Trainer) and
    torch's b = mu b + (g + wd w), w -= lr b agree exactly when lr, 2 lr, mu
    and wd are powers of two: then v == lr * b holds in floating point too
    (scaling by 2^k is exact), and the gradients are the same kernels' bits.
    Dropout on: the module draws the Trainer's masks."""
    config = TrainConfig(lr=2.0 ** -14, momentum=0.5, weight_decay=2.0 ** -11, dropout=True, seed=7)
    ours, theirs, weights, net_weights = _train_both(config, steps=3)
    assert theirs == [float(np.float32(v)) for v in ours]
    assert ours[0] != ours[-1]
    for k, v in weights.items():
        np.testing.assert_array_equal(net_weights[k], v, err_msg=k)


def test_torch_sgd_on_the_module_follows_the_trainer_with_the_reference_momentum():
    """Momentum 0.99 and weight decay 5e-4 are not powers of two: the two
    updates round differently (torch rounds mu * b and b + (g + wd w) apart
    and scales by lr last; the kernel fuses them), by about one fp32 ulp of
    each step's update, and later gradients carry that on. Bound tested: the
    fp32 contract, 1e-5 relative, on every loss and every weight tensor
    (L2). Measured (2026-12-01, this recipe, 3 steps that move the weights
    by up to 12%): weights 4.0e-8, losses 9.3e-8 at most."""
    config = TrainConfig(lr=1e-7, momentum=0.99, weight_decay=5e-4, dropout=False)
    ours, theirs, weights, net_weights = _train_both(config, steps=3)
    for a, b in zip(ours, theirs):
        assert abs(a - b) <= FP32 * abs(a), (ours, theirs)
    initial = engine_model("8s", seed=4, classes=4).state_dict()
    for k, v in weights.items():
        assert_close(net_weights[k], v, FP32, what=k)
    worst = max(np.linalg.norm(net_weights[k] - v) / np.linalg.norm(v) for k, v in weights.items())
    print(f"torch.optim.SGD vs the Trainer after 3 steps: weights {worst:.1e}, losses "
          f"{max(abs(a - b) / abs(a) for a, b in zip(ours, theirs)):.1e} relative at most")
    moved = max(np.linalg.norm(v - initial[k]) / np.linalg.norm(initial[k]) for k, v in weights.items())
    assert moved > 0.01  # the steps trained: a mismatch in the recipe would show


# ----------------------------------------------------------------------- on a GPU
@pytest.mark.parametrize("case", OPCHECK_CASES)
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=needs_gpu)])
def test_cuda_ops_match_the_host(case, device):
    """Each op on CUDA tensors (DLPack to CuPy) against the same op on CPU
    tensors (the emulation of the same kernels), fp32 tolerance."""
    name, args = _opcheck_cases(device)[OPCHECK_CASES.index(case)]
    op = getattr(torch.ops.fcn_cuda, name).default
    on_gpu = op(*args)
    on_host = op(*[a.detach().cpu() if isinstance(a, torch.Tensor) else a for a in args])
    for g, h in zip(*(o if isinstance(o, tuple) else (o,) for o in (on_gpu, on_host))):
        assert g.device.type == "cuda" and g.dtype == h.dtype and g.shape == h.shape
        if g.dtype == torch.int32:
            assert torch.equal(g.cpu(), h)
        else:
            assert_close(g.cpu(), h, FP32, what=name)


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=needs_gpu)])
def test_cuda_ops_run_on_torchs_current_stream(device):
    """Work queued on a side stream before the op (a sleep, then writing the
    input) must finish before the op reads it: only a launch on that stream
    sees the written input. Autograd's backward runs on it too."""
    x = torch.zeros(2, 3, 33, 35, device=device)
    w = torch.randn(4, 3, 3, 3, device=device, requires_grad=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # about 25 ms: a launch on another stream would read zeros
        x.fill_(1.0)
        y = fct.conv2d(x, w, padding=1)
        y.sum().backward()
    side.synchronize()
    ref = F.conv2d(torch.ones_like(x), w.detach(), padding=1)
    assert_close(y.detach(), ref, FP32, what="conv2d on a side stream")
    ref_w = torch.nn.grad.conv2d_weight(torch.ones_like(x), w.shape, torch.ones_like(y), padding=1)
    assert_close(w.grad, ref_w, FP32, what="weight gradient on a side stream")


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=needs_gpu)])
def test_cuda_is_zero_copy_and_refuses_mixed_devices(device):
    t = torch.randn(2, 3, 4, 5, device=device)
    with device_backend(t.device):
        a = to_array(t, "x", t.device)
        assert a.data.ptr == t.data_ptr()
        assert to_tensor(a).data_ptr() == a.data.ptr
    with pytest.raises(ValueError, match="weight is on cpu but the first tensor argument is on cuda"):
        fct.conv2d(t, torch.randn(4, 3, 3, 3))


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=needs_gpu)])
def test_cuda_module_matches_the_cpu_module(device):
    model = engine_model("8s")
    net = fct.FCN.from_model(model).eval()
    x = torch.from_numpy(images(3, 2, 23, 37))
    with torch.no_grad():
        host = net(x)
        gpu = net.to(device)(x.to(device))
    assert_close(gpu.cpu(), host, FP32, what="FCN-8s on CUDA vs the emulation")
