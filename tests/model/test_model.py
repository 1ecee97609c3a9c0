"""The FCN model: geometry, parity with a PyTorch FCN, the FC -> conv
transplant, weight formats and their error paths."""

import numpy as np
import pytest
import safetensors.numpy
import torch
import torch.nn.functional as F

import fcn_cuda
from fcn_cuda import geometry as G
from fcn_cuda import model as M
from fcn_cuda import files
from fcn_cuda import weights as Wt
from fcn_cuda.weights import pth

from _util import FP32, assert_close, to_numpy
from torch_fcn import SMALL_FC, SMALL_WIDTHS, TorchFCN, random_fcn, state_dict_f32


def test_offsets_come_from_the_geometry():
    assert G.head_geometry("32s") == {"upscore": 19}
    assert G.head_geometry("16s") == {"score_pool4": 5, "upscore16": 27}
    assert G.head_geometry("8s") == {"score_pool4": 5, "score_pool3": 9, "upscore8": 31}


def test_geometry_matches_the_reference_description():
    g = G.Geometry()
    for b, block in enumerate(G.VGG16_BLOCKS):
        for i in range(len(block)):
            g = g.conv(3, 1, 100 if b == i == 0 else 1)
        g = g.conv(2, 2)
    g = g.conv(7)
    assert (g.scale, g.shift) == (32, 12.5)  # "a score_fr cell x sits at input coordinate 32x + 12.5"


def run_ours(net, x, **kw):
    model = fcn_cuda.load_model(state_dict_f32(net), **kw)
    be = fcn_cuda._backend.active()
    return to_numpy(model(be.xp.asarray(x.astype(np.float32))))


def check_scores(ours, ref):
    assert_close(ours, ref, FP32, what="scores")
    labels, ref_labels = ours.argmax(1), ref.argmax(1)
    top2 = np.sort(ref, axis=1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > 1e-4 * np.abs(ref).max()
    assert (labels[decisive] == ref_labels[decisive]).all()


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
@pytest.mark.parametrize("size", [(1, 1), (37, 53), (100, 64), (131, 97)])
@pytest.mark.parametrize("bilinear", [True, False], ids=["bilinear", "general"])
def test_parity_with_pytorch_fcn(be, variant, size, bilinear):
    net = random_fcn(variant, seed=hash((variant, size)) % 1000, bilinear=bilinear)
    x = np.random.default_rng(0).uniform(-120, 130, size=(1, 3, *size))
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    check_scores(run_ours(net, x), ref)


@pytest.mark.parametrize("variant", ["16s", "8s"])
@pytest.mark.parametrize("size", [(1, 1), (37, 53), (131, 97)])
def test_shift_scores_moves_every_output_score_by_its_class_offset(be, variant, size):
    net = random_fcn(variant, seed=7, num_classes=5)
    model = fcn_cuda.load_model(state_dict_f32(net))
    x = be.xp.asarray(np.random.default_rng(2).uniform(-120, 130, size=(2, 3, *size)).astype(np.float32))
    before = to_numpy(model(x))
    offset = np.array([0.0, -1.6, -1.75, -2.0, 0.5])
    model.shift_scores(offset)
    after = to_numpy(model(x))
    np.testing.assert_allclose(after - before, np.broadcast_to(offset[None, :, None, None], before.shape),
                               rtol=0, atol=1e-6 * (1 + np.abs(before).max()))  # every pixel, borders too
    assert to_numpy(model.labels(x)).tolist() == after.argmax(1).tolist()


def test_trained_fcn_weights_refuse_a_variant_or_class_count_they_do_not_have(be):
    """variant and num_classes shape a VGG16 transplant; given with FCN weights they must match them, never be
    dropped without a word."""
    sd = state_dict_f32(random_fcn("8s", seed=1, num_classes=3))
    with pytest.raises(ValueError, match="the weights are FCN-8s, not FCN-16s"):
        fcn_cuda.load_model(sd, variant="16s")
    with pytest.raises(ValueError, match="the weights have 3 classes, not 4"):
        fcn_cuda.load_model(sd, num_classes=4)
    model = fcn_cuda.load_model(sd, variant="8s", num_classes=3)
    assert (model.variant, model.num_classes) == ("8s", 3)


def test_shift_scores_refuses_bad_offsets_and_trained_upsampling(be):
    model = fcn_cuda.load_model(state_dict_f32(random_fcn("8s", seed=1, num_classes=3)))
    before = model.state_dict()
    for bad in ([0.0, 1.0], [0.0, np.nan, 1.0], [[0.0, 0.0, 0.0]]):
        with pytest.raises(ValueError, match="3 finite numbers"):
            model.shift_scores(bad)
    trained = fcn_cuda.load_model(state_dict_f32(random_fcn("8s", seed=1, num_classes=3, bilinear=False)))
    with pytest.raises(ValueError, match="upscore8 is not a bilinear upsampling"):
        trained.shift_scores([0.0, 1.0, 2.0])
    fcn32 = fcn_cuda.load_model(state_dict_f32(random_fcn("32s", seed=1, num_classes=3)))
    with pytest.raises(ValueError, match="FCN-32s has no bias"):
        fcn32.shift_scores([0.0, 1.0, 2.0])
    assert model.scores_shiftable() and not trained.scores_shiftable() and not fcn32.scores_shiftable()
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])  # nothing changed


