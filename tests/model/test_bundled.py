"""The bundled default model's tooling: the recipe trains with this engine,
stops at its target or its time limit, and `ship` installs only weights
that reach the target on the held-out set."""

import json

import numpy as np
import pytest

import fcn_cuda
from fcn_cuda import bundled
from fcn_cuda.colors import colorize, overlay
from fcn_cuda.model import deployed
from fcn_cuda.weights import load_safetensors

# The recipe at toy scale: the same code path, seconds instead of hours.
TOY = dict(width_divisor=16, fc=16, size=24, count=4, batch_size=2, val_count=2, val_every=1,
           checkpoint_every=1, iterations=3)


@pytest.fixture(autouse=True)
def host():
    fcn_cuda.use_backend("host")


def test_recipe_trains_with_this_engine(tmp_path):
    trainer = bundled.train(tmp_path, progress=False, **TOY)
    assert trainer.step == 3 and trainer.finished
    assert trainer.model.params["conv1_1.weight"].shape == (4, 3, 3, 3)
    assert trainer.model.num_classes == 4 and trainer.model.variant == "8s"
    assert (tmp_path / "final.safetensors").exists() and (tmp_path / "curves.png").exists()
    assert trainer.config.lr == bundled.RECIPE["lr"] and trainer.config.normalize is bundled.RECIPE["normalize"]
    assert trainer.config.class_weights == bundled.RECIPE["class_weights"]
    with pytest.raises(TypeError, match="unknown recipe fields"):
        bundled.train(tmp_path / "x", progress=False, learning_rate=1.0)


def test_training_stops_at_the_target_mean_iu(tmp_path):
    trainer = bundled.train(tmp_path, progress=False, **{**TOY, "target_mean_iu": 0.0})
    assert trainer.step == 1 and trainer.finished
    assert (tmp_path / "final.safetensors").exists()


def test_time_limit_checkpoints_and_the_same_command_goes_on(tmp_path):
    first = bundled.train(tmp_path, progress=False, max_seconds=0, **TOY)
    assert first.step == 1 and not first.finished and first.stopped_by == "the time limit"
    assert (tmp_path / "checkpoint.safetensors").exists() and not (tmp_path / "final.safetensors").exists()
    second = bundled.train(tmp_path, progress=False, **TOY)
    assert second.step == 3 and second.history.loss[0] == first.history.loss[0]
    unbroken = bundled.train(tmp_path / "unbroken", progress=False, **TOY)
    assert second.history.loss == unbroken.history.loss


def _untrained(tmp_path):
    path = tmp_path / "untrained.safetensors"
    bundled.fresh_model({**bundled.RECIPE, **TOY}).save(path)
    return path


def test_ship_refuses_weights_below_the_target(tmp_path):
    dest = tmp_path / "default.safetensors"
    with pytest.raises(ValueError, match="below the target"):
        bundled.ship(_untrained(tmp_path), dest=dest, sample=tmp_path / "s.png", picture=tmp_path / "p.png",
                     count=2)
    assert not dest.exists() and not (tmp_path / "s.png").exists() and not (tmp_path / "p.png").exists()


def test_ship_writes_model_sample_and_picture(tmp_path, monkeypatch):
    monkeypatch.setattr(bundled, "TARGET_MEAN_IU", 0.0)
    dest, sample, picture = tmp_path / "default.safetensors", tmp_path / "s.png", tmp_path / "p.png"
    # The shipped weights themselves: on an untrained model's flat labels the CRF changes nothing, and the
    # picture's refined panel could not be told from the plain one.
    scores = bundled.ship(bundled.DEFAULT_WEIGHTS, dest=dest, sample=sample, picture=picture, trained_on="host",
                          count=2)
    tensors, meta = load_safetensors(dest)
    held = json.loads(meta["held_out"])
    assert held["seed"] == bundled.HELD_OUT_SEED and held["mean_iu"] == scores["mean_iu"]
    assert json.loads(meta["recipe"]) == json.loads(json.dumps(bundled.RECIPE)) and meta["trained_on"] == "host"
    shipped = fcn_cuda.load_model(dest)
    assert set(tensors) == set(shipped.state_dict()) and shipped.class_names == fcn_cuda.data.SHAPE_CLASSES
    from PIL import Image

    rgb = np.asarray(Image.open(sample))
    expected, expected_truth = bundled.held_out(bundled.SAMPLE_INDEX + 1)[bundled.SAMPLE_INDEX]
    np.testing.assert_array_equal(rgb, expected)
    labels = fcn_cuda.infer(rgb, shipped)
    refined = fcn_cuda.infer(rgb, shipped, crf=True)
    assert (refined != labels).any()
    sheet = np.asarray(Image.open(picture).convert("RGB"))
    h, w = 2 * rgb.shape[0], 2 * rgb.shape[1]
    assert sheet.shape == (22 + h + 22, 5 * (w + 8) - 8, 3)
    panels = (rgb, overlay(rgb, labels), colorize(labels), colorize(refined), colorize(expected_truth))
    for i, panel in enumerate(panels):
        x = i * (w + 8)
        np.testing.assert_array_equal(sheet[22:22 + h, x:x + w], panel.repeat(2, 0).repeat(2, 1))


def test_ship_takes_a_training_checkpoint_and_writes_the_deployed_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(bundled, "TARGET_MEAN_IU", 0.0)
    run = bundled.train(tmp_path / "run", progress=False, max_seconds=0, **TOY)
    dest = tmp_path / "default.safetensors"
    bundled.ship(tmp_path / "run" / "checkpoint.safetensors", dest=dest, sample=tmp_path / "s.png",
                 picture=tmp_path / "p.png", count=2)
    tensors, meta = load_safetensors(dest)
    assert set(tensors) == set(run.model.state_dict())  # no momentum
    shipped = deployed(run.model, bundled.RECIPE["class_weights"]).state_dict()  # as its final file would hold
    assert not np.array_equal(shipped["score_pool3.bias"], run.model.state_dict()["score_pool3.bias"])
    for k, v in shipped.items():
        np.testing.assert_array_equal(tensors[k], v)
    assert meta["format"] == "fcn_cuda" and meta["step"] == "1" and "history" not in meta and "config" not in meta


def test_held_out_set_is_not_a_training_or_validation_set():
    seeds = {bundled.RECIPE["seed"], bundled.RECIPE["seed"] + 1_000_003}
    assert bundled.HELD_OUT_SEED not in seeds
    a, _ = bundled.held_out(1)[0]
    b, _ = fcn_cuda.data.SyntheticShapes(1, bundled.RECIPE["size"], seed=bundled.RECIPE["seed"])[0]
    assert not np.array_equal(a, b)
