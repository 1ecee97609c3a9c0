"""The bundled default model: how it is trained, scored and shipped.

    python -m fcn_cuda.bundled train --out runs/shapes      # resumable; --backend cuda on a GPU
    python -m fcn_cuda.bundled score runs/shapes/final.safetensors [--crf]
    python -m fcn_cuda.bundled ship runs/shapes/final.safetensors
    python -m fcn_cuda.bundled tune-crf          # the dense CRF's parameters, on the validation set
    python -m fcn_cuda.bundled picture           # the README picture, from the shipped model

`train` runs RECIPE with fcn_cuda's own engine (no PyTorch anywhere): a
reduced-width FCN-8s on the synthetic shapes set. `score` gives the four
reference scores on a freshly generated held-out set (a seed that no
training or validation set uses). `ship` scores the weights, refuses them
below TARGET_MEAN_IU, then writes the package's default model
(fcn_cuda/data/fcn8s_shapes.safetensors, with the recipe, the score and
where it was trained in its metadata), the bundled sample image and the
overlay picture the README shows.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from .inference import DEFAULT_WEIGHTS  # what fcn_cuda.infer(img) and `fcn-cuda infer` load
from .weights.state_dict import PIXEL_STD

SAMPLE_IMAGE = DEFAULT_WEIGHTS.parent / "shapes_sample.png"
README_PICTURE = Path(__file__).parent.parent / "docs" / "shapes_sample_overlay.png"

TARGET_MEAN_IU = 0.85
HELD_OUT_SEED = 20261124  # training uses RECIPE["seed"], validation that + 1_000_003
HELD_OUT_COUNT = 200
SAMPLE_INDEX = 1  # the held-out image shipped as the sample: four shapes, all three classes, mean IU near the set's

# Reduced width: VGG16's channels / 8, fc6/fc7 128 wide (2.6 MB of weights).
RECIPE = dict(
    variant="8s",
    width_divisor=8,
    fc=128,
    size=160,            # synthetic image side: shapes of 16 to 64 pixels. Most wrong pixels lie within 2 px of
                         # a shape's edge, so larger shapes score higher; through the 100-pixel conv1 padding a
                         # step costs about 1.5x that of 96-pixel images
    count=20_000,        # training images
    batch_size=4,
    iterations=5_000,    # the shipped run: 0.851 held-out mean IU at step 4002 and 0.859 at 5000, with the class
                         # prior removed (model.deployed); 0.823 with it left in
    lr=2e-2,             # SGD on the per-pixel-normalised loss; biases 2x, no decay on them. At 3e-2 our
                         # run blew up at step 290 (loss 0.95 -> 13.7 in one step; the gradients there match
                         # torch in float64 to 1e-4): too close to the edge of stability
    warmup=500,          # steps of linear ramp to lr
    lr_drops=(3000,),    # lr 10x lower from here on. A PyTorch stand-in continuing our step-1426 checkpoint
                         # (same data order and update) went 0.78 -> 0.81 held-out mean IU in 500 steps after
                         # the drop; at constant lr a from-scratch stand-in had stalled near 0.75 from step 2000 to 4000
    momentum=0.9,
    weight_decay=5e-4,
    input_lr_mult=1 / PIXEL_STD**2,  # conv1_1 trained as on unit-scale inputs (Trainer.rate); at 1 the
                                     # first steps blew up (loss 13 at step 2), conv3_3 91% dead by step 1300
    class_weights=(1.0, 4.94, 5.77, 7.5),  # 1 / sqrt(class frequency), background 1: background is 92% of the
                                           # pixels and unweighted runs under-segment the shapes
    normalize=True,
    dropout=False,
    val_every=500,
    val_count=50,
    target_mean_iu=0.88,  # stop early at this validation mean IU: a margin over TARGET_MEAN_IU
    checkpoint_every=100,
    seed=0,
)


def _widths(divisor):
    from .geometry import VGG16_BLOCKS

    return tuple(tuple(max(1, c // divisor) for c in block) for block in VGG16_BLOCKS)


def fresh_model(recipe=RECIPE):
    """The untrained model of the recipe."""
    from .model import FCN
    from .data import SHAPE_CLASSES

    return FCN(recipe["variant"], len(SHAPE_CLASSES), widths=_widths(recipe["width_divisor"]), fc=recipe["fc"],
               seed=recipe["seed"])


def train(out, recipe=RECIPE, progress=True, max_seconds=None, **overrides):
    """Runs the recipe (overrides change single fields, e.g. iterations for a
    smoke run); resumes from out/checkpoint.safetensors when there is one.
    With max_seconds it stops after that long with a checkpoint (run it again
    to go on)."""
    from .data import SyntheticShapes
    from .training import TrainConfig, train as run

    recipe = {**recipe, **overrides}
    unknown = set(overrides) - set(RECIPE)
    if unknown:
        raise TypeError(f"unknown recipe fields: {sorted(unknown)}")
    fields = TrainConfig.__dataclass_fields__
    config = TrainConfig(**{k: v for k, v in recipe.items() if k in fields})
    train_set = SyntheticShapes(recipe["count"], recipe["size"], seed=recipe["seed"])
    val_set = validation(recipe=recipe)
    return run(fresh_model(recipe), train_set, val_set, out=out, config=config, progress=progress,
               max_seconds=max_seconds)


def held_out(count=HELD_OUT_COUNT, size=RECIPE["size"]):
    from .data import SyntheticShapes

    return SyntheticShapes(count, size, seed=HELD_OUT_SEED)


def score(weights, count=HELD_OUT_COUNT, progress=True, crf=None):
    """The four reference scores of `weights` (a file, or a loaded FCN) on the held-out synthetic set;
    crf as fcn_cuda.infer's (True: the labels of the dense CRF with fcn_cuda.crf.SHAPES)."""
    import fcn_cuda

    from ._progress import Progress

    model = weights if isinstance(weights, fcn_cuda.FCN) else fcn_cuda.load_model(weights)
    data = held_out(count)
    return fcn_cuda.evaluate(model, data, progress=Progress(len(data), "score") if progress else None, crf=crf)