def test_bilinear_kernels_pass_constants_and_others_do_not():
    from fcn_cuda import bilinear_weights

    for k, stride in ((4, 2), (16, 8), (32, 16), (64, 32)):
        assert M.passes_constants(bilinear_weights(3, k), stride)
    w = bilinear_weights(3, 16)
    w[1, 1, 0, 0] += 0.01
    assert not M.passes_constants(w, 8)
    w = bilinear_weights(3, 4)
    w[0, 1] = w[0, 0]  # not per-channel
    assert not M.passes_constants(w, 2)


@pytest.mark.parametrize("variant", ["16s", "8s"])
def test_parity_batch_and_at_once(be, variant):
    net = random_fcn(variant, seed=3, at_once=True)
    x = np.random.default_rng(1).uniform(-120, 130, size=(2, 3, 29, 41))
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    check_scores(run_ours(net, x, at_once=True), ref)


def test_fc_to_conv_transplant_gives_the_classifier_logits(be):
    """A VGG16-style classifier (reduced width, random weights) on a 224x224
    image; the convolutionalized trunk (conv1_1 pad 1) gives the same logits
    at its single output cell."""
    torch.manual_seed(0)
    widths, fc, classes = SMALL_WIDTHS, SMALL_FC, 10
    layers, c = [], 3
    for block in widths:
        for k in block:
            layers += [torch.nn.Conv2d(c, k, 3, padding=1), torch.nn.ReLU()]
            c = k
        layers.append(torch.nn.MaxPool2d(2, 2))
    features = torch.nn.Sequential(*layers).double()
    classifier = torch.nn.Sequential(torch.nn.Linear(c * 49, fc), torch.nn.ReLU(), torch.nn.Dropout(),
                                     torch.nn.Linear(fc, fc), torch.nn.ReLU(), torch.nn.Dropout(),
                                     torch.nn.Linear(fc, classes)).double().eval()
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64) * 50
    with torch.no_grad():
        logits = classifier(torch.flatten(features(x), 1)).numpy()[0]
    sd = {f"features.{k}": v for k, v in features.state_dict().items()}
    sd.update({f"classifier.{k}": v for k, v in classifier.state_dict().items()})
    sd = {k: v.float() for k, v in sd.items()}
    model = fcn_cuda.load_model(sd, variant="32s", num_classes=classes)
    w8 = sd["classifier.6.weight"].numpy()
    model.params["score_fr.weight"] = be.xp.asarray(w8.reshape(classes, fc, 1, 1))
    model.params["score_fr.bias"] = be.xp.asarray(sd["classifier.6.bias"].numpy())
    model.conv1_pad = 1
    score = to_numpy(model.score_fr(be.xp.asarray(x.numpy().astype(np.float32)), {}))
    assert score.shape == (1, classes, 1, 1)
    assert_close(score[0, :, 0, 0], logits, FP32, what="logits")


