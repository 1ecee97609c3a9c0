"""Caffe .caffemodel files: read_caffemodel against OpenCV's Caffe importer
on real files (tests/data, SOURCES.md there) and on FCN nets written by
tests/caffe_encoder.py in every encoding Caffe and protobuf allow;
load_model of the reference's FCN nets and of VGG16 (the transplant); the
error paths. Only the OpenCV comparisons need OpenCV (a test extra)."""

import hashlib
import re

import numpy as np
import pytest
import torch

import fcn_cuda
from fcn_cuda import cli
from fcn_cuda import weights as Wt
from fcn_cuda.colors import VOC_CLASSES
from fcn_cuda.files import WeightFileError

import caffe_encoder as E
from _util import FP32, REQUIRE_EXTRAS, TESTS, assert_close, needs_extra
from torch_fcn import SMALL_FC, SMALL_WIDTHS, random_fcn, state_dict_f32

DATA = TESTS / "data"
REAL = {"lenet_v2": "lenet_v2.prototxt", "lenet_v1": "lenet_v1.prototxt", "cifar10_quick_v1": "cifar10_quick_v1.prototxt"}


@pytest.fixture(autouse=True)
def host():
    fcn_cuda.use_backend("host")


def opencv_blobs(prototxt, caffemodel):
    """{layer: [blobs]} as OpenCV's Caffe importer (its own protobuf parser) reads them. Only the tests
    that call this need OpenCV (opencv-python-headless<5)."""
    cv2 = needs_extra("cv2", "the comparison with OpenCV's Caffe importer")
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    return net, {name: [np.asarray(b) for b in net.getLayer(name).blobs] for name in net.getLayerNames()}


def assert_same_blobs(ours, theirs):
    """Every layer with blobs in either reader, each blob equal bit for bit
    (OpenCV drops leading 1-dims: shapes compared without them)."""
    assert {k for k, v in ours.items() if v} == {k for k, v in theirs.items() if v}
    for name, blobs in theirs.items():
        assert len(ours.get(name, [])) == len(blobs), name
        for i, (a, b) in enumerate(zip(ours.get(name, []), blobs)):
            assert np.squeeze(a).shape == np.squeeze(b).shape, (name, i, a.shape, b.shape)
            np.testing.assert_array_equal(a.reshape(-1).astype(np.float32), b.reshape(-1), err_msg=f"{name} blob {i}")


def test_a_missing_test_extra_skips_or_fails_as_the_environment_says(monkeypatch):
    """needs_extra: a module that is not there skips the test, or fails it where
    FCN_CUDA_REQUIRE_TEST_EXTRAS=1 (CI installs every extra: a skip there would hide a broken install)."""
    assert needs_extra("numpy", "this check") is np
    monkeypatch.delenv(REQUIRE_EXTRAS, raising=False)
    with pytest.raises(pytest.skip.Exception, match="the comparison needs no_such_module_x, a test extra"):
        needs_extra("no_such_module_x", "the comparison")
    monkeypatch.setenv(REQUIRE_EXTRAS, "1")
    with pytest.raises(pytest.fail.Exception, match=f"{REQUIRE_EXTRAS}=1 requires every test extra"):
        needs_extra("no_such_module_x", "the comparison")


# ----------------------------------------------------------------- real files
def test_real_files_are_the_ones_in_sources_md():
    rows = re.findall(r"^\| (\S+) \|.*\| ([0-9a-f]{64}) \|$", (DATA / "SOURCES.md").read_text(), re.M)
    assert {name for name, _ in rows} == {p.name for p in DATA.iterdir() if p.name != "SOURCES.md"}
    for name, digest in rows:
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_caffemodels_read_as_opencv_reads_them(name):
    ours = fcn_cuda.read_caffemodel(DATA / f"{name}.caffemodel")
    _, theirs = opencv_blobs(DATA / REAL[name], DATA / f"{name}.caffemodel")
    assert_same_blobs(ours, theirs)
    assert "pool1" in ours and ours["pool1"] == []  # layers without blobs are listed too
    conv1 = ours["conv1"][0]
    assert not conv1.flags.writeable and not conv1.flags.owndata  # a view into the mapped file, not a copy


