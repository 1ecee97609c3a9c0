"""`fcn-cuda infer --tile N`: exact tiles from the command line, a progress
bar over tiles, the labels written as a memory map and a PNG; under
torchrun the ranks share one image's tiles and write one output, equal to
one process's."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import fcn_cuda
from fcn_cuda import cli, distributed

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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big_labels.npy", "big_labels.png"]
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big_labels.npy", "big_labels.png"]
    assert "tiles of 64 [" in run.stderr and "5/5" in run.stderr  # rank 0's bar: its 5 of the 10 tiles
    assert run.stdout.count("in 10 tiles of 64") == 1  # rank 0 alone reports