def validation(count=None, size=None, recipe=RECIPE):
    """The recipe's validation set (what train validates on; count and size default to the recipe's): the set
    the CRF's parameters are tuned on."""
    from .data import SyntheticShapes

    return SyntheticShapes(recipe["val_count"] if count is None else count, recipe["size"] if size is None else size,
                           seed=recipe["seed"] + 1_000_003)


# The dense CRF parameters tune_crf tries for the bundled model (the others as pydensecrf's README): a
# coarse grid, then the edge its best lay on (bilateral_sxy 10, bilateral_compat 10) pushed further, and
# pydensecrf's README values for comparison.
CRF_GRIDS = (dict(iterations=(5, 10), bilateral_sxy=(10.0, 20.0, 40.0, 80.0), bilateral_srgb=(5.0, 10.0, 20.0),
                  bilateral_compat=(5.0, 10.0)),
             dict(iterations=(10,), bilateral_sxy=(5.0, 10.0), bilateral_srgb=(5.0, 10.0, 20.0),
                  bilateral_compat=(10.0, 20.0)),
             dict(iterations=(5,), bilateral_sxy=(80.0,), bilateral_srgb=(13.0,), bilateral_compat=(10.0,)))


def tune_crf(weights=DEFAULT_WEIGHTS, grids=CRF_GRIDS, count=RECIPE["val_count"], progress=True):
    """Validation mean IU of the dense CRF over `weights`' softmax for every combination of each grid
    (fcn_cuda.crf.PYDENSECRF_README's values for the rest): [(mean IU, parameters)], best first, with
    (mean IU, None) for the model without the CRF. Never the held-out set: that one scores the winner."""
    import itertools

    import fcn_cuda

    from . import metrics, ops
    from ._backend import active
    from ._progress import Progress
    from .crf import PYDENSECRF_README

    be = active()
    model = weights if isinstance(weights, fcn_cuda.FCN) else fcn_cuda.load_model(weights)
    data = validation(count)
    images, truths, probs = [], [], []
    for i in range(len(data)):  # the model runs once per image; the grid reuses its probabilities
        rgb, truth = data[i]
        images.append(be.xp.asarray(rgb))
        truths.append(be.xp.asarray(truth.astype("int32"))[None])
        probs.append(model.labels(ops.preprocess(images[-1]), probs=True)[1][0])

    def mean_iu(labels_of):
        hist = None
        for i in range(len(images)):
            hist = metrics.confusion_matrix(truths[i], labels_of(i), model.num_classes, hist)
        return metrics.scores(hist)["mean_iu"]

    combos = []
    for grid in grids:
        for values in itertools.product(*grid.values()):
            combo = {**PYDENSECRF_README, **dict(zip(grid, values))}
            if combo not in combos:
                combos.append(combo)
    bar = Progress(len(combos), "tune-crf") if progress else None
    results = [(mean_iu(lambda i: ops.argmax(probs[i][None])), None)]
    for params in combos:
        results.append((mean_iu(lambda i: ops.argmax(fcn_cuda.dense_crf(images[i], probs[i], **params)[None])),
                        params))
        if bar:
            bar.update(1)
    return sorted(results, key=lambda r: -r[0])


