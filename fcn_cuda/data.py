"""Datasets: a deterministic synthetic shapes set, PASCAL VOC (with the
reference's seg11valid split) and SBD, the reference's training set.

Each yields (rgb, labels): an H x W x 3 uint8 RGB image and an H x W int32
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


SEG11VALID = Path(__file__).parent / "data" / "seg11valid.txt"  # provenance: data/SOURCES.md


def seg11valid_ids():
    """The 736 VOC2011 segmentation-val images that are not in SBD's train
    set: the reference's validation set (its published scores are on it)."""
    return _ids(SEG11VALID)


def _ids(path):
    """The image ids a split file lists, one a line."""
    ids = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{path} lists no images")
    return ids


def _rgb(path, name):
    """An image file as H x W x 3 uint8 RGB; FileNotFoundError / ValueError name it."""
    from PIL import Image

    if not path.exists():
        raise FileNotFoundError(f"{path} not found (listed in the split file)")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as e:
        raise ValueError(f"{name}: cannot read its image ({e})") from None


def _same_size(name, rgb, labels):
    if rgb.shape[:2] != labels.shape:
        raise ValueError(f"{name}: image {rgb.shape[:2]} and labels {labels.shape} differ in size")
    return rgb, labels


class VOCSegmentation:
    """PASCAL VOC layout: JPEGImages/<id>.jpg, SegmentationClass/<id>.png
    (palette PNG: the pixel values are the labels), ImageSets/Segmentation/<split>.txt.
    split="seg11valid" takes the reference's validation list (seg11valid_ids())
    instead, from a VOC2011 folder (or VOC2012, whose segmentation set holds
    VOC2011's), and checks up front that the folder has every one of them."""

    classes = None  # set from fcn_cuda.colors.VOC_CLASSES on first use

    def __init__(self, root, split="train"):
        from .colors import VOC_CLASSES

        self.classes = VOC_CLASSES
        self.root = Path(root)
        if split == "seg11valid":
            self.ids = seg11valid_ids()
            missing = [p for name in self.ids for p in self._paths(name) if not p.exists()]
            if missing:
                raise FileNotFoundError(f"{self.root} lacks {len(missing)} of the files of seg11valid's "
                                        f"{len(self.ids)} images, first {', '.join(map(str, missing[:3]))}: "
                                        "seg11valid needs a VOC2011 (or VOC2012) folder")
            return
        ids_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not ids_file.exists():
            raise FileNotFoundError(f"{ids_file} not found: is {self.root} a VOC folder "
                                    "(JPEGImages, SegmentationClass, ImageSets/Segmentation)?")
        self.ids = _ids(ids_file)

    def _paths(self, name):
        return self.root / "JPEGImages" / f"{name}.jpg", self.root / "SegmentationClass" / f"{name}.png"

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        from PIL import Image

        name = self.ids[i]
        img_path, lbl_path = self._paths(name)
        if not lbl_path.exists():
            raise FileNotFoundError(f"{lbl_path} not found (listed in the split file)")
        rgb = _rgb(img_path, name)
        try:
            with Image.open(lbl_path) as im:
                if im.mode != "P":
                    raise ValueError(f"{lbl_path}: a VOC label image is a palette PNG, got mode {im.mode}")
                labels = np.asarray(im).astype(np.int32)
        except OSError as e:
            raise ValueError(f"{name}: cannot read its labels ({e})") from None
        return _same_size(name, rgb, labels)


class SBDSegmentation:
    """SBD, the Semantic Boundaries Dataset (Hariharan et al.), whose 8,498
    train images the reference trains on. root: the unpacked
    benchmark_RELEASE folder or its dataset folder, which holds
    img/<id>.jpg, cls/<id>.mat (labels 0..20 in the MATLAB struct
    GTcls.Segmentation, VOC's classes), train.txt and val.txt. The labels
    are read with scipy.io.loadmat: scipy is needed (pip install scipy)."""

    SPLITS = ("train", "val")

    def __init__(self, root, split="train"):
        from .colors import VOC_CLASSES

        if split not in self.SPLITS:
            raise ValueError(f"split must be one of {self.SPLITS} (SBD's train.txt, val.txt), got {split!r}")
        try:
            import scipy.io  # noqa: F401  (checked here, before any image is asked for)
        except ImportError:
            raise ImportError("SBD's labels are MATLAB files: reading them needs scipy "
                              "(pip install scipy, or pip install 'fcn_cuda[sbd]')") from None
        self.classes = VOC_CLASSES
        root = Path(root)
        self.root = root / "dataset" if (root / "dataset").is_dir() else root
        ids_file = self.root / f"{split}.txt"
        if not ids_file.exists():
            raise FileNotFoundError(f"{ids_file} not found: is {root} SBD's benchmark_RELEASE folder, or its "
                                    "dataset folder (img, cls, train.txt, val.txt)?")
        self.ids = _ids(ids_file)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        import scipy.io

        name = self.ids[i]
        mat = self.root / "cls" / f"{name}.mat"
        if not mat.exists():
            raise FileNotFoundError(f"{mat} not found (listed in the split file)")
        rgb = _rgb(self.root / "img" / f"{name}.jpg", name)
        try:
            labels = scipy.io.loadmat(mat)["GTcls"]["Segmentation"][0, 0]
        except (scipy.io.matlab.MatReadError, ValueError, TypeError, KeyError, IndexError, OSError) as e:
            raise ValueError(f"{mat}: not an SBD label file (a MATLAB struct GTcls with a Segmentation "
                             f"field): {type(e).__name__}: {e}") from None
        return _same_size(name, rgb, np.ascontiguousarray(labels, np.int32))  # MATLAB's arrays are column-major