def test_real_caffemodels_shapes_as_stored():
    """SOURCES.md's shapes: the V2 net's BlobShape, the V1 net's legacy 4-D dims."""
    v2 = fcn_cuda.read_caffemodel(DATA / "lenet_v2.caffemodel")
    v1 = fcn_cuda.read_caffemodel(DATA / "lenet_v1.caffemodel")
    assert [b.shape for b in v2["conv1"]] == [(20, 1, 5, 5), (20,)]
    assert [b.shape for b in v2["ip1"]] == [(500, 800), (500,)]
    assert [b.shape for b in v1["conv2"]] == [(50, 20, 5, 5), (1, 1, 1, 50)]
    assert [b.shape for b in v1["ip2"]] == [(1, 1, 10, 500), (1, 1, 1, 10)]
    assert list(v2) == ["mnist", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "loss"]


def test_real_caffemodels_are_not_fcns():
    with pytest.raises(WeightFileError, match=r"lenet_v2.caffemodel is neither an FCN nor VGG16"):
        fcn_cuda.load_model(DATA / "lenet_v2.caffemodel")


# ----------------------------------------------------------------- FCN nets
def small_fcn(variant, at_once=False, num_classes=5, seed=1):
    """A reduced-width FCN's state dict with random weights everywhere (upsampling too)."""
    return state_dict_f32(random_fcn(variant, seed=seed, bilinear=False, num_classes=num_classes, at_once=at_once,
                                     widths=SMALL_WIDTHS, fc=SMALL_FC))


ENCODINGS = {  # name: (V1 net, blob options)
    "v2": (False, {}),
    "v2-legacy-dims": (False, dict(legacy=True)),
    "v2-double": (False, dict(double=True)),
    "v2-unpacked": (False, dict(packed=False, shape_packed=False)),
    "v1-legacy-dims": (True, dict(legacy=True)),
    "v1-double-unpacked": (True, dict(legacy=True, double=True, packed=False)),
    "v2-float": (False, {}),  # the double nets' twins, for OpenCV
    "v1-float-unpacked": (True, dict(legacy=True, packed=False)),
}
CASES = [("32s", False, "v2"), ("16s", False, "v1-legacy-dims"), ("8s", False, "v2-unpacked"),
         ("8s", True, "v2-legacy-dims"), ("8s", False, "v2-double"), ("16s", False, "v1-double-unpacked"),
         ("8s", True, "v2")]


def write_fcn(path, sd, at_once, encoding):
    v1, options = ENCODINGS[encoding]
    path.write_bytes(E.net(E.fcn_layers(sd, v1=v1, at_once=at_once, **options)))
    return path


