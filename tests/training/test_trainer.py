"""The training loop: SGD recipe, exact resume, NaN stop, validation, curves."""

import json

import numpy as np
import pytest
from PIL import Image

import fcn_cuda
from fcn_cuda import ops
from fcn_cuda.data import SyntheticShapes
from fcn_cuda.training import Trainer, TrainConfig, batch_indices, make_batch, running_mean
from fcn_cuda.weights import load_safetensors

WIDTHS = ((4, 4), (4, 4), (8, 8, 8), (8, 8, 8), (8, 8, 8))


def small_model(seed=0):
    fcn_cuda.use_backend("host")
    m = fcn_cuda.FCN("8s", 4, widths=WIDTHS, fc=16, seed=seed)
    # Non-zero score layers so every parameter moves from the first step.
    sd = m.state_dict()
    rng = np.random.default_rng(seed)
    for k in sd:
        if k.startswith("score"):
            sd[k] = (rng.standard_normal(sd[k].shape) * 0.01).astype(np.float32)
    m.load_state_dict(sd)
    return m


def config(**kw):
    base = dict(iterations=4, lr=1e-4, momentum=0.9, normalize=True, val_every=2, checkpoint_every=2, seed=5)
    base.update(kw)
    return TrainConfig(**base)


def test_batches_walk_seeded_permutations():
    seen = [batch_indices(5, 2, 3, s) for s in range(5)]
    flat = sum(seen, [])
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    assert seen == [batch_indices(5, 2, 3, s) for s in range(5)]


def test_sgd_follows_the_recipe():
    m = small_model()
    t = Trainer(m, config(lr=0.5, momentum=0.9, weight_decay=0.1))
    before = {k: v.copy() for k, v in m.params.items()}
    grads = {k: np.full_like(v, 0.25) for k, v in m.params.items()}
    t.sgd(grads)
    w, b = "conv1_1.weight", "conv1_1.bias"
    np.testing.assert_allclose(m.params[w], before[w] - 0.5 * (0.25 + 0.1 * before[w]), rtol=1e-6)
    np.testing.assert_allclose(m.params[b], before[b] - 2 * 0.5 * 0.25, rtol=1e-6)  # 2x lr, no decay
    np.testing.assert_array_equal(m.params["upscore8.weight"], before["upscore8.weight"])  # frozen


def test_trained_upsampling_is_decided_on_the_device(monkeypatch):
    """train_upsampling=True: after each step the upsampling variants are
    decided where the weights are, without a state_dict / load_state_dict
    round trip of the whole model, and the steps are bit for bit those that
    the round trip gave. The first step makes the bilinear kernels non-diagonal."""
    cfg = config(iterations=3, lr=1e-2, train_upsampling=True)
    trainer, reference = Trainer(small_model(), cfg), Trainer(small_model(), cfg)
    x, labels = make_batch(SyntheticShapes(2, size=24, seed=1), [0, 1], fcn_cuda._backend.active())
    assert set(trainer.model.upsample_variant.values()) == {"bilinear"}
    round_trips = []

    def counted(method):
        def call(self, *args):
            round_trips.append(method.__name__)
            return method(self, *args)
        return call

    for _ in range(3):
        with monkeypatch.context() as m:
            for name in ("state_dict", "load_state_dict"):
                m.setattr(fcn_cuda.FCN, name, counted(getattr(fcn_cuda.FCN, name)))
            loss = trainer.train_step(x, labels)
        assert round_trips == []
        assert reference.train_step(x, labels) == loss
        reference.model.load_state_dict(reference.model.state_dict())  # what each step did before
        assert trainer.model.upsample_variant == reference.model.upsample_variant
        for k, v in reference.model.params.items():
            assert trainer.model.params[k].tobytes() == v.tobytes(), k
    assert set(trainer.model.upsample_variant.values()) == {"gather"}


