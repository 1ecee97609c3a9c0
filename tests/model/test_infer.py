"""fcn_cuda.infer, the colormap, and the `fcn-cuda infer` command."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import fcn_cuda
from fcn_cuda import cli
from fcn_cuda.colors import colorize, overlay, palette_image, voc_colormap
from fcn_cuda.data import SyntheticShapes
from fcn_cuda.inference import load_image

from _util import to_numpy
from torch_fcn import SMALL_FC, SMALL_WIDTHS, random_fcn, state_dict_f32

MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434])


def test_voc_colormap_known_entries():
    cmap = voc_colormap()
    assert cmap[0].tolist() == [0, 0, 0]
    assert cmap[1].tolist() == [128, 0, 0]
    assert cmap[15].tolist() == [192, 128, 128]  # person
    assert cmap[255].tolist() == [224, 224, 192]  # VOC's 'ignore' border


def test_colorize_and_overlay():
    labels = np.array([[0, 1], [15, 255]])
    np.testing.assert_array_equal(colorize(labels)[1, 0], [192, 128, 128])
    img = np.full((2, 2, 3), 100, np.uint8)
    out = overlay(img, labels, alpha=0.5)
    assert out[0, 0].tolist() == [100, 100, 100]  # background untouched
    assert out[0, 1].tolist() == [114, 50, 50]
    with pytest.raises(ValueError, match="differ in size"):
        overlay(img, labels[:1])
    with pytest.raises(ValueError, match="alpha"):
        overlay(img, labels, alpha=2)
    assert palette_image(labels).mode == "P"


def test_load_image_conversions(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), rgb)
    np.testing.assert_array_equal(load_image(Image.fromarray(rgb)), rgb)
    gray = rgb[:, :, 0]
    assert load_image(gray).shape == (5, 7, 3)
    rgba = np.dstack([rgb, np.full((5, 7), 9, np.uint8)])
    np.testing.assert_array_equal(load_image(rgba), rgb)
    with pytest.raises(TypeError, match="uint8"):
        load_image(rgb.astype(np.float32))
    with pytest.raises(ValueError, match="H x W x 3"):
        load_image(np.zeros((5, 7, 2), np.uint8))
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot be read"):
        load_image(tmp_path / "bad.png")


def torch_scores(net, rgb):
    x = (rgb[:, :, ::-1].astype(np.float64) - MEAN_BGR).transpose(2, 0, 1)[None]
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(x))).numpy()[0]


def test_infer_matches_pytorch_end_to_end(be):
    net = random_fcn("8s", seed=5, num_classes=6)
    model = fcn_cuda.load_model(state_dict_f32(net))
    rgb = np.random.default_rng(2).integers(0, 256, (23, 31, 3), dtype=np.uint8)
    labels, scores = fcn_cuda.infer(rgb, model, return_scores=True)
    ref = torch_scores(net, rgb)
    assert isinstance(labels, np.ndarray) and labels.shape == (23, 31)
    assert scores.shape == (6, 23, 31) and scores.dtype == np.float32
    rel = np.linalg.norm(scores - ref) / np.linalg.norm(ref)
    assert rel <= 1e-5
    top2 = np.sort(ref, axis=0)[-2:]
    decisive = top2[1] - top2[0] > 1e-4 * np.abs(ref).max()
    assert (labels[decisive] == ref.argmax(0)[decisive]).all()
    assert (labels == fcn_cuda.infer(rgb, model)).all()


def test_infer_without_a_model_says_how_to_get_one(monkeypatch, tmp_path):
    from fcn_cuda import inference as infer_module

    monkeypatch.setattr(infer_module, "DEFAULT_WEIGHTS", tmp_path / "none.safetensors")
    monkeypatch.setattr(infer_module, "_default_model", None)
    with pytest.raises(FileNotFoundError, match="load_model"):
        fcn_cuda.infer(np.zeros((4, 4, 3), np.uint8))


def test_cli_infer_writes_pictures_and_a_summary(tmp_path, capsys):
    fcn_cuda.use_backend("host")
    net = random_fcn("32s", seed=1)
    weights = tmp_path / "w.safetensors"
    fcn_cuda.load_model(state_dict_f32(net)).save(weights)
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(9, 13), (16, 11)]):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    out = tmp_path / "out"
    assert cli.main(["infer", *paths, "--weights", str(weights), "--out", str(out), "--backend", "host"]) == 0
    labels = Image.open(out / "img1_labels.png")
    assert labels.mode == "P" and labels.size == (11, 16)
    assert Image.open(out / "img0_overlay.png").size == (13, 9)
    expect = fcn_cuda.infer(paths[1], fcn_cuda.load_model(weights))
    np.testing.assert_array_equal(np.asarray(labels), expect)
    summary = capsys.readouterr().out
    assert "pixels" in summary and "%" in summary


@pytest.mark.parametrize("names", [["a.png", "a.jpg"], ["x/1.png", "y/1.png"], ["a.png", "a.png"]])
def test_cli_infer_refuses_images_that_would_write_the_same_files(tmp_path, capsys, monkeypatch, names):
    """Before any work (and before torchrun's ranks take their shares, so every rank refuses alike):
    nothing is written."""
    from fcn_cuda import distributed

    def never(paths):
        raise AssertionError("the images were shared out before their names were checked")

    monkeypatch.setattr(distributed, "infer_share", never)
    for name in names:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / name)
    out = tmp_path / "out"
    assert cli.main(["infer", *(str(tmp_path / n) for n in names), "--out", str(out), "--backend", "host"]) == 2
    err = capsys.readouterr().err
    assert "images with the same name would write the same files" in err, err
    assert all(str(tmp_path / n) in err for n in names) and not out.exists()


def test_cli_infer_over_its_output_folder_reads_the_same_images_again(tmp_path, capsys):
    """`fcn-cuda infer out/ --out out/` twice: the second run leaves out the first's outputs (names ending
    in _labels.png, _overlay.png), writes the same files and prints the same summary. An output that
    would replace an image named on the command line is refused."""
    fcn_cuda.use_backend("host")
    weights = tmp_path / "w.safetensors"
    fcn_cuda.load_model(state_dict_f32(random_fcn("32s", seed=1, num_classes=3))).save(weights)
    out = tmp_path / "out"
    out.mkdir()
    rng = np.random.default_rng(2)
    for name in ("cat.png", "dog.jpg"):
        Image.fromarray(rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)).save(out / name)
    command = ["infer", str(out), "--weights", str(weights), "--out", str(out), "--backend", "host"]
    assert cli.main(command) == 0
    first = capsys.readouterr().out
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(files) == ["cat.png", "cat_labels.png", "cat_overlay.png", "dog.jpg", "dog_labels.png",
                             "dog_overlay.png"]
    assert cli.main(command) == 0
    assert capsys.readouterr().out == first
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    elsewhere = tmp_path / "elsewhere"  # in another folder, a file of that name is an image like any other
    elsewhere.mkdir()
    (elsewhere / "cat_labels.png").write_bytes(files["cat.png"])
    assert cli.main(["infer", str(elsewhere), *command[2:]]) == 0
    assert (out / "cat_labels_labels.png").exists()
    capsys.readouterr()
    assert cli.main(["infer", str(out / "cat.png"), str(out / "cat_labels.png"), *command[2:]]) == 2
    assert f"write over images it segments: {out / 'cat_labels.png'}" in capsys.readouterr().err


def test_cli_reports_errors_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fcn_cuda", "infer", str(tmp_path / "missing.png"),
                           "--weights", str(tmp_path / "missing.safetensors")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "error" in proc.stderr and "Traceback" not in proc.stderr


def _crf_case():
    """The bundled model and a 48 x 48 shapes image on which the CRF changes some of its labels (an untrained
    model's flat predictions it leaves as they are)."""
    return fcn_cuda.inference.default_model(), SyntheticShapes(1, 48, seed=1)[0][0]


def test_infer_with_the_crf_refines_the_softmax(be):
    """infer(crf=...) is the argmax of dense_crf on the model's softmax; crf=True takes the bundled model's
    parameters (fcn_cuda.crf.SHAPES), a dict changes some of them; the scores stay the model's."""
    from fcn_cuda import crf, ops

    model, rgb = _crf_case()
    plain, scores = fcn_cuda.infer(rgb, model, return_scores=True)
    probs = ops.softmax(be.xp.asarray(scores)[None])[0]
    for setting, params in ((True, crf.SHAPES), (dict(iterations=2, bilateral_srgb=30.0),
                                                  {**crf.SHAPES, "iterations": 2, "bilateral_srgb": 30.0})):
        expect = to_numpy(crf.dense_crf(be.xp.asarray(rgb), probs, **params)).argmax(0)
        assert (expect != plain).any()  # the CRF moves labels here: dropping it would fail
        np.testing.assert_array_equal(fcn_cuda.infer(rgb, model, crf=setting), expect)
        labels, with_scores = fcn_cuda.infer(rgb, model, return_scores=True, crf=setting)
        np.testing.assert_array_equal(labels, expect)
        np.testing.assert_array_equal(with_scores, scores)
    np.testing.assert_array_equal(fcn_cuda.infer(rgb, model, crf=False), plain)
    with pytest.raises(TypeError, match=r"crf: unknown parameter\(s\) \['sxy'\]"):
        fcn_cuda.infer(rgb, model, crf=dict(sxy=3))
    with pytest.raises(TypeError, match="crf must be True, False or a dict"):
        fcn_cuda.infer(rgb, model, crf="yes")
    with pytest.raises(ValueError, match="bilateral_srgb must be > 0"):
        fcn_cuda.infer(rgb, model, crf=dict(bilateral_srgb=0))


def test_cli_infer_with_the_crf(tmp_path, capsys):
    fcn_cuda.use_backend("host")
    weights = tmp_path / "w.safetensors"
    model, rgb = _crf_case()
    model.save(weights)
    path = tmp_path / "img.png"
    Image.fromarray(rgb).save(path)
    plain = fcn_cuda.infer(rgb, model)
    for flags, setting in ((["--crf"], True), (["--crf-iterations", "3", "--crf-bilateral-sxy", "9.5"],
                                               dict(iterations=3, bilateral_sxy=9.5))):
        out = tmp_path / "-".join(flags)
        assert cli.main(["infer", str(path), "--weights", str(weights), "--out", str(out), *flags]) == 0
        expect = fcn_cuda.infer(rgb, model, crf=setting)
        assert (expect != plain).any()  # the flags reach the CRF: without them these labels would be plain's
        np.testing.assert_array_equal(np.asarray(Image.open(out / "img_labels.png")), expect)
    capsys.readouterr()
    assert cli.main(["infer", str(path), "--weights", str(weights), "--out", str(tmp_path), "--crf-gaussian-sxy",
                     "-1"]) == 2
    assert "gaussian_sxy must be > 0" in capsys.readouterr().err