@pytest.mark.parametrize("variant,at_once,encoding", CASES)
def test_fcn_caffemodel_loads_exactly_and_opencv_reads_it_alike(tmp_path, monkeypatch, variant, at_once, encoding):
    monkeypatch.setattr(Wt.caffe, "RELEASE_EVERY", 4096 + 12)  # copies in many slices, not page-aligned
    sd = small_fcn(variant, at_once)
    path = write_fcn(tmp_path / "fcn.caffemodel", sd, at_once, encoding)
    model = fcn_cuda.load_model(path)
    assert (model.variant, model.num_classes, model.at_once, model.class_names) == (variant, 5, at_once, None)
    got = model.state_dict()
    assert set(got) == set(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    prototxt = tmp_path / "fcn.prototxt"
    prototxt.write_text(E.fcn_prototxt(sd, (37, 45), at_once))
    # OpenCV, with protobuf's own parser, reads the encoder's bytes as we do. Its importer
    # refuses double_data (it asserts raw_data there): it reads those nets' float twin.
    twin = write_fcn(tmp_path / "twin.caffemodel", sd, at_once, encoding.replace("double", "float"))
    _, theirs = opencv_blobs(prototxt, twin if "double" in encoding else path)
    assert_same_blobs(fcn_cuda.read_caffemodel(path), theirs)


@pytest.mark.parametrize("variant,at_once", [("32s", False), ("16s", False), ("8s", False), ("8s", True)])
def test_loaded_fcn_runs_as_caffe_semantics_say(tmp_path, variant, at_once):
    """The loaded model's forward is bit for bit that of a model built from
    the same arrays, and matches OpenCV running the reference's net from the
    same caffemodel (its pad 100, ceil-mode pooling, crops, Scale layers).
    OpenCV runs with Winograd off: on, its 3x3 convolutions alone differ
    from float64 by up to 1e-5."""
    sd = small_fcn(variant, at_once)
    path = write_fcn(tmp_path / "fcn.caffemodel", sd, at_once, "v2")
    prototxt = tmp_path / "fcn.prototxt"
    prototxt.write_text(E.fcn_prototxt(sd, (37, 45), at_once))
    x = (np.random.default_rng(0).standard_normal((2, 3, 37, 45)) * 50).astype(np.float32)
    out = np.asarray(fcn_cuda.load_model(path)(x))
    same = np.asarray(fcn_cuda.FCN(variant, 5, at_once=at_once, state_dict=sd)(x))
    np.testing.assert_array_equal(out, same)
    net, _ = opencv_blobs(prototxt, path)
    net.enableWinograd(False)
    net.setInput(x)
    assert_close(out, net.forward(), FP32, what=f"FCN-{variant} against OpenCV")


def test_pascal_nets_carry_the_voc_class_names(tmp_path):
    sd = small_fcn("8s", num_classes=21)
    model = fcn_cuda.load_model(write_fcn(tmp_path / "fcn8s-heavy-pascal.caffemodel", sd, False, "v2"))
    assert model.class_names == VOC_CLASSES
    assert fcn_cuda.load_model(write_fcn(tmp_path / "fcn8s-heavy.caffemodel", sd, False, "v2")).class_names is None


@pytest.mark.parametrize("suffix", [".bin", ""])
def test_formats_are_told_by_content(tmp_path, suffix):
    sd = small_fcn("32s")
    caffe = write_fcn(tmp_path / f"net{suffix}", sd, False, "v1-legacy-dims")
    fcn_cuda.FCN("32s", 5, state_dict=sd).save(tmp_path / f"own{suffix}")
    for path in (caffe, tmp_path / f"own{suffix}"):
        got = fcn_cuda.load_model(path).state_dict()
        np.testing.assert_array_equal(got["fc6.weight"], sd["fc6.weight"])
    assert Wt.file_format(caffe) == "caffe" and Wt.file_format(tmp_path / f"own{suffix}") == "safetensors"
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / f"pt{suffix}")
    assert Wt.file_format(tmp_path / f"pt{suffix}") == "pth"
    np.testing.assert_array_equal(fcn_cuda.load_model(tmp_path / f"pt{suffix}").state_dict()["fc7.bias"], sd["fc7.bias"])


# ----------------------------------------------------------------- blob encodings
def read_blob(tmp_path, blob):
    path = tmp_path / "blob.caffemodel"
    path.write_bytes(E.net([E.layer("l", "Convolution", [blob])]))
    return fcn_cuda.read_caffemodel(path)["l"][0]


def test_blob_encodings(tmp_path, rng):
    a = rng.standard_normal((3, 2, 4, 5)).astype(np.float32)
    for options in ({}, dict(legacy=True), dict(packed=False), dict(shape_packed=False), dict(double=True),
                    dict(double=True, packed=False)):
        got = read_blob(tmp_path, E.blob(a, **options))
        assert got.shape == a.shape and got.dtype == (np.float64 if options.get("double") else np.float32)
        np.testing.assert_array_equal(got, a, err_msg=str(options))
    # As Caffe's Blob::FromProto: legacy dims over BlobShape, double_data over data.
    assert read_blob(tmp_path, E.shape([99]) + E.blob(a, legacy=True)).shape == a.shape
    doubles = a.astype(np.float64) * 2
    np.testing.assert_array_equal(read_blob(tmp_path, E.values(a) + E.values(doubles, double=True) + E.shape(a.shape)),
                                  doubles)
    # A repeated field may come in pieces, packed and not: they join in order.
    flat = a.reshape(-1)
    split = E.shape([flat.size]) + E.values(flat[:7], packed=False) + E.values(flat[7:30]) + E.values(flat[30:], packed=False)
    np.testing.assert_array_equal(read_blob(tmp_path, split), flat)
    # Unset legacy dims are Caffe's 0 (an empty blob); no shape at all is a scalar.
    assert read_blob(tmp_path, E.number(1, 3) + E.values([])).shape == (3, 0, 0, 0)
    assert read_blob(tmp_path, E.values([2.5])).shape == ()


