"""Datasets: a deterministic synthetic shapes set and a PASCAL VOC loader.

Both yield (rgb, labels): an H x W x 3 uint8 RGB image and an H x W int32
label map (255 = ignore, as in VOC).
"""

from pathlib import Path

import numpy as np

SHAPE_CLASSES = ("background", "circle", "rectangle", "triangle")


def _color(rng):
    """One color distribution for background and shapes alike, so that color
    says nothing about the class."""
    return rng.uniform(20, 235, size=3)


def _texture(rng, h, w):
    """A textured field: a base color plus a random low-frequency pattern."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = _color(rng)
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(0.05, 0.5)
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
    amplitude = rng.uniform(0, 40, size=3)
    return base[None, None, :] + wave[:, :, None] * amplitude[None, None, :]


def _mask(kind, rng, h, w):
    """A boolean mask of one shape whose extent is 10-40% of the image side."""
    side = min(h, w)
    extent = rng.uniform(0.1, 0.4) * side
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == 1:  # circle
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= (extent / 2) ** 2
    if kind == 2:  # rectangle, a random aspect ratio, axis aligned
        ry, rx = extent / 2 * rng.uniform(0.5, 1.0), extent / 2 * rng.uniform(0.5, 1.0)
        return (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
    # triangle: three vertices around the centre, far enough apart not to be a sliver
    angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.4, 0.4, 3)
    vy, vx = cy + extent / 2 * np.sin(angles), cx + extent / 2 * np.cos(angles)
    inside = np.ones((h, w), bool)
    sign = np.sign((vx[1] - vx[0]) * (vy[2] - vy[0]) - (vy[1] - vy[0]) * (vx[2] - vx[0]))
    for i in range(3):
        j = (i + 1) % 3
        edge = (vx[j] - vx[i]) * (yy - vy[i]) - (vy[j] - vy[i]) * (xx - vx[i])
        inside &= sign * edge >= 0
    return inside


def synthetic_sample(seed, index, size=(64, 64)):
    """One image of the synthetic set: 1-4 circles, rectangles and triangles
    (overlapping allowed) on a textured background, with noise."""
    h, w = size
    rng = np.random.default_rng([seed, index])
    img = _texture(rng, h, w)
    labels = np.zeros((h, w), np.int32)
    for _ in range(rng.integers(1, 5)):
        kind = int(rng.integers(1, 4))
        mask = _mask(kind, rng, h, w)
        img[mask] = _texture(rng, h, w)[mask]
        labels[mask] = kind
    img += rng.normal(0, 8, size=img.shape)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), labels


class SyntheticShapes:
    """A deterministic synthetic segmentation set: item i depends only on (seed, i)."""

    classes = SHAPE_CLASSES

    def __init__(self, n, size=64, seed=0):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        self.n = n
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        if len(self.size) != 2 or min(self.size) < 8:
            raise ValueError(f"size must be at least 8 pixels a side, got {size!r}")
        self.seed = seed

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} images")
        return synthetic_sample(self.seed, i % self.n, self.size)


class VOCSegmentation:
    """PASCAL VOC layout: JPEGImages/<id>.jpg, SegmentationClass/<id>.png
    (palette PNG: the pixel values are the labels), ImageSets/Segmentation/<split>.txt."""

    classes = None  # set from fcn_cuda.colors.VOC_CLASSES on first use

    def __init__(self, root, split="train"):
        from .colors import VOC_CLASSES

        self.classes = VOC_CLASSES
        self.root = Path(root)
        ids_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not ids_file.exists():
            raise FileNotFoundError(f"{ids_file} not found: is {self.root} a VOC folder "
                                    "(JPEGImages, SegmentationClass, ImageSets/Segmentation)?")
        self.ids = [line.strip() for line in ids_file.read_text().splitlines() if line.strip()]
        if not self.ids:
            raise ValueError(f"{ids_file} lists no images")

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        from PIL import Image

        name = self.ids[i]
        img_path = self.root / "JPEGImages" / f"{name}.jpg"
        lbl_path = self.root / "SegmentationClass" / f"{name}.png"
        for p in (img_path, lbl_path):
            if not p.exists():
                raise FileNotFoundError(f"{p} not found (listed in the split file)")
        try:
            with Image.open(img_path) as im:
                rgb = np.asarray(im.convert("RGB"))
            with Image.open(lbl_path) as im:
                if im.mode != "P":
                    raise ValueError(f"{lbl_path}: a VOC label image is a palette PNG, got mode {im.mode}")
                labels = np.asarray(im).astype(np.int32)
        except OSError as e:
            raise ValueError(f"{name}: cannot read its image or labels ({e})") from None
        if rgb.shape[:2] != labels.shape:
            raise ValueError(f"{name}: image {rgb.shape[:2]} and labels {labels.shape} differ in size")
        return rgb, labels
