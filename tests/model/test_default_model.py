"""The shipped default model: it reaches its target (0.85 mean IU) on freshly drawn
held-out images, and the README's main job (fcn-cuda infer on the bundled
sample) writes the overlay picture."""

import json

import numpy as np
import pytest
from PIL import Image

import fcn_cuda
from fcn_cuda import bundled, cli
from fcn_cuda.inference import DEFAULT_WEIGHTS
from fcn_cuda.weights import load_safetensors


@pytest.fixture(autouse=True)
def host():
    fcn_cuda.use_backend("host")


def test_default_model_reaches_the_target_on_held_out_images():
    scores = bundled.score(DEFAULT_WEIGHTS, progress=False)  # the 200 images ship scored
    assert scores["mean_iu"] >= bundled.TARGET_MEAN_IU, scores
    shipped = json.loads(load_safetensors(DEFAULT_WEIGHTS)[1]["held_out"])
    # The score recorded at shipping, reproduced: to 1e-3, because -march=native builds on other CPUs may
    # round a few pixels' scores differently (FMA contraction), moving a mean IU by about 1e-5 per pixel.
    assert scores == pytest.approx({k: shipped[k] for k in scores}, abs=1e-3)


def test_default_model_records_how_it_was_made():
    tensors, meta = load_safetensors(DEFAULT_WEIGHTS)
    held = json.loads(meta["held_out"])
    assert held["seed"] == bundled.HELD_OUT_SEED and held["count"] == bundled.HELD_OUT_COUNT
    assert held["mean_iu"] >= bundled.TARGET_MEAN_IU and meta["step"] == str(bundled.RECIPE["iterations"])
    assert json.loads(meta["recipe"])["size"] == bundled.RECIPE["size"] and meta["trained_on"] != "unknown"
    assert sum(v.nbytes for v in tensors.values()) <= 10 * 2**20
    assert fcn_cuda.load_model(DEFAULT_WEIGHTS).class_names == fcn_cuda.data.SHAPE_CLASSES


def test_main_job_writes_the_overlay(tmp_path, capsys):
    """The README's main job: fcn-cuda infer fcn_cuda/data/shapes_sample.png --out out/"""
    assert cli.main(["infer", str(bundled.SAMPLE_IMAGE), "--out", str(tmp_path), "--backend", "host"]) == 0
    rgb = np.asarray(Image.open(bundled.SAMPLE_IMAGE))
    overlay = np.asarray(Image.open(tmp_path / "shapes_sample_overlay.png"))
    labels = np.asarray(Image.open(tmp_path / "shapes_sample_labels.png"))
    assert overlay.shape == rgb.shape and labels.shape == rgb.shape[:2]
    assert not np.array_equal(overlay, rgb)  # the shapes are painted
    np.testing.assert_array_equal(labels, fcn_cuda.infer(rgb))
    printed = capsys.readouterr().out
    assert all(name in printed for name in ("background", "circle", "rectangle", "triangle")), printed


def test_infer_without_a_model_uses_the_default():
    rgb, truth = bundled.held_out(bundled.SAMPLE_INDEX + 1)[bundled.SAMPLE_INDEX]
    labels = fcn_cuda.infer(rgb)
    assert labels.shape == truth.shape and set(np.unique(labels)) == set(np.unique(truth))