def test_rates_follow_the_multipliers_and_the_warmup():
    m = small_model()
    t = Trainer(m, config(lr=0.5, warmup=4, input_lr_mult=0.01))
    ramp = [0.25, 0.5, 0.75, 1.0, 1.0]
    for step, r in enumerate(ramp):
        t.step = step
        assert t.rate("conv1_2.weight") == pytest.approx(0.5 * r)
        assert t.rate("conv1_1.weight") == pytest.approx(0.5 * 0.01 * r)
        assert t.rate("conv1_1.bias") == pytest.approx(2 * 0.5 * r)  # the bias keeps the bias multiplier
    t.step = 0
    before = {k: v.copy() for k, v in m.params.items()}
    t.sgd({k: np.full_like(v, 0.25) for k, v in m.params.items()})
    for name, rate in (("conv1_1.weight", 0.5 * 0.01 * 0.25), ("conv1_2.weight", 0.5 * 0.25)):
        np.testing.assert_allclose(m.params[name], before[name] - rate * (0.25 + 5e-4 * before[name]), rtol=1e-6)


@pytest.mark.parametrize("schedule", [{}, {"warmup": 5, "input_lr_mult": 0.5}, {"class_weights": (1, 3, 4.5, 6)},
                                      {"lr_drops": (2, 5), "lr": 1e-3}],
                         ids=["constant", "warmup", "class-weights", "lr-drops"])
def test_training_resumes_exactly(tmp_path, schedule):
    data = SyntheticShapes(6, size=24, seed=1)
    val = SyntheticShapes(2, size=24, seed=2)
    unbroken = Trainer(small_model(), config(iterations=6, **schedule))
    unbroken.fit(data, val, progress=False)

    out = tmp_path / "run"
    first = fcn_cuda.train(small_model(), data, val, out=out, config=config(iterations=3, **schedule), progress=False)
    assert (out / "checkpoint.safetensors").exists() and (out / "curves.png").exists()
    resumed = fcn_cuda.train(None, data, val, out=out, config=config(iterations=6, **schedule), progress=False)
    assert resumed.step == 6
    assert resumed.history.loss == unbroken.history.loss  # bit-identical after the resume
    for k, v in unbroken.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[k], v)
    assert first.history.val_step == [2] and resumed.history.val_step == [2, 4, 6]
    assert set(resumed.history.val[-1]) == {"pixel_acc", "mean_acc", "mean_iu", "fw_iu"}


def test_rates_drop_tenfold_at_each_lr_drop():
    t = Trainer(small_model(), config(lr=0.5, lr_drops=(4, 2)))
    assert t.config.lr_drops == (2, 4)
    for step, r in enumerate([0.5, 0.5, 0.05, 0.05, 0.005, 0.005]):
        t.step = step
        assert t.rate("conv2_1.weight") == pytest.approx(r)
        assert t.rate("conv2_1.bias") == pytest.approx(2 * r)


def test_a_resumed_run_may_change_only_future_lr_drops(tmp_path):
    data = SyntheticShapes(6, size=24, seed=1)
    out = tmp_path / "run"
    fcn_cuda.train(small_model(), data, out=out, config=config(iterations=3, lr_drops=(2,)), progress=False)
    with pytest.raises(ValueError, match=r"at step 3: lr_drops before it are \[2\] and cannot change"):
        fcn_cuda.train(None, data, out=out, config=config(iterations=5, lr_drops=(1,)), progress=False)
    unbroken = Trainer(small_model(), config(iterations=5, val_every=0, lr_drops=(2, 4)))
    unbroken.fit(data, progress=False)
    resumed = fcn_cuda.train(None, data, out=out, config=config(iterations=5, lr_drops=(2, 4)), progress=False)
    assert resumed.config.lr_drops == (2, 4) and resumed.history.loss == unbroken.history.loss


def test_a_checkpoint_loads_as_its_model_for_eval_and_infer(tmp_path):
    data = SyntheticShapes(4, size=24, seed=1)
    run = fcn_cuda.train(small_model(), data, out=tmp_path, config=config(iterations=2, val_every=0), progress=False)
    loaded = fcn_cuda.load_model(tmp_path / "checkpoint.safetensors")
    assert set(loaded.state_dict()) == set(run.model.state_dict())
    for k, v in run.model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[k], v)
    img, _ = data[0]
    np.testing.assert_array_equal(fcn_cuda.infer(img, loaded), fcn_cuda.infer(img, run.model))


