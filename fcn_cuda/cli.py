"""The `fcn-cuda` command line.

    fcn-cuda infer IMAGE... [--weights W] [--out DIR] [--backend host|cuda]

writes <name>_labels.png (paletted, VOC colors) and <name>_overlay.png for
each image and prints how many pixels each class got.
"""

import argparse
import sys
from pathlib import Path

import numpy as np


def _class_names(num_classes):
    from .colors import VOC_CLASSES

    if num_classes == len(VOC_CLASSES):
        return VOC_CLASSES
    return tuple(f"class {i}" for i in range(num_classes))


def cmd_infer(args):
    import fcn_cuda
    from PIL import Image

    from ._progress import Progress
    from .colors import overlay, palette_image
    from .inference import default_model, load_image
    from .weights import atomic_write

    if args.backend:
        fcn_cuda.use_backend(args.backend)
    model = fcn_cuda.load_model(args.weights) if args.weights else default_model()
    names = getattr(model, "class_names", None) or _class_names(model.num_classes)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = np.zeros(model.num_classes, np.int64)
    progress = Progress(len(args.images), "infer") if len(args.images) > 1 else None
    for path in args.images:
        rgb = load_image(path)
        labels = fcn_cuda.infer(rgb, model)
        stem = Path(path).stem
        for suffix, img in (("labels", palette_image(labels)), ("overlay", Image.fromarray(overlay(rgb, labels)))):
            target = out_dir / f"{stem}_{suffix}.png"
            buf = _png_bytes(img)
            atomic_write(target, [buf])
        counts = np.bincount(labels.reshape(-1), minlength=model.num_classes)
        total += counts
        if progress:
            progress.update(1, stem)
        else:
            print(f"{path}: {labels.shape[1]}x{labels.shape[0]} -> {out_dir / (stem + '_overlay.png')}")
    pixels = total.sum()
    print(f"{'class':>14s} {'pixels':>10s} {'share':>7s}")
    for c in np.flatnonzero(total):
        print(f"{names[c]:>14s} {total[c]:10d} {100.0 * total[c] / pixels:6.2f}%")
    return 0


def _png_bytes(img):
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def build_parser():
    ap = argparse.ArgumentParser(prog="fcn-cuda", description="FCN semantic segmentation from handwritten CUDA kernels")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("infer", help="segment images, writing label and overlay PNGs")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--weights", help="weights: fcn_cuda .safetensors, pytorch-fcn .pth (default: the bundled model)")
    p.add_argument("--out", default="out", help="output folder (default: out)")
    p.add_argument("--backend", choices=("host", "cuda"), help="default: cuda when a GPU is present, else host")
    p.set_defaults(func=cmd_infer)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, TypeError, RuntimeError, ImportError) as e:
        print(f"fcn-cuda {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