# ------------------------------------------------------------------ weights
def test_fresh_model_follows_the_reference_initialization():
    fcn_cuda.use_backend("host")
    m = fcn_cuda.FCN("8s", 5, widths=SMALL_WIDTHS, fc=SMALL_FC)
    sd = m.state_dict()
    assert not sd["score_fr.weight"].any() and not sd["score_pool3.weight"].any()
    np.testing.assert_array_equal(sd["upscore8.weight"], fcn_cuda.bilinear_weights(5, 16))
    assert list(sd)[0] == "conv1_1.weight" and sd["fc6.weight"].shape == (SMALL_FC, 16, 7, 7)
    full = fcn_cuda.FCN("32s", 21).state_dict()
    trunk = sum(v.size for k, v in full.items() if k.startswith(("conv", "fc")))
    assert trunk == 134_260_544  # docs/fcn-reference.md: the convolutionalized VGG16 trunk has 134,260,544
    assert full["upscore.weight"].shape == (21, 21, 64, 64)


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
def test_own_file_round_trip(tmp_path, variant):
    fcn_cuda.use_backend("host")
    m = fcn_cuda.FCN(variant, 4, widths=SMALL_WIDTHS, fc=SMALL_FC, seed=7, at_once=variant == "8s")
    path = tmp_path / "m.safetensors"
    m.save(path)
    back = fcn_cuda.load_model(path)
    assert back.variant == variant and back.num_classes == 4 and back.at_once == (variant == "8s")
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"], "a temporary file was left behind"
    assert path.stat().st_mode & 0o777 == 0o644, "the temp file's private mode leaked into the result"


def test_class_names_travel_with_the_weights(tmp_path):
    fcn_cuda.use_backend("host")
    names = ("background", "circle", "rectangle", "triangle")
    path = tmp_path / "m.safetensors"
    fcn_cuda.FCN("32s", 4, widths=SMALL_WIDTHS, fc=SMALL_FC, class_names=names).save(path)
    assert fcn_cuda.load_model(path).class_names == names
    fcn_cuda.FCN("32s", 4, widths=SMALL_WIDTHS, fc=SMALL_FC).save(path)
    assert fcn_cuda.load_model(path).class_names is None
    with pytest.raises(ValueError, match="4 non-empty strings"):
        fcn_cuda.FCN("32s", 4, widths=SMALL_WIDTHS, fc=SMALL_FC, class_names=names[:3])
    sd, meta = Wt.load_safetensors(path)
    for bad in ('["a", "b"]', "not json", '{"a": 1}', '["a", "b", "c", 4]'):
        Wt.save_safetensors(path, sd, {**meta, "classes": bad})
        with pytest.raises(Wt.WeightFileError, match="'classes' metadata"):
            fcn_cuda.load_model(path)


def test_safetensors_interoperates_with_the_reference_library(tmp_path):
    fcn_cuda.use_backend("host")
    m = fcn_cuda.FCN("16s", 3, widths=SMALL_WIDTHS, fc=SMALL_FC, seed=1)
    m.save(tmp_path / "ours.safetensors")
    theirs = safetensors.numpy.load_file(str(tmp_path / "ours.safetensors"))
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(theirs[k], v)
    safetensors.numpy.save_file(theirs, str(tmp_path / "theirs.safetensors"))
    back = fcn_cuda.load_model(tmp_path / "theirs.safetensors")
    np.testing.assert_array_equal(back.state_dict()["fc6.weight"], m.state_dict()["fc6.weight"])