def test_the_weighted_loss_is_least_where_scores_carry_the_class_prior():
    """class_prior's claim, on the loss kernel itself: with labels in
    proportion p and class weights w, the summed gradient vanishes at scores
    log(w p), i.e. the unweighted optimum log p shifted by class_prior(w)."""
    from fcn_cuda.model import class_prior

    counts, w = np.array([50, 20, 10, 20]), np.array([1.0, 4.94, 5.77, 0.5])
    labels = np.repeat(np.arange(4), counts).astype(np.int32).reshape(1, 10, 10)
    z = np.log(counts / counts.sum()) + class_prior(w)
    scores = np.broadcast_to(z[None, :, None, None], (1, 4, 10, 10)).astype(np.float32).copy()
    for normalize in (False, True):
        _, grad = ops.softmax_cross_entropy(scores, labels, normalize=normalize, weight=w)
        np.testing.assert_allclose(np.asarray(grad).sum(axis=(0, 2, 3)), 0, atol=1e-5)
        _, unshifted = ops.softmax_cross_entropy(scores - class_prior(w)[None, :, None, None].astype(np.float32),
                                                 labels, normalize=normalize, weight=w)
        assert np.abs(np.asarray(unshifted).sum(axis=(0, 2, 3))).max() > 1e-2
    np.testing.assert_array_equal(class_prior([2.0, 0.0, 1.0]), [np.log(2.0), 0.0, 0.0])


def test_a_weighted_run_validates_and_ships_the_model_without_its_class_prior(tmp_path):
    from fcn_cuda.model import class_prior, deployed
    from fcn_cuda.training import evaluate

    data, val = SyntheticShapes(4, size=24, seed=1), SyntheticShapes(2, size=24, seed=2)
    w = (1.0, 3.0, 4.5, 6.0)
    run = fcn_cuda.train(small_model(), data, val, out=tmp_path, config=config(iterations=2, class_weights=w),
                         progress=False)
    raw = run.model.state_dict()
    final = fcn_cuda.load_model(tmp_path / "final.safetensors").state_dict()
    from_checkpoint = fcn_cuda.load_model(tmp_path / "checkpoint.safetensors").state_dict()
    for k, v in raw.items():
        if k == "score_pool3.bias":  # the bias just before the final, bilinear upsample
            np.testing.assert_allclose(final[k], v - class_prior(w), rtol=0, atol=1e-6)
        else:
            np.testing.assert_array_equal(final[k], v)
        np.testing.assert_array_equal(from_checkpoint[k], final[k])
    assert run.history.val[-1] == evaluate(deployed(run.model, w), val)
    meta = load_safetensors(tmp_path / "final.safetensors")[1]  # how the final weights were made
    assert meta["step"] == "2" and json.loads(meta["config"])["class_weights"] == list(w)
    unweighted = fcn_cuda.train(small_model(), data, out=tmp_path / "plain", config=config(iterations=1),
                                progress=False)
    assert deployed(unweighted.model, None) is unweighted.model
    fcn32 = fcn_cuda.FCN("32s", 4, widths=WIDTHS, fc=16)  # no bias reaches every score unchanged: kept as trained
    with pytest.warns(UserWarning, match="keeps their prior"):
        assert deployed(fcn32, w) is fcn32