@pytest.mark.parametrize("blob,match", [
    (E.shape([4]) + E.values(np.zeros(3)), r"holds 3 values for its shape \(4,\)"),
    (E.shape([-2]), r"shape \(-2,\)"),
    (E.message(5, b"\x00" * 6), "packed float32 data of 6 bytes"),
])
def test_bad_blobs(tmp_path, blob, match):
    with pytest.raises(WeightFileError, match=match):
        read_blob(tmp_path, blob)


# ----------------------------------------------------------------- VGG16
def vgg16(seed=2):
    """A reduced-width VGG16 under our names (fc6 / fc7 as convolutions)."""
    sd = state_dict_f32(random_fcn("32s", seed=seed, widths=SMALL_WIDTHS, fc=SMALL_FC))
    return {k: v for k, v in sd.items() if k.startswith(("conv", "fc"))}


@pytest.mark.parametrize("variant,num_classes", [("32s", 21), ("8s", 3)])
def test_vgg16_caffemodel_is_the_transplant(tmp_path, variant, num_classes):
    """VGG_ILSVRC_16_layers (a V1 net, fc6 / fc7 / fc8 InnerProduct, legacy
    dims) loads as the torchvision import of the same weights does: fc6 /
    fc7 convolutionalized, score layers zero, upsampling bilinear, fc8 dropped."""
    sd = vgg16()
    path = tmp_path / "VGG_ILSVRC_16_layers.caffemodel"
    path.write_bytes(E.net(E.vgg16_layers(sd)))
    got = fcn_cuda.load_model(path, variant=variant, num_classes=num_classes).state_dict()
    idx = Wt.pth.VGG16_FEATURES
    names = [k[:-len(".weight")] for k in sd if k.startswith("conv") and k.endswith(".weight")]
    tv = {}
    for name, i in zip(names, idx):
        tv[f"features.{i}.weight"], tv[f"features.{i}.bias"] = sd[f"{name}.weight"], sd[f"{name}.bias"]
    for name, i in (("fc6", 0), ("fc7", 3)):
        tv[f"classifier.{i}.weight"] = sd[f"{name}.weight"].reshape(sd[f"{name}.weight"].shape[0], -1)
        tv[f"classifier.{i}.bias"] = sd[f"{name}.bias"]
    expected = fcn_cuda.load_model({k: torch.from_numpy(v) for k, v in tv.items()}, variant=variant,
                                   num_classes=num_classes).state_dict()
    assert list(got) == list(expected)
    for k, v in expected.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    for k in sd:
        np.testing.assert_array_equal(got[k], sd[k], err_msg=k)
    assert not got["score_fr.weight"].any() and not got["score_fr.bias"].any()
    head = fcn_cuda.model.HEADS[variant][-1]
    np.testing.assert_array_equal(got[f"{head[0]}.weight"], fcn_cuda.bilinear_weights(num_classes, head[1]))
    assert Wt.read(path)[2] == "vgg16"


def test_vgg16_misfits_are_listed_by_layer(tmp_path):
    sd = vgg16()
    layers = E.vgg16_layers(sd)
    sd["conv2_1.weight"] = sd["conv2_1.weight"][:, :3]  # reads 3 channels where conv1_2 gives 8
    bad = [layer for layer in E.vgg16_layers(sd) if b"conv3_3" not in layer]  # conv3_3 gone
    bad.append(E.layer("conv6", "Convolution", [E.blob(np.zeros((2, 2), np.float32))], v1=True))
    path = tmp_path / "VGG_ILSVRC_16_layers.caffemodel"
    path.write_bytes(E.net(bad))
    with pytest.raises(WeightFileError) as e:
        fcn_cuda.load_model(path)
    msg = str(e.value)
    assert str(path) in msg and "conv3_3: missing" in msg and "conv6: not a layer of VGG16" in msg
    out, before = SMALL_WIDTHS[1][0], SMALL_WIDTHS[0][-1]
    assert f"conv2_1: weight is {out}x3x3x3, expected {out}x{before}x3x3" in msg, msg
    path.write_bytes(E.net(layers))  # the well-formed net, for contrast, loads
    fcn_cuda.load_model(path)


