"""`fcn-cuda infer --tile N`: exact tiles from the command line, a progress
bar over tiles, the labels written as a memory map and the untiled run's two
PNGs (the overlay subsampled above OVERLAY_MAX_PIXELS), --tile-batch; under
torchrun the ranks share one image's tiles and write one output, equal to
one process's."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import fcn_cuda
from fcn_cuda import cli, distributed, tiling
from fcn_cuda.colors import overlay

from _util import ROOT
from test_tiled import image, varied

SHAPE = (600, 37)  # tall enough for windows with both sides inside the image at tile 64


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(weights, image .npy, the one-process whole-image labels)."""
    folder = tmp_path_factory.mktemp("tiled_cli")
    fcn_cuda.use_backend("host")
    model = varied("8s")
    model.save(folder / "tiny.safetensors")
    img = image(*SHAPE, seed=11)
    np.save(folder / "big.npy", img)
    return folder / "tiny.safetensors", folder / "big.npy", fcn_cuda.infer(img, model)


def test_cli_tiles_write_the_whole_images_labels_with_a_progress_bar(files, tmp_path, capsys):
    weights, img, expected = files
    assert len(np.unique(expected)) >= 2
    code = cli.main(["infer", str(img), "--tile", "64", "--out", str(tmp_path), "--weights", str(weights),
                     "--backend", "host"])
    assert code == 0
    captured = capsys.readouterr()
    np.testing.assert_array_equal(np.load(tmp_path / "big_labels.npy"), expected)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "big_labels.png")), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big_labels.npy", "big_labels.png", "big_overlay.png"]
    assert "big.npy: tiles of 64 [" in captured.err and "10/10" in captured.err  # the bar, over the 10 tiles
    assert f"{SHAPE[1]}x{SHAPE[0]} in 10 tiles of 64" in captured.out
    counts = np.bincount(expected.ravel(), minlength=5)
    assert f"{counts[counts > 0][0]:10d}" in captured.out  # the class summary


def test_cli_refuses_bad_tiles_and_crf_with_tiles_before_writing(files, tmp_path, capsys):
    weights, img, _ = files
    for extra, message in ((["--tile", "100"], "multiple of the network's stride 32"),
                           (["--tile", "0"], "tile must be >= 1"),
                           (["--tile", "64", "--crf"], "--crf cannot run with --tile")):
        assert cli.main(["infer", str(img), "--out", str(tmp_path / "out"), "--weights", str(weights), *extra]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_torchrun_ranks_share_the_tiles_into_one_output_equal_to_one_process(files, tmp_path):
    weights, img, expected = files
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "FCN_CUDA_BACKEND": "host", distributed.TIMEOUT_ENV: "30"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          "-m", "fcn_cuda", "infer", str(img), "--tile", "64", "--out", str(tmp_path),
                          "--weights", str(weights)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "big_labels.npy"), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big_labels.npy", "big_labels.png", "big_overlay.png"]
    assert "tiles of 64 [" in run.stderr and "5/5" in run.stderr  # rank 0's bar: its 5 of the 10 tiles
    assert run.stdout.count("in 10 tiles of 64") == 1  # rank 0 alone reports


def test_cli_tiles_write_the_untiled_runs_two_pictures(files, tmp_path):
    weights, img, expected = files
    rgb = np.load(img)
    Image.fromarray(rgb).save(tmp_path / "big.png")
    common = ["--weights", str(weights), "--backend", "host"]
    assert cli.main(["infer", str(tmp_path / "big.png"), "--out", str(tmp_path / "whole"), *common]) == 0
    assert cli.main(["infer", str(tmp_path / "big.png"), "--out", str(tmp_path / "tiled"), "--tile", "64",
                     "--tile-batch", "3", *common]) == 0
    for kind in ("labels", "overlay"):
        whole = Image.open(tmp_path / "whole" / f"big_{kind}.png")
        tiled = Image.open(tmp_path / "tiled" / f"big_{kind}.png")
        assert (tiled.mode, tiled.size) == (whole.mode, whole.size) == ("P" if kind == "labels" else "RGB", SHAPE[::-1])
        np.testing.assert_array_equal(np.asarray(tiled), np.asarray(whole))
        if kind == "labels":
            assert tiled.getpalette() == whole.getpalette()
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "tiled" / "big_labels.png")), expected)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "tiled" / "big_overlay.png")),
                                  overlay(rgb, expected))
    np.testing.assert_array_equal(np.load(tmp_path / "tiled" / "big_labels.npy"), expected)