def test_a_nan_loss_stops_training_and_keeps_the_last_checkpoint(tmp_path):
    data = SyntheticShapes(4, size=24, seed=1)
    out = tmp_path / "run"
    trainer = Trainer(small_model(), config(iterations=2, checkpoint_every=1), out)
    trainer.fit(data, progress=False)
    good = (out / "checkpoint.safetensors").read_bytes()
    trainer.config.iterations = 50
    trainer.config.lr = 1e30
    with pytest.raises(FloatingPointError, match="checkpoint") as stop:
        trainer.fit(data, progress=False)
    kept = Trainer.resume(out / "checkpoint.safetensors")
    assert all(np.isfinite(v).all() for v in kept.model.state_dict().values())
    assert kept.step >= 2 and (out / "checkpoint.safetensors").read_bytes() != b""
    assert good  # the first good checkpoint existed before the run blew up
    # The error says how to get past the blow-up: an lr drop at the checkpoint's step, which resume accepts.
    assert f"(step {kept.step})" in str(stop.value) and f"--lr-drops {kept.step}" in str(stop.value)
    slower = Trainer.resume(out / "checkpoint.safetensors", config=config(iterations=50, lr_drops=(kept.step,)))
    assert slower.rate("fc6.weight") == pytest.approx(0.1 * kept.rate("fc6.weight"), rel=1e-12)


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_stops_training_after_the_step_with_a_checkpoint(tmp_path, monkeypatch, signame):
    """Ctrl-C (or a machine's SIGTERM) mid-step: the step finishes, a checkpoint
    of exactly that state is written, and resuming gives the unbroken run's losses."""
    import os
    import signal

    data = SyntheticShapes(6, size=24, seed=1)
    unbroken = Trainer(small_model(), config(iterations=5, val_every=0))
    unbroken.fit(data, progress=False)

    out = tmp_path / "run"
    trainer = Trainer(small_model(), config(iterations=5, val_every=0, checkpoint_every=0), out)
    step = Trainer.train_step

    def interrupted(self, x, labels):
        if self.step == 2:
            os.kill(os.getpid(), getattr(signal, signame))  # arrives in the middle of the step
        return step(self, x, labels)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    before = signal.getsignal(signal.SIGINT)
    trainer.fit(data, progress=False)
    assert trainer.step == 3 and not trainer.finished and trainer.stopped_by == signame
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are given back
    monkeypatch.setattr(Trainer, "train_step", step)
    resumed = fcn_cuda.train(None, data, out=out, config=config(iterations=5, val_every=0), progress=False)
    assert resumed.history.loss == unbroken.history.loss
    for k, v in unbroken.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[k], v)


def test_class_weights_weight_the_training_loss():
    data = SyntheticShapes(2, size=24, seed=1)
    x, labels = make_batch(data, [0, 1], fcn_cuda._backend.active())
    weights = (0.5, 3.0, 4.0, 6.0)
    m = small_model()
    expected, _ = ops.softmax_cross_entropy(m.forward(x), labels, normalize=True, weight=weights)
    plain, _ = ops.softmax_cross_entropy(m.forward(x), labels, normalize=True)
    assert expected != pytest.approx(plain)  # the weights change this batch's loss
    loss, _ = Trainer(small_model(), config(class_weights=weights, dropout=False)).train_step(x, labels)
    assert loss == expected
    with pytest.raises(ValueError, match="holds 3 weights, the model has 4 classes"):
        Trainer(small_model(), config(class_weights=(1, 2, 3)))


def test_evaluate_scores_a_dataset():
    m = small_model()
    scores = fcn_cuda.evaluate(m, SyntheticShapes(3, size=24, seed=0))
    assert set(scores) == {"pixel_acc", "mean_acc", "mean_iu", "fw_iu"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())


def test_train_rejects_unknown_options():
    with pytest.raises(TypeError, match="unknown training option"):
        fcn_cuda.train(small_model(), SyntheticShapes(2, size=24), learning_rate=1.0)


@pytest.mark.parametrize("bad", [dict(warmup=-1), dict(batch_size=0), dict(iterations=2.5), dict(lr=float("nan")),
                                 dict(input_lr_mult=-1.0), dict(momentum=1.0), dict(weight_decay="0.1"),
                                 dict(class_weights=(1.0, -2.0)), dict(class_weights=(1.0, float("inf"))),
                                 dict(class_weights=()), dict(class_weights="1,2"), dict(class_weights=3.0),
                                 dict(class_weights=(1, True)), dict(lr_drops=(0,)), dict(lr_drops=("5",)),
                                 dict(lr_drops=3), dict(lr_drops=(True,))])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=f"TrainConfig.{next(iter(bad))} must"):
        TrainConfig(**bad)


def test_training_learns():
    data = SyntheticShapes(8, size=24, seed=3)
    t = Trainer(small_model(1), config(iterations=40, lr=1e-3, momentum=0.9, val_every=0, checkpoint_every=0,
                                       dropout=False))
    t.fit(data, progress=False)
    loss = t.history.loss
    assert np.mean(loss[-8:]) < 0.8 * np.mean(loss[:8]), loss