def _commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ship(weights, dest=DEFAULT_WEIGHTS, sample=SAMPLE_IMAGE, picture=README_PICTURE, trained_on="unknown",
         count=HELD_OUT_COUNT):
    """Scores `weights` (a weights file or a training checkpoint); at
    TARGET_MEAN_IU or better writes the default model,
    the sample image and the README picture (all atomically); returns the scores."""
    import fcn_cuda
    from PIL import Image

    from .data import SHAPE_CLASSES
    from .files import save_png
    from .weights import read, save_safetensors

    model = fcn_cuda.load_model(weights)  # a checkpoint loads without its class prior, as final.safetensors
    scores = score(model, count)
    if not scores["mean_iu"] >= TARGET_MEAN_IU:
        raise ValueError(f"{weights}: mean IU {scores['mean_iu']:.4f} on {count} held-out images is below the "
                         f"target {TARGET_MEAN_IU}; not shipped")
    tensors = model.state_dict()
    meta = read(weights)[1]  # a checkpoint's momentum, history and config are left behind
    kept = {k: meta[k] for k in ("variant", "num_classes", "at_once", "step") if k in meta}
    meta = {"format": "fcn_cuda", **kept,
            "recipe": json.dumps(RECIPE), "held_out": json.dumps({"seed": HELD_OUT_SEED, "count": count, **scores}),
            "trained_on": trained_on, "commit": _commit(), "shipped": time.strftime("%Y-%m-%d"),
            "classes": json.dumps(SHAPE_CLASSES)}
    save_safetensors(dest, tensors, meta)

    rgb, _ = held_out(SAMPLE_INDEX + 1)[SAMPLE_INDEX]
    save_png(sample, Image.fromarray(rgb))
    draw_picture(fcn_cuda.load_model(dest), picture)
    return scores


def draw_picture(model, picture=README_PICTURE):
    """The README picture of `model` on the sample (held-out image SAMPLE_INDEX), written atomically:
    the image, infer's overlay, the labels without and with the dense CRF (infer(crf=True)), the truth."""
    import fcn_cuda

    from .colors import colorize, overlay
    from .data import SHAPE_CLASSES
    from .files import save_png

    rgb, truth = held_out(SAMPLE_INDEX + 1)[SAMPLE_INDEX]
    labels = fcn_cuda.infer(rgb, model)
    panels = {"the sample image": rgb, "fcn-cuda infer: its overlay": overlay(rgb, labels),
              "fcn-cuda's labels": colorize(labels), "fcn-cuda + CRF": colorize(fcn_cuda.infer(rgb, model, crf=True)),
              "the true labels": colorize(truth)}
    save_png(picture, _captioned(panels, SHAPE_CLASSES))