# ----------------------------------------------------------------- errors
def test_missing_and_misshapen_layers_raise_one_error_by_layer_name(tmp_path):
    sd = small_fcn("8s")
    del sd["score_pool3.weight"], sd["score_pool3.bias"]
    sd["fc7.weight"] = sd["fc7.weight"][:, :, :1, :1].repeat(3, axis=2)
    del sd["conv4_1.bias"]
    layers = E.fcn_layers(sd)
    layers.append(E.layer("score_fr_sem", "Convolution", [E.blob(np.zeros((1, 1, 1, 1), np.float32))]))
    layers.append(E.layer("upscore2", "Deconvolution", []))  # a second upscore2 without blobs is harmless
    path = tmp_path / "fcn8s.caffemodel"
    path.write_bytes(E.net(layers))
    with pytest.raises(WeightFileError) as e:
        fcn_cuda.load_model(path)
    msg = str(e.value)
    assert msg.startswith(f"{path} does not fit FCN-8s (5 classes): ")
    for part in ("score_pool3: missing", "conv4_1: no bias blob", f"fc7: weight is {SMALL_FC}x{SMALL_FC}x3x1, expected "
                 f"{SMALL_FC}x{SMALL_FC}x1x1", "score_fr_sem: not a layer of FCN-8s"):
        assert part in msg, (part, msg)


def test_at_once_scale_layers_are_checked(tmp_path):
    sd = small_fcn("8s", at_once=True)
    layers = [layer for layer in E.fcn_layers(sd, at_once=True) if b"scale_pool3" not in layer]
    path = tmp_path / "fcn8s-atonce.caffemodel"
    path.write_bytes(E.net(layers))
    with pytest.raises(WeightFileError, match="scale_pool3: missing"):
        fcn_cuda.load_model(path)
    odd = E.layer("scale_pool3", "Scale", [E.blob(np.full(SMALL_WIDTHS[2][-1], 0.5, np.float32))])
    path.write_bytes(E.net(layers + [odd]))
    with pytest.raises(WeightFileError, match=r"scale_pool3: scales by \[0.5\], not by the at-once 0.0001"):
        fcn_cuda.load_model(path)


def test_truncated_files_raise_naming_the_file(tmp_path):
    """Cut anywhere, a caffemodel raises WeightFileError naming it: inside a
    field it is truncated, between two layers its last layers are missing."""
    raw = E.net(E.fcn_layers(small_fcn("16s"), v1=True, legacy=True, packed=False))
    path = tmp_path / "cut.caffemodel"
    cuts = np.unique(np.linspace(1, len(raw) - 1, 150).astype(int))
    for cut in cuts:
        path.write_bytes(raw[:cut])
        with pytest.raises(WeightFileError, match=re.escape(str(path))):
            fcn_cuda.load_model(path)


def test_corrupt_bytes_never_escape_as_another_error(tmp_path):
    """Random byte damage either still parses (protobuf cannot tell) or
    raises WeightFileError naming the file: never an IndexError, a plain
    ValueError, a hang or a crash. A flip into a weight can make it NaN or
    inf: that case on purpose first, in a caffemodel and in our own file."""
    sd = small_fcn("32s")
    for bad in (np.nan, np.inf):
        damaged = {**sd, "fc7.weight": sd["fc7.weight"].copy()}
        damaged["fc7.weight"][1, 2] = bad
        caffe = write_fcn(tmp_path / "nan.caffemodel", damaged, False, "v2")
        ours = tmp_path / "nan.safetensors"
        Wt.save_safetensors(ours, damaged, {"format": "fcn_cuda"})
        for path in (caffe, ours):
            with pytest.raises(WeightFileError, match=f"^{re.escape(str(path))}: .*fc7.weight contains NaN or inf"):
                fcn_cuda.load_model(path)
    with pytest.raises(ValueError, match="num_classes must be >= 1") as e:  # an argument's error names no file
        fcn_cuda.load_model(caffe, num_classes=0)
    assert not isinstance(e.value, WeightFileError)
    raw = bytearray(E.net(E.fcn_layers(sd)))
    rng = np.random.default_rng(5)
    path = tmp_path / "damaged.caffemodel"
    outcomes = set()
    for _ in range(150):
        damaged = bytearray(raw)
        for at in rng.integers(0, len(raw), 3):
            damaged[at] = rng.integers(0, 256)
        path.write_bytes(bytes(damaged))
        try:
            fcn_cuda.load_model(path)
            outcomes.add("loaded")
        except WeightFileError as e:
            assert str(path) in str(e)
            outcomes.add("error")
    assert outcomes == {"loaded", "error"}  # most flips land in the weights, some in the structure