def test_files_our_own_writer_made_load_bit_for_bit():
    """The shipped model was written by the hand-written writer that the
    safetensors package replaced: it reads as its header and offsets say,
    value for value and bit for bit (parsed here from the format's spec)."""
    import json
    import struct

    from fcn_cuda.inference import DEFAULT_WEIGHTS

    raw = DEFAULT_WEIGHTS.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__")
    tensors, got_meta = Wt.load_safetensors(DEFAULT_WEIGHTS)
    assert got_meta == meta and set(tensors) == set(header)
    for name, info in header.items():
        begin, end = info["data_offsets"]
        assert info["dtype"] == "F32" and tensors[name].dtype == np.float32
        expected = np.frombuffer(raw[8 + n + begin:8 + n + end], "<f4").reshape(info["shape"])
        assert tensors[name].tobytes() == expected.tobytes(), name


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
def test_pytorch_fcn_state_dicts_and_checkpoints(tmp_path, variant):
    fcn_cuda.use_backend("host")
    net = TorchFCN(variant, 21).float()
    sd = net.state_dict()
    torch.save(sd, tmp_path / "plain.pth")
    torch.save({"epoch": 3, "iteration": 100, "model_state_dict": sd, "optim_state_dict": {}}, tmp_path / "ckpt.pth")
    for src in (sd, tmp_path / "plain.pth", tmp_path / "ckpt.pth"):
        m = fcn_cuda.load_model(src)
        assert m.variant == variant
        np.testing.assert_array_equal(m.state_dict()["score_fr.weight"], sd["score_fr.weight"].numpy())


def test_torchvision_vgg16_import():
    fcn_cuda.use_backend("host")
    idx = pth.VGG16_FEATURES
    sd, c = {}, 3
    widths = [k for block in SMALL_WIDTHS for k in block]
    for i, k in zip(idx, widths):
        sd[f"features.{i}.weight"] = torch.randn(k, c, 3, 3)
        sd[f"features.{i}.bias"] = torch.randn(k)
        c = k
    sd["classifier.0.weight"], sd["classifier.0.bias"] = torch.randn(SMALL_FC, c * 49), torch.randn(SMALL_FC)
    sd["classifier.3.weight"], sd["classifier.3.bias"] = torch.randn(SMALL_FC, SMALL_FC), torch.randn(SMALL_FC)
    sd["classifier.6.weight"], sd["classifier.6.bias"] = torch.randn(1000, SMALL_FC), torch.randn(1000)
    m = fcn_cuda.load_model(sd, variant="8s")
    got = m.state_dict()
    np.testing.assert_array_equal(got["fc6.weight"], sd["classifier.0.weight"].numpy().reshape(SMALL_FC, c, 7, 7))
    np.testing.assert_array_equal(got["conv5_3.bias"], sd["features.28.bias"].numpy())
    assert not got["score_fr.weight"].any() and not got["score_pool3.bias"].any()
    np.testing.assert_array_equal(got["upscore2.weight"], fcn_cuda.bilinear_weights(21, 4))


def test_state_dict_errors_list_every_problem():
    fcn_cuda.use_backend("host")
    sd = fcn_cuda.FCN("8s", 3, widths=SMALL_WIDTHS, fc=SMALL_FC).state_dict()
    del sd["fc7.bias"]
    sd["conv2_1.weight"] = np.zeros((8, 5, 3, 3), np.float32)
    sd["extra.weight"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError) as e:
        fcn_cuda.load_model(sd)
    msg = str(e.value)
    assert "missing keys: ['fc7.bias']" in msg and "extra.weight" in msg and "conv2_1.weight" in msg


