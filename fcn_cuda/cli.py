"""The `fcn-cuda` command line.

    fcn-cuda infer IMAGE_OR_DIR... [--weights W] [--out DIR] [--backend host|cuda] [--crf [--crf-PARAMETER V ...]]
                   [--tile N] [--tile-batch B]
        writes <name>_labels.png (paletted, VOC colors) and <name>_overlay.png
        for each image (a folder: its images; the output folder: its images
        less those two kinds of file) and prints how many pixels each class
        got; two images of one name are refused; --crf refines the labels
        with the dense CRF; --tile N runs exact tiles (fcn_cuda.tiling) in
        memory bounded by the tile, reading .npy and TIFF images a window at
        a time and writing <name>_labels.npy (a memory map) beside the two
        PNGs (the overlay subsampled to at most OVERLAY_MAX_PIXELS), B tiles
        at a time; an image too large for the free memory runs in tiles
        without --tile too, and says so;
    fcn-cuda train --data DATA --variant 8s [--init W] --out DIR ...
        trains (the reference recipe by default), resumable;
    fcn-cuda eval --data DATA [--split S] --weights W
        prints pixel accuracy, mean accuracy, mean IU and frequency-weighted IU;
    fcn-cuda curves CHECKPOINT [--out PNG]
        draws a run's loss and metric curves from its checkpoint, at any step;
    fcn-cuda convert IN OUT.safetensors [--variant V --num-classes N]
        writes any weights load_model reads (.caffemodel, .pth, ours) as our own file.

DATA is 'synthetic', 'voc:DIR' (or a bare DIR: a PASCAL VOC folder; split
seg11valid is the reference's validation list) or 'sbd:DIR' (SBD's
benchmark_RELEASE folder: splits train, val).

Under torchrun (WORLD_SIZE > 1), train is data-parallel and infer shares the
images out over the ranks (fcn_cuda.distributed), or with --tile each
image's tiles, every rank writing its own into the one <name>_labels.npy;
rank 0 prints.
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np


def _class_names(num_classes):
    from .colors import VOC_CLASSES

    if num_classes == len(VOC_CLASSES):
        return VOC_CLASSES
    return tuple(f"class {i}" for i in range(num_classes))


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp", ".npy")
OUTPUT_KINDS = ("labels", "overlay")  # infer writes NAME_labels.png and NAME_overlay.png for image NAME.*
TILED_LABELS = "_labels.npy"  # and with tiles NAME_labels.npy, the labels as a memory map
# The largest overlay drawn in tiles at full size: 8192 x 8192 pixels, under
# Pillow's decompression-bomb limit (89 Mpx), so any viewer built on Pillow
# opens it, and about 7 bytes a pixel in memory while it is drawn and
# encoded (the array, Pillow's RGBX copy). A larger image's overlay keeps
# every s-th pixel of every s-th row, s the least that fits.
OVERLAY_MAX_PIXELS = 1 << 26


def _outputs(path, out_dir, tiled=False):
    """The files infer writes for one image: out_dir / f"{stem}_{kind}.png"
    per kind, and with tiles out_dir / f"{stem}_labels.npy"."""
    stem = Path(path).stem
    pngs = [out_dir / f"{stem}_{kind}.png" for kind in OUTPUT_KINDS]
    return pngs + [out_dir / f"{stem}{TILED_LABELS}"] if tiled else pngs


def _is_output(path):
    return path.name.endswith(tuple(f"_{kind}.png" for kind in OUTPUT_KINDS) + (TILED_LABELS,))


def _image_paths(items, out_dir):
    """The files named, a folder standing for its image files (by suffix, sorted).
    A folder that is the output folder stands for its images less the files
    infer writes there (names ending in _labels.png or _overlay.png), so a
    second run over it reads the same images as the first."""
    paths = []
    for item in map(Path, items):
        if item.is_dir():
            is_out = item.resolve() == out_dir.resolve()
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                           and not (is_out and _is_output(p)))
            if not found:
                raise FileNotFoundError(f"{item} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            paths += found
        else:
            paths.append(item)
    return paths


def _check_outputs(paths, out_dir, tiled=False):
    """ValueError, before any image is read, when two images would write the
    same output files (the same name, other suffix or folder) or an output
    would replace an image being segmented (tiled: when tiles may run, the
    labels' .npy too). Every torchrun rank checks the whole list, so all
    ranks refuse alike before any writes."""
    by_stem = {}
    for path in paths:
        by_stem.setdefault(Path(path).stem, []).append(str(path))
    clashes = [f"{', '.join(named)} -> {stem}_labels.png" for stem, named in by_stem.items() if len(named) > 1]
    if clashes:
        raise ValueError(f"images with the same name would write the same files in {out_dir}: "
                         f"{'; '.join(clashes)} (rename them, or segment them in runs with different --out)")
    inputs = {Path(p).resolve() for p in paths}
    replaced = [str(o) for p in paths for o in _outputs(p, out_dir, tiled) if o.resolve() in inputs]
    if replaced:
        raise ValueError(f"infer would write over images it segments: {', '.join(replaced)} (choose another --out)")


def cmd_infer(args):
    import fcn_cuda
    from PIL import Image

    from . import tiling
    from ._progress import Progress
    from .colors import overlay, palette_image
    from .distributed import Ranks, infer_share, launched
    from .inference import default_model, load_image
    from .files import save_png

    if args.backend:
        fcn_cuda.use_backend(args.backend)
    crf = _crf_settings(args)
    if args.tile is not None:
        tiling.check_tile(args.tile)
        if crf:
            raise ValueError("--crf cannot run with --tile: the dense CRF is fully connected, so a CRF over tiles is "
                             "not the image's CRF")
    if args.tile_batch is not None:
        if args.tile_batch < 1:
            raise ValueError(f"--tile-batch must be >= 1 (tiles run at once), got {args.tile_batch}")
        if crf:
            raise ValueError("--tile-batch cannot run with --crf: the dense CRF needs the whole image, so it runs no "
                             "tiles")
    out_dir = Path(args.out)
    paths = _image_paths(args.images, out_dir)
    _check_outputs(paths, out_dir, tiled=not crf)  # without the CRF, an image too large whole runs in tiles
    if args.tile is not None:  # under torchrun every rank takes a share of each image's tiles
        mine, ranks = paths, (Ranks() if launched() else None)
    else:  # under torchrun: this rank's share of the images
        mine, ranks = infer_share(paths)
    model = fcn_cuda.load_model(args.weights) if args.weights else default_model()
    names = getattr(model, "class_names", None) or _class_names(model.num_classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = np.zeros(model.num_classes, np.int64)
    shows = ranks is None or ranks.rank == 0
    progress = Progress(len(mine), "infer") if len(paths) > 1 and shows and args.tile is None else None
    for path in mine:
        tile = args.tile
        if tile is None and not crf:
            height, width = tiling.image_shape(path)
            tile = tiling.auto_tile(model, height, width)
            if tile is not None:
                print(f"{path}: {width}x{height} needs more than half the free memory whole: exact "
                      f"tiles of {tile}", file=sys.stderr)
        if tile is not None:
            total += _infer_tiled(path, model, tile, out_dir, ranks if args.tile is not None else None, shows,
                                  args.tile_batch)
            if progress:
                progress.update(1, Path(path).stem)
            continue
        rgb = load_image(path)
        labels = fcn_cuda.infer(rgb, model, crf=crf)
        pictures = {"labels": palette_image(labels), "overlay": Image.fromarray(overlay(rgb, labels))}
        written = dict(zip(OUTPUT_KINDS, _outputs(path, out_dir)))
        for kind, target in written.items():
            save_png(target, pictures[kind])
        counts = np.bincount(labels.reshape(-1), minlength=model.num_classes)
        total += counts
        if progress:
            progress.update(1, Path(path).stem)
        elif len(paths) == 1:
            print(f"{path}: {labels.shape[1]}x{labels.shape[0]} -> {written['overlay']}")
    if ranks is not None:  # the summary counts every rank's images, and rank 0 prints it
        total = ranks.sum(total).astype(np.int64)
        if ranks.rank != 0:
            return 0
    pixels = total.sum()
    print(f"{'class':>14s} {'pixels':>10s} {'share':>7s}")
    for c in np.flatnonzero(total):
        print(f"{names[c]:>14s} {total[c]:10d} {100.0 * total[c] / pixels:6.2f}%")
    return 0


def _infer_tiled(path, model, tile, out_dir, ranks, shows, batch=None):
    """One image in exact tiles (dealt over `ranks` when given; `batch` at a
    time, default tiling.auto_batch) into OUT/<stem>_labels.npy, a memory map
    each rank writes its tiles into, then <stem>_labels.png and
    <stem>_overlay.png; the class counts (rank 0's: zeros on the others)."""
    from . import tiling
    from ._progress import Progress
    from .colors import palette_image
    from .files import save_png

    src = tiling.open_image(path)
    height, width = int(src.shape[0]), int(src.shape[1])
    final = out_dir / f"{Path(path).stem}{TILED_LABELS}"
    partial = out_dir / f".{final.name}.partial"  # one name on every rank; renamed when all have written
    rank, size = (ranks.rank, ranks.size) if ranks else (0, 1)
    if rank == 0:
        dtype = np.uint8 if model.num_classes <= 256 else np.int32
        np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=(height, width)).flush()
    if ranks:
        ranks.sum([0])  # a barrier: the file exists before any rank opens it
    out = np.lib.format.open_memmap(partial, mode="r+")
    every = tiling.plan(height, width, tile, model.variant, model.conv1_pad)
    tiles = every[rank::size]
    bar = Progress(len(tiles), f"{Path(path).name}: tiles of {tile}") if shows else None
    tiling.infer_tiles(src, model, tile, out, tiles=tiles, progress=bar.update if bar else None, batch=batch)
    out.flush()
    del out
    if ranks:
        ranks.sum([0])  # every rank's tiles are written
    counts = np.zeros(model.num_classes, np.int64)
    if rank == 0:
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(partial, final)
        labels = np.load(final, mmap_mode="r")
        for y in range(0, height, 1024):  # counted a band at a time
            counts += np.bincount(labels[y:y + 1024].reshape(-1), minlength=model.num_classes)
        pngs = dict(zip(OUTPUT_KINDS, _outputs(path, out_dir)))
        save_png(pngs["labels"], palette_image(labels))  # the label image, one byte a pixel, in memory once
        picture, step = _overlay_picture(src, labels)
        save_png(pngs["overlay"], picture)
        del picture
        shrunk = f"{_picture_size(width, step)}x{_picture_size(height, step)}"
        note = "" if step == 1 else f" ({shrunk}: one pixel in {step} along each axis)"
        print(f"{path}: {width}x{height} in {len(every)} tiles of {tile} -> {pngs['labels']}, {final}, "
              f"{pngs['overlay']}{note}")
    return counts


def _picture_size(n, step):
    """Pixels along an axis of n pixels that keeps every step-th one (the first included)."""
    return -(-n // step)


def _overlay_picture(src, labels, max_pixels=None):
    """The overlay of `labels` (H x W) on the image source `src` as a PIL
    image, and its step: 1 (the untiled path's overlay, pixel for pixel)
    where H x W fits OVERLAY_MAX_PIXELS, else the least s that fits, keeping
    every s-th pixel of every s-th row of both. Drawn a band of rows at a
    time, so only the picture is held whole."""
    from PIL import Image

    from . import tiling
    from .colors import overlay

    max_pixels = OVERLAY_MAX_PIXELS if max_pixels is None else max_pixels
    height, width = labels.shape
    step = 1
    while _picture_size(height, step) * _picture_size(width, step) > max_pixels:
        step += 1
    picture = np.empty((_picture_size(height, step), _picture_size(width, step), 3), np.uint8)
    # source rows a band: about 2^20 pixels, as overlay() holds some 30 bytes a pixel of temporaries
    band = step * max(1, (1 << 20) // (width * step))
    for y in range(0, height, band):
        rgb = tiling.read_window(src, y, min(y + band, height), 0, width)[::step, ::step]
        picture[y // step:y // step + rgb.shape[0]] = overlay(rgb, np.asarray(labels[y:y + band:step, ::step]))
    return Image.fromarray(picture), step


def _crf_settings(args):
    """infer's crf argument from --crf and the --crf-* flags (any of which turns the CRF on)."""
    from .crf import PARAMETERS

    given = {name: getattr(args, f"crf_{name}") for name in PARAMETERS if getattr(args, f"crf_{name}") is not None}
    return given or args.crf


def open_dataset(spec, split, size, count, seed):
    """'synthetic' (the shapes set; --size / --count), 'sbd:DIR', or 'voc:DIR' / DIR (PASCAL VOC).
    Any other KIND:... is refused, unless it is a folder (a bare VOC folder whose name holds a colon)."""
    from .data import SBDSegmentation, SyntheticShapes, VOCSegmentation

    if spec == "synthetic":
        return SyntheticShapes(count, size=size, seed=seed)
    kind, colon, folder = spec.partition(":")
    if colon and kind == "sbd":
        return SBDSegmentation(folder, split)
    if colon and kind == "voc":
        return VOCSegmentation(folder, split)
    if colon and not Path(spec).is_dir():
        raise ValueError(f"unknown kind of data {kind!r} in {spec!r}: use 'synthetic', 'voc:DIR', 'sbd:DIR' or a "
                         "PASCAL VOC folder")
    return VOCSegmentation(spec, split)


def _numbers(kind):
    """An argparse type: comma-separated values of `kind` (float or int) -> tuple."""
    def parse(text):
        try:
            return tuple(kind(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
    return parse


def cmd_train(args):
    import fcn_cuda

    from .distributed import trainer_class
    from .model import FCN
    from .training import TrainConfig

    if args.at_once and args.variant != "8s":
        raise ValueError(f"--at-once trains FCN-8s at once (pool4 x 0.01, pool3 x 1e-4, the reference's recipe), "
                         f"not --variant {args.variant}")
    trainer_cls = trainer_class()  # under torchrun (WORLD_SIZE > 1): a data-parallel rank
    if args.backend:
        fcn_cuda.use_backend(args.backend)
    # Validation data never overlaps training data: another split, or another seed.
    train_set = open_dataset(args.data, "train", args.size, args.count, args.seed)
    val_set = open_dataset(args.val_data or args.data, args.val_split, args.size, args.val_count,
                       args.seed + 1_000_003) if args.val_every else None
    num_classes = len(train_set.classes)
    config = TrainConfig(iterations=args.iterations, lr=args.lr, momentum=args.momentum,
                         weight_decay=args.weight_decay, normalize=args.normalize, dropout=not args.no_dropout,
                         batch_size=args.batch_size, val_every=args.val_every, checkpoint_every=args.checkpoint_every,
                         seed=args.seed, warmup=args.warmup, input_lr_mult=args.input_lr_mult,
                         class_weights=args.class_weights, lr_drops=args.lr_drops)
    out = Path(args.out)
    if (out / "checkpoint.safetensors").exists() and not args.restart:
        trainer = trainer_cls.resume(out / "checkpoint.safetensors", out, config)
        if trainer.writes:
            print(f"resuming from {out / 'checkpoint.safetensors'} at step {trainer.step}")
    else:
        if args.init:
            model = load_init(args.init, args.variant, num_classes, args.at_once)
        else:
            widths = tuple(tuple(max(1, c // args.width_divisor) for c in block) for block in
                           fcn_cuda.model.VGG16_BLOCKS)
            model = FCN(args.variant, num_classes, widths=widths, fc=max(1, 4096 // args.width_divisor),
                        seed=args.seed, at_once=args.at_once)
        trainer = trainer_cls(model, config, out)
    trainer.fit(train_set, val_set)
    if not trainer.writes:
        return 0
    print(f"weights: {out / 'final.safetensors'}  curves: {out / 'curves.png'}")
    if trainer.history.val:
        print("  ".join(f"{k} {v:.4f}" for k, v in trainer.history.val[-1].items()))
    return 0


def load_init(path, variant, num_classes, at_once=False):
    """Initial weights: VGG16 (transplanted into `variant`, at once or not) or
    a trained FCN of any variant (staged: its layers carried over, the new ones fresh)."""
    from .weights import model_from, read

    weights = read(path)  # parsed once (a VGG16 caffemodel is 528 MB): its layout, then the model
    if weights[2] == "vgg16":
        return model_from(weights, variant=variant, num_classes=num_classes, at_once=at_once, source=path)
    model = model_from(weights, source=path)
    if at_once and not model.at_once:
        raise ValueError(f"--at-once conflicts with --init {path}: a trained FCN-{model.variant} without the at-once "
                         "scales, which staging keeps (leave --at-once out, or start from VGG16)")
    if model.num_classes != num_classes:
        raise ValueError(f"{path} has {model.num_classes} classes but the data has {num_classes}")
    return model if model.variant == variant else _stage(model, variant)


def _stage(model, variant):
    """A `variant` FCN starting from a coarser one's weights: new score layers
    zero, new upsampling bilinear (the reference's staged training)."""
    from .model import FCN
    from .weights.state_dict import trunk_widths

    sd = model.state_dict()
    fresh = FCN(variant, model.num_classes, widths=trunk_widths(sd), fc=sd["fc6.weight"].shape[0], at_once=model.at_once)
    new = fresh.state_dict()
    new.update({k: v for k, v in sd.items() if k in new and v.shape == new[k].shape})
    fresh.load_state_dict(new)
    return fresh


def cmd_eval(args):
    import fcn_cuda

    from ._progress import Progress

    if args.backend:
        fcn_cuda.use_backend(args.backend)
    model = fcn_cuda.load_model(args.weights)
    data = open_dataset(args.data, args.split, args.size, args.count, args.seed)
    scores = fcn_cuda.evaluate(model, data, progress=Progress(len(data), "eval"))
    for k, v in scores.items():
        print(f"{k:>10s} {100 * v:6.2f}")
    return 0


def cmd_curves(args):
    from .training import plot_history, read_history

    history = read_history(args.checkpoint)
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name("curves.png")
    plot_history(history, out)
    last = ""
    if history.val:
        last = f"; validation mean IU {history.val[-1]['mean_iu']:.4f} at step {history.val_step[-1]}"
    print(f"{out}: steps 1..{history.step[-1] if history.step else 0}{last}")
    return 0


def cmd_convert(args):
    import fcn_cuda

    src, dst = Path(args.input), Path(args.output)
    if dst.suffix != ".safetensors":
        raise ValueError(f"OUT must be a .safetensors file, got {dst}")
    if dst.resolve() == src.resolve() or (dst.exists() and src.exists() and os.path.samefile(src, dst)):
        raise ValueError(f"OUT is IN ({src}): refusing to write over the input")
    fcn_cuda.use_backend("host")  # converting runs no kernel: the weights need not visit a GPU
    model = fcn_cuda.load_model(src, variant=args.variant, num_classes=args.num_classes)
    model.save(dst, converted_from=src.name)
    names = f" ({', '.join(model.class_names)})" if model.class_names else " (class names unknown)"
    print(f"{dst}: FCN-{model.variant}{' at-once' if model.at_once else ''}, {model.num_params():,} parameters, "
          f"{model.num_classes} classes{names}")
    return 0


def build_parser():
    from .crf import SHAPES
    from .tiling import TILED_MAX_IMAGE_PIXELS

    ap = argparse.ArgumentParser(prog="fcn-cuda", description="FCN semantic segmentation from handwritten CUDA kernels")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("infer", help="segment images, writing label and overlay PNGs")
    p.add_argument("images", nargs="+", help="image files, or folders of them")
    p.add_argument("--weights", help="weights: fcn_cuda .safetensors, pytorch-fcn .pth, the reference's .caffemodel "
                                     "(default: the bundled model)")
    p.add_argument("--out", default="out", help="output folder (default: out)")
    p.add_argument("--backend", choices=("host", "cuda"), help="default: cuda when a GPU is present, else host")
    p.add_argument("--crf", action="store_true",
                   help="refine the labels with the dense CRF (fcn_cuda.dense_crf), with the parameters tuned for "
                        "the bundled model; each --crf-* flag sets one (and turns the CRF on)")
    for name, value in SHAPES.items():
        p.add_argument(f"--crf-{name.replace('_', '-')}", type=type(value),
                       metavar="N" if name == "iterations" else "V", help=f"default {value}")
    p.add_argument("--tile", type=int, metavar="N",
                   help="exact tiles of N x N output pixels (a multiple of 32), the whole image's labels in memory "
                        "bounded by the tile: writes NAME_labels.npy (memory-mapped), NAME_labels.png and "
                        f"NAME_overlay.png (above {OVERLAY_MAX_PIXELS} pixels the overlay keeps every s-th pixel of "
                        "every s-th row, s the least that fits); under torchrun the ranks share each image's tiles. "
                        "PNG and JPEG files are decoded whole, with Pillow's decompression-bomb limit raised to "
                        f"{TILED_MAX_IMAGE_PIXELS} pixels; .npy and uncompressed TIFF files are read a window at a "
                        "time")
    p.add_argument("--tile-batch", type=int, metavar="B",
                   help="tiles of one window shape run at once as one batch (an int >= 1), with --tile or the "
                        "automatic tiles of an image too large whole: 1 keeps the least memory (one window), more "
                        "keep the emulator's or the GPU's workers busier for B windows' memory (default: as many as "
                        "fit half the free memory, on the host at most 4); the labels are the same bits")
    p.set_defaults(func=cmd_infer)

    t = sub.add_parser("train", help="train an FCN (reference recipe by default), resumable")
    t.add_argument("--data", required=True, help="'synthetic', 'voc:DIR' (or DIR) or 'sbd:DIR'")
    t.add_argument("--val-data", help="validation data (default: --data)")
    t.add_argument("--val-split", default="val", help="validation split (default: val; seg11valid for VOC)")
    t.add_argument("--variant", default="8s", choices=("32s", "16s", "8s"))
    t.add_argument("--init", help="initial weights: VGG16 (.caffemodel, .pth), or a coarser FCN (staged 32s -> 16s "
                                  "-> 8s)")
    t.add_argument("--at-once", action="store_true",
                   help="FCN-8s at once: pool4 x 0.01, pool3 x 1e-4 (the reference trains it from VGG16 at --lr 1e-10)")
    t.add_argument("--out", required=True, help="run folder: checkpoint, final weights, curves")
    t.add_argument("--iterations", type=int, default=100_000)
    t.add_argument("--lr", type=float, help="default: the reference's (1e-10 / 1e-12 / 1e-14)")
    t.add_argument("--momentum", type=float, default=0.99)
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument("--batch-size", type=int, default=1)
    t.add_argument("--normalize", action="store_true", help="divide the loss by the valid pixels, not the batch")
    t.add_argument("--warmup", type=int, default=0, help="ramp the rate up linearly over this many steps")
    t.add_argument("--input-lr-mult", type=float, default=1.0,
                   help="conv1_1 weights' rate multiplier (from scratch: 1/3600 trains it as on unit-scale inputs)")
    t.add_argument("--class-weights", type=_numbers(float), metavar="W0,W1,...",
                   help="per-class loss weights, one per class (default: all 1, the reference)")
    t.add_argument("--lr-drops", type=_numbers(int), default=(), metavar="S1,S2,...",
                   help="steps from which the rate is 10x lower, each (default: none, the reference)")
    t.add_argument("--no-dropout", action="store_true")
    t.add_argument("--val-every", type=int, default=4000)
    t.add_argument("--checkpoint-every", type=int, default=4000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in --out")
    t.add_argument("--width-divisor", type=int, default=1, help="without --init: VGG16 channels / this")
    t.add_argument("--size", type=int, default=64, help="synthetic image side")
    t.add_argument("--count", type=int, default=2000, help="synthetic training images")
    t.add_argument("--val-count", type=int, default=50, help="synthetic validation images")
    t.add_argument("--backend", choices=("host", "cuda"))
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="the four reference scores of a model on a dataset")
    e.add_argument("--data", required=True, help="'synthetic', 'voc:DIR' (or DIR) or 'sbd:DIR'")
    e.add_argument("--weights", required=True, help="any weights load_model reads (.safetensors, .pth, .caffemodel)")
    e.add_argument("--split", default="val", help="default: val; seg11valid (VOC) is the reference's")
    e.add_argument("--size", type=int, default=64)
    e.add_argument("--count", type=int, default=100)
    e.add_argument("--seed", type=int, default=12345, help="synthetic: a seed no training run used")
    e.add_argument("--backend", choices=("host", "cuda"))
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("curves", help="draw a run's loss and metric curves from its checkpoint")
    c.add_argument("checkpoint", help="a run's checkpoint.safetensors")
    c.add_argument("--out", help="PNG to write (default: curves.png beside the checkpoint)")
    c.set_defaults(func=cmd_curves)

    v = sub.add_parser("convert", help="write any weights load_model reads as an fcn_cuda .safetensors file")
    v.add_argument("input", help=".caffemodel (the reference's FCN nets, VGG16), .pth, or ours")
    v.add_argument("output", help="the .safetensors file to write (atomically; never the input)")
    v.add_argument("--variant", choices=("32s", "16s", "8s"), help="VGG16 input: the FCN to start (default 32s)")
    v.add_argument("--num-classes", type=int, help="VGG16 input: classes of the new score layers (default 21)")
    v.set_defaults(func=cmd_convert)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, TypeError, RuntimeError, ImportError, FloatingPointError) as e:
        print(f"fcn-cuda {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