@pytest.mark.parametrize("data,match", [
    (b"", "empty file"),
    (b"\x89PNG\r\n\x1a\n" + bytes(40), "not a Caffe model, or truncated"),
    (E.string(1, "net"), "holds no Caffe layers"),
    (E.message(2, E.message(1, E.string(1, "old"))), "V0 Caffe net"),
    (E.message(100, E.string(2, "ReLU")), "a layer without a name"),
    (E.message(100, E.message(1, b"\xff\xfe")), "not UTF-8"),
    (E.key(5, 7), "wire type 7"),
    (E.key(1, 4), "wire type 4"),
    (E.key(3, 3) + E.key(4, 4), "a group 3 closed as 4"),
    (E.key(3, 3) * 5000, "groups nested deeper than 100"),
    (b"\xff" * 11, "longer than 10 bytes"),
    (E.net([E.layer("a", "Convolution", [E.blob(np.ones(2, np.float32))])] * 2), "two layers named 'a'"),
])
def test_not_caffe_models(tmp_path, data, match):
    path = tmp_path / "x.caffemodel"
    path.write_bytes(data)
    with pytest.raises(WeightFileError, match=f"{re.escape(str(path))}.*{match}|{match}.*{re.escape(str(path))}"):
        fcn_cuda.read_caffemodel(path)


def test_read_caffemodel_needs_an_existing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.caffemodel"):
        fcn_cuda.read_caffemodel(tmp_path / "missing.caffemodel")
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        fcn_cuda.load_model(tmp_path / "missing.caffemodel")


# ----------------------------------------------------------------- the command line
def test_convert_writes_our_file_with_the_class_names(tmp_path, capsys):
    sd = small_fcn("8s", at_once=True, num_classes=21)
    src = write_fcn(tmp_path / "fcn8s-atonce-pascal.caffemodel", sd, True, "v2")
    dst = tmp_path / "out" / "fcn8s-atonce.safetensors"
    assert cli.main(["convert", str(src), str(dst)]) == 0
    assert "FCN-8s at-once" in capsys.readouterr().out
    model = fcn_cuda.load_model(dst)
    assert (model.variant, model.at_once, model.class_names) == ("8s", True, VOC_CLASSES)
    for k, v in sd.items():
        np.testing.assert_array_equal(model.state_dict()[k], v, err_msg=k)
    assert Wt.load_safetensors(dst)[1]["converted_from"] == src.name
    vgg = tmp_path / "VGG_ILSVRC_16_layers.caffemodel"
    vgg.write_bytes(E.net(E.vgg16_layers(vgg16())))
    assert cli.main(["convert", str(vgg), str(tmp_path / "fcn16s.safetensors"), "--variant", "16s",
                     "--num-classes", "4"]) == 0
    model = fcn_cuda.load_model(tmp_path / "fcn16s.safetensors")
    assert (model.variant, model.num_classes, model.class_names) == ("16s", 4, None)


def test_convert_never_damages_a_file(tmp_path, capsys):
    good = tmp_path / "fcn.safetensors"
    fcn_cuda.FCN("32s", 5, state_dict=small_fcn("32s")).save(good)
    before = good.read_bytes()
    assert cli.main(["convert", str(good), str(good)]) == 2
    assert "refusing to write over the input" in capsys.readouterr().err
    link = tmp_path / "link.safetensors"
    link.symlink_to(good)
    assert cli.main(["convert", str(good), str(link)]) == 2
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(E.net(E.fcn_layers(small_fcn("32s")))[:5000])
    assert cli.main(["convert", str(cut), str(good)]) == 2  # a failed conversion leaves OUT as it was
    assert "cut.caffemodel: not a Caffe model, or truncated" in capsys.readouterr().err
    assert cli.main(["convert", str(cut), str(tmp_path / "out.pth")]) == 2
    assert "must be a .safetensors file" in capsys.readouterr().err
    assert good.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "cut.caffemodel", "fcn.safetensors", "link.safetensors"]
    vgg = tmp_path / "VGG_ILSVRC_16_layers.caffemodel"
    vgg.write_bytes(E.net(E.vgg16_layers(vgg16())))
    assert cli.main(["convert", str(vgg), str(tmp_path / "x.safetensors"), "--num-classes", "0"]) == 2
    assert "num_classes" in capsys.readouterr().err