@pytest.mark.filterwarnings("ignore:FCN-32s trained with class_weights")  # that warning has its own test
def test_cli_train_resume_eval_and_staged_init(tmp_path, capsys):
    from fcn_cuda import cli

    run = tmp_path / "run32"
    common = ["--data", "synthetic", "--size", "24", "--count", "6", "--val-count", "2", "--width-divisor", "16",
              "--lr", "1e-4", "--momentum", "0.9", "--normalize", "--val-every", "2", "--checkpoint-every", "2",
              "--class-weights", "1,2,2,3", "--lr-drops", "3", "--backend", "host"]
    assert cli.main(["train", "--variant", "32s", "--out", str(run), "--iterations", "2", *common]) == 0
    assert cli.main(["train", "--variant", "32s", "--out", str(run), "--iterations", "4", *common]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "mean_iu" in out
    resumed = Trainer.resume(run / "checkpoint.safetensors").config
    assert resumed.class_weights == (1, 2, 2, 3) and resumed.lr_drops == (3,)
    with pytest.raises(SystemExit):
        cli.main(["train", "--variant", "32s", "--out", str(run), *common, "--class-weights", "1,two"])
    assert "expected comma-separated floats" in capsys.readouterr().err
    assert (run / "final.safetensors").exists() and (run / "curves.png").exists()
    staged = tmp_path / "run16"
    assert cli.main(["train", "--variant", "16s", "--init", str(run / "final.safetensors"), "--out", str(staged),
                     "--iterations", "1", *common]) == 0
    m32, m16 = fcn_cuda.load_model(run / "final.safetensors"), fcn_cuda.load_model(staged / "final.safetensors")
    assert m16.variant == "16s" and m16.num_classes == 4
    # The trunk carried over from 32s and moved by one small step; the new skip layer started at zero.
    w32, w16 = m32.state_dict()["conv2_1.weight"], m16.state_dict()["conv2_1.weight"]
    assert np.abs(w16 - w32).max() < 1e-2 * np.abs(w32).max()
    assert np.abs(m16.state_dict()["score_pool4.weight"]).max() < 1e-2
    assert cli.main(["eval", "--data", "synthetic", "--size", "24", "--count", "3", "--weights",
                     str(staged / "final.safetensors"), "--backend", "host"]) == 0
    assert "mean_iu" in capsys.readouterr().out
    assert cli.main(["curves", str(run / "checkpoint.safetensors"), "--out", str(tmp_path / "c.png")]) == 0
    assert "steps 1..4; validation mean IU" in capsys.readouterr().out
    assert Image.open(tmp_path / "c.png").size == Image.open(run / "curves.png").size
    assert cli.main(["curves", str(run / "final.safetensors")]) == 2  # final weights keep no history
    assert "not an fcn_cuda training checkpoint" in capsys.readouterr().err


def test_cli_train_refuses_at_once_where_it_would_be_ignored(tmp_path, capsys):
    """--at-once is FCN-8s at once from VGG16: with --variant 32s / 16s, or with --init a trained FCN
    without the scales (staging keeps the model's own), it is an error naming the conflict, not ignored."""
    from fcn_cuda import cli

    trained = tmp_path / "fcn32s.safetensors"
    fcn_cuda.FCN("32s", 4, widths=((2, 2), (2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)), fc=3).save(trained)
    common = ["train", "--data", "synthetic", "--size", "24", "--count", "2", "--iterations", "1", "--val-every", "0",
              "--width-divisor", "32", "--backend", "host", "--at-once"]
    for flags, message in (
            (["--variant", "32s"], "--at-once trains FCN-8s at once (pool4 x 0.01, pool3 x 1e-4, the reference's "
                                   "recipe), not --variant 32s"),
            (["--variant", "16s"], "not --variant 16s"),
            (["--variant", "8s", "--init", str(trained)],
             f"--at-once conflicts with --init {trained}: a trained FCN-32s without the at-once scales")):
        out = tmp_path / "run"
        assert cli.main([*common, *flags, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()


@pytest.mark.parametrize("window", [1, 3, 50])
def test_running_mean_is_the_mean_of_the_last_window_values(window):
    ys = np.random.default_rng(window).normal(size=41)
    expected = [ys[max(0, i + 1 - window):i + 1].mean() for i in range(len(ys))]
    np.testing.assert_allclose(running_mean(ys, window), expected, rtol=1e-12, atol=1e-12)