def test_cli_overlay_above_the_limit_keeps_one_pixel_in_s_along_each_axis(files, tmp_path, capsys, monkeypatch):
    weights, img, expected = files
    # 600 x 37 pixels: one in 2 is 300 x 19 = 5700 pixels, one in 3 is 200 x 13 = 2600
    monkeypatch.setattr(cli, "OVERLAY_MAX_PIXELS", 5699)
    assert cli.main(["infer", str(img), "--tile", "64", "--tile-batch", "1", "--out", str(tmp_path),
                     "--weights", str(weights), "--backend", "host"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "big_labels.npy"), expected)  # --tile-batch 1: the same bits
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "big_labels.png")), expected)
    picture = np.asarray(Image.open(tmp_path / "big_overlay.png"))
    assert picture.shape == (200, 13, 3)
    np.testing.assert_array_equal(picture, overlay(np.load(img), expected)[::3, ::3])
    assert "big_overlay.png (13x200: one pixel in 3 along each axis)" in capsys.readouterr().out


def test_overlay_picture_draws_in_bands_what_overlay_draws_whole():
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (23, 11, 3), dtype=np.uint8)
    labels = rng.integers(0, 21, (23, 11), dtype=np.uint8)
    for limit, step in ((23 * 11, 1), (23 * 11 - 1, 2), (12 * 6, 2), (12 * 6 - 1, 3)):
        picture, got = cli._overlay_picture(rgb, labels, max_pixels=limit)
        assert got == step
        np.testing.assert_array_equal(np.asarray(picture), overlay(rgb, labels)[::step, ::step])


@pytest.mark.parametrize("value, message", [("0", "--tile-batch must be >= 1 (tiles run at once), got 0"),
                                            ("-2", "--tile-batch must be >= 1 (tiles run at once), got -2")])
def test_cli_refuses_a_bad_tile_batch_before_writing(files, tmp_path, capsys, value, message):
    weights, img, _ = files
    assert cli.main(["infer", str(img), "--tile", "64", "--tile-batch", value, "--out", str(tmp_path / "out"),
                     "--weights", str(weights)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_tile_batch_that_is_no_int_or_comes_with_crf(files, tmp_path, capsys):
    weights, img, _ = files
    with pytest.raises(SystemExit) as e:
        cli.main(["infer", str(img), "--tile-batch", "2.5", "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    assert "--tile-batch: invalid int value: '2.5'" in capsys.readouterr().err
    assert cli.main(["infer", str(img), "--tile-batch", "2", "--crf", "--out", str(tmp_path / "out"),
                     "--weights", str(weights)]) == 2
    assert "--tile-batch cannot run with --crf" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as e:
        cli.main(["infer", "--help"])
    assert e.value.code == 0
    helped = " ".join(capsys.readouterr().out.split())
    assert "--tile-batch B" in helped and "an int >= 1" in helped and "NAME_overlay.png" in helped


def test_cli_tiles_never_write_over_an_image_they_segment(files, tmp_path, capsys):
    """The untiled run refuses to replace an input with one of its PNGs; with
    tiles (given, or possible because the image may be too large whole) the
    labels' .npy is one of the outputs too."""
    weights, img, _ = files
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "big.npy").write_bytes(img.read_bytes())
    mine = image(40, 40, seed=3)
    np.save(folder / "big_labels.npy", mine)  # the user's own image, named like the tiles' output
    Image.fromarray(mine).save(folder / "big_overlay.png")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for inputs, extra, replaced in ((["big.npy", "big_labels.npy"], ["--tile", "64"], "big_labels.npy"),
                                    (["big.npy", "big_labels.npy"], [], "big_labels.npy"),
                                    (["big.npy", "big_overlay.png"], ["--tile", "64"], "big_overlay.png")):
        code = cli.main(["infer", *(str(folder / name) for name in inputs), *extra, "--out", str(folder),
                         "--weights", str(weights), "--backend", "host"])
        assert code == 2
        err = capsys.readouterr().err
        assert "infer would write over images it segments" in err and str(folder / replaced) in err
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_cli_automatic_tiles_write_the_same_files_and_take_tile_batch(files, tmp_path, capsys, monkeypatch):
    """An image too large whole runs in tiles without --tile (here: auto_tile
    made to say so); --tile-batch reaches those tiles too."""
    weights, img, expected = files
    batches = []
    infer_tiles = tiling.infer_tiles

    def spy(*args, batch=None, **kwargs):
        batches.append(batch)
        return infer_tiles(*args, batch=batch, **kwargs)

    monkeypatch.setattr(tiling, "auto_tile", lambda model, height, width, budget=None: 64)
    monkeypatch.setattr(tiling, "infer_tiles", spy)
    assert cli.main(["infer", str(img), "--tile-batch", "2", "--out", str(tmp_path), "--weights", str(weights),
                     "--backend", "host"]) == 0
    assert batches == [2]
    assert "needs more than half the free memory whole: exact tiles of 64" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big_labels.npy", "big_labels.png", "big_overlay.png"]
    np.testing.assert_array_equal(np.load(tmp_path / "big_labels.npy"), expected)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "big_overlay.png")), overlay(np.load(img), expected))