def test_bad_weight_files(tmp_path):
    fcn_cuda.use_backend("host")
    m = fcn_cuda.FCN("32s", 3, widths=SMALL_WIDTHS, fc=SMALL_FC)
    good = tmp_path / "good.safetensors"
    m.save(good)
    raw = good.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(raw[: len(raw) // 2])
    # The reasons are the safetensors package's, after the file's name.
    for name, data, reason in (("trunc", raw[: len(raw) // 2], "not fully covered"), ("tiny", b"abc", "too small"),
                               ("junk", b"\x08\x00\x00\x00\x00\x00\x00\x00notjson!", "JSON")):
        (tmp_path / f"{name}.safetensors").write_bytes(data)
        with pytest.raises(Wt.WeightFileError, match=f"{name}.safetensors: truncated, damaged .*{reason}"):
            fcn_cuda.load_model(tmp_path / f"{name}.safetensors")
    (tmp_path / "bad.pth").write_bytes(b"not a zip")
    with pytest.raises(Wt.WeightFileError, match="torch.load"):
        fcn_cuda.load_model(tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError):
        fcn_cuda.load_model(tmp_path / "missing.safetensors")
    with pytest.raises(TypeError, match="src"):
        fcn_cuda.load_model(42)


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    fcn_cuda.use_backend("host")
    m = fcn_cuda.FCN("32s", 3, widths=SMALL_WIDTHS, fc=SMALL_FC)
    path = tmp_path / "m.safetensors"
    m.save(path)
    before = path.read_bytes()

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        fcn_cuda.FCN("32s", 3, widths=SMALL_WIDTHS, fc=SMALL_FC, seed=9).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_model_validates_its_input():
    fcn_cuda.use_backend("host")
    m = fcn_cuda.FCN("32s", 3, widths=SMALL_WIDTHS, fc=SMALL_FC)
    with pytest.raises(ValueError, match="3 channels"):
        m(np.zeros((1, 4, 8, 8), np.float32))
    with pytest.raises(ValueError, match="4-D"):
        m(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(TypeError, match="float32"):
        m(np.zeros((1, 3, 8, 8), np.float64))
    with pytest.raises(ValueError, match="variant"):
        fcn_cuda.FCN("4s")


def test_nothing_below_training_imports_it():
    """The package's import graph (imports inside functions included): no
    module that training.py needs leads back to training (weights.py once
    imported training.deployed: model -> weights -> training -> model).
    One edge is left out, by name: training.train imports distributed, which
    extends training (DataParallelTrainer), when it is called, to pick the
    Trainer of a torchrun rank; distributed is above training, not below."""
    import ast
    from pathlib import Path

    root = Path(fcn_cuda.__file__).parent
    graph = {}
    call_time = set()  # training.train's imports
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        skipped = set()
        if name == "fcn_cuda.training":
            train = [f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "train"]
            skipped = {id(n) for n in ast.walk(train[0]) if isinstance(n, ast.ImportFrom)}
            call_time = {n.module for n in ast.walk(train[0]) if isinstance(n, ast.ImportFrom)}
        targets = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level else ""
                mod = ".".join(p for p in (base, node.module) if p)
                targets.add(mod)
                targets.update(f"{mod}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
        # importing a.b.c runs a.b's __init__ too
        graph[name] = {t.rsplit(".", i)[0] for t in targets if t.startswith("fcn_cuda.") for i in range(t.count("."))}
    graph = {k: {t for t in v if t in graph and t != "fcn_cuda"} for k, v in graph.items()}
    assert "fcn_cuda.weights.caffe" in graph and "fcn_cuda.weights" in graph["fcn_cuda.training"]
    assert call_time == {"distributed"}, call_time

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for t in graph[todo.pop()] - seen:
                seen.add(t)
                todo.append(t)
        return seen

    below = reach("fcn_cuda.training") - {"fcn_cuda.training"}
    assert "fcn_cuda.model" in below and "fcn_cuda.files" in below
    leading_back = sorted(m for m in below if "fcn_cuda.training" in reach(m))
    assert not leading_back, f"these modules below training import it: {leading_back}"