def test_train_init_parses_the_file_once(tmp_path, monkeypatch):
    """fcn-cuda train --init: one parse of the file (VGG16's is 528 MB) serves both the look at its
    layout and the model, which equals load_model's."""
    parses = []
    load = Wt.caffe.load
    monkeypatch.setattr(Wt.caffe, "load", lambda path: parses.append(path) or load(path))
    vgg = tmp_path / "VGG_ILSVRC_16_layers.caffemodel"
    vgg.write_bytes(E.net(E.vgg16_layers(vgg16())))
    fcn = write_fcn(tmp_path / "fcn32s.caffemodel", small_fcn("32s"), False, "v2")
    for path, variant, classes, same in ((vgg, "8s", 3, None), (fcn, "32s", 5, None), (fcn, "16s", 5, ("conv", "fc"))):
        parses.clear()
        model = cli.load_init(path, variant, classes)
        assert parses == [path] and (model.variant, model.num_classes) == (variant, classes)
        reference = fcn_cuda.load_model(path, **(dict(variant=variant, num_classes=classes) if path == vgg else {}))
        got = model.state_dict()
        for k, v in reference.state_dict().items():
            if same is None or k.startswith(same):  # staged into 16s: the trunk carried over
                np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_eval_seg11valid_with_a_caffemodel_and_train_on_sbd(tmp_path, monkeypatch, capsys):
    """fcn-cuda eval --data voc:DIR --split seg11valid --weights X.caffemodel
    (seg11valid cut to 3 images here), and fcn-cuda train --data sbd:DIR
    from VGG16's caffemodel, validating on VOC."""
    from test_data import make_sbd, make_voc

    ids = fcn_cuda.data.seg11valid_ids()[:3]
    short = tmp_path / "seg11valid.txt"
    short.write_text("\n".join(ids) + "\n")
    monkeypatch.setattr(fcn_cuda.data, "SEG11VALID", short)
    make_voc(tmp_path / "VOC2011", ids, size=(9, 11))
    (tmp_path / "VOC2011/ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    weights = write_fcn(tmp_path / "fcn8s-heavy-pascal.caffemodel", small_fcn("8s", num_classes=21), False, "v2")
    assert cli.main(["eval", "--data", f"voc:{tmp_path / 'VOC2011'}", "--split", "seg11valid",
                     "--weights", str(weights), "--backend", "host"]) == 0
    printed = capsys.readouterr().out
    expected = fcn_cuda.evaluate(fcn_cuda.load_model(weights), fcn_cuda.data.VOCSegmentation(tmp_path / "VOC2011",
                                                                                             "seg11valid"))
    for k, v in expected.items():
        assert f"{k:>10s} {100 * v:6.2f}" in printed
    make_sbd(tmp_path / "benchmark_RELEASE", ["2008_000002", "2008_000003"])
    vgg = tmp_path / "VGG_ILSVRC_16_layers.caffemodel"
    vgg.write_bytes(E.net(E.vgg16_layers(vgg16())))
    run = tmp_path / "run"
    assert cli.main(["train", "--data", f"sbd:{tmp_path / 'benchmark_RELEASE'}", "--val-data",
                     f"voc:{tmp_path / 'VOC2011'}", "--val-split", "seg11valid", "--init", str(vgg), "--variant", "8s",
                     "--at-once", "--lr", "1e-10", "--iterations", "2", "--val-every", "2", "--checkpoint-every", "0",
                     "--out", str(run), "--backend", "host"]) == 0
    trainer = fcn_cuda.training.Trainer.resume(run / "checkpoint.safetensors")
    assert trainer.history.step == [1, 2] and trainer.history.val_step == [2] and trainer.config.lr == 1e-10
    final = fcn_cuda.load_model(run / "final.safetensors")
    assert (final.variant, final.at_once, final.num_classes) == ("8s", True, 21)