def _captioned(panels, class_names, scale=2, gap=8, line=22):
    """The H x W x 3 panels side by side, each drawn `scale` times larger under its caption, over a legend of
    the class colors (the README picture)."""
    from PIL import Image, ImageDraw, ImageFont

    from .colors import voc_colormap

    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1 has only its small bitmap font
        font = ImageFont.load_default()
    h, w = next(iter(panels.values())).shape[:2]
    h, w = h * scale, w * scale
    sheet = Image.new("RGB", (len(panels) * (w + gap) - gap, line + h + line), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (caption, img) in enumerate(panels.items()):
        x = i * (w + gap)
        draw.text((x + 2, 3), caption, fill="black", font=font)
        sheet.paste(Image.fromarray(img).resize((w, h), Image.NEAREST), (x, line))
    x = 2
    for name, color in zip(class_names, voc_colormap(len(class_names))):
        draw.rectangle((x, line + h + 5, x + 14, line + h + 19), fill=tuple(int(c) for c in color), outline="gray")
        draw.text((x + 20, line + h + 4), name, fill="black", font=font)
        x += 30 + int(draw.textlength(name, font=font))
    return sheet


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m fcn_cuda.bundled", description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("host", "cuda"))
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the recipe (resumable)")
    t.add_argument("--out", required=True)
    t.add_argument("--iterations", type=int, help=f"default: the recipe's {RECIPE['iterations']}")
    t.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this long; run again to go on")
    s = sub.add_parser("score", help="scores on the held-out synthetic set")
    s.add_argument("weights")
    s.add_argument("--count", type=int, default=HELD_OUT_COUNT)
    s.add_argument("--crf", action="store_true",
                   help="labels from the dense CRF (fcn_cuda.crf.SHAPES), as infer(crf=True)")
    c = sub.add_parser("tune-crf", help="the dense CRF's validation mean IU over CRF_GRIDS, best first")
    c.add_argument("weights", nargs="?", default=str(DEFAULT_WEIGHTS))
    c.add_argument("--top", type=int, default=10, help="how many results to print")
    d = sub.add_parser("picture", help="redraw the README picture from the shipped model (weights untouched)")
    d.add_argument("weights", nargs="?", default=str(DEFAULT_WEIGHTS))
    p = sub.add_parser("ship", help="score, then install as the package's default model")
    p.add_argument("weights")
    p.add_argument("--trained-on", default="unknown", help="backend and device the weights were trained on")
    args = ap.parse_args(argv)

    import fcn_cuda

    try:
        if args.backend:
            fcn_cuda.use_backend(args.backend)
        if args.command == "train":
            overrides = {"iterations": args.iterations} if args.iterations else {}
            limit = args.max_minutes * 60 if args.max_minutes else None
            trainer = train(args.out, max_seconds=limit, **overrides)
            if not trainer.finished:
                print(f"stopped by {trainer.stopped_by} at step {trainer.step}; run the same command to go on")
            else:
                print(f"weights: {Path(args.out) / 'final.safetensors'}")
            if trainer.history.val:
                print("  ".join(f"{k} {v:.4f}" for k, v in trainer.history.val[-1].items()))
        elif args.command == "score":
            for k, v in score(args.weights, args.count, crf=args.crf or None).items():
                print(f"{k:>10s} {100 * v:6.2f}")
        elif args.command == "picture":
            draw_picture(fcn_cuda.load_model(args.weights))
            print(f"wrote {README_PICTURE}")
        elif args.command == "tune-crf":
            for miu, params in tune_crf(args.weights)[:args.top]:
                print(f"{100 * miu:6.2f}  {params if params else 'without the CRF'}")
        else:
            scores = ship(args.weights, trained_on=args.trained_on)
            print(f"shipped {DEFAULT_WEIGHTS} (mean IU {scores['mean_iu']:.4f}), {SAMPLE_IMAGE}, {README_PICTURE}")
    except (FileNotFoundError, ValueError, TypeError, RuntimeError, FloatingPointError) as e:
        print(f"python -m fcn_cuda.bundled {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
