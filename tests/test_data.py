"""The synthetic shapes set and the VOC loader."""

import numpy as np
import pytest
from PIL import Image

from fcn_cuda.colors import palette_image
from fcn_cuda.data import SyntheticShapes, VOCSegmentation, synthetic_sample


def test_synthetic_set_is_deterministic_and_indexable():
    a, b = SyntheticShapes(5, size=48, seed=3), SyntheticShapes(5, size=48, seed=3)
    for i in range(5):
        (x1, y1), (x2, y2) = a[i], b[i]
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(a[0][0], SyntheticShapes(5, size=48, seed=4)[0][0])
    x, y = a[-1]
    assert x.shape == (48, 48, 3) and x.dtype == np.uint8 and y.shape == (48, 48) and y.dtype == np.int32
    with pytest.raises(IndexError):
        a[5]
    with pytest.raises(ValueError, match="n must"):
        SyntheticShapes(0)
    with pytest.raises(ValueError, match="size"):
        SyntheticShapes(3, size=4)


def test_synthetic_set_has_every_class_and_shapes_of_the_stated_size():
    seen = np.zeros(4, np.int64)
    for i in range(60):
        _, y = synthetic_sample(0, i, (64, 64))
        assert set(np.unique(y)) <= {0, 1, 2, 3}
        seen += np.bincount(y.ravel(), minlength=4)
        fg = (y > 0).mean()
        assert fg < 0.95  # shapes of at most 40% of the side leave background
    assert (seen > 0).all()
    share = seen / seen.sum()
    assert share[0] > 0.5 and (share[1:] > 0.01).all()  # shapes of 10-40% of the side are a minority


def test_colors_do_not_give_the_class_away():
    """Mean color of shape pixels and background pixels come from one distribution."""
    shape_means, bg_means = [], []
    for i in range(80):
        x, y = synthetic_sample(1, i, (48, 48))
        if (y > 0).any():
            shape_means.append(x[y > 0].mean(0))
        bg_means.append(x[y == 0].mean(0))
    gap = np.abs(np.mean(shape_means, 0) - np.mean(bg_means, 0))
    assert (gap < 20).all(), gap


def make_voc(root, ids, size=(6, 5)):
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ids:
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        labels = rng.integers(0, 21, size).astype(np.uint8)
        labels[0, 0] = 255
        palette_image(labels).save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")


def test_voc_loader(tmp_path):
    make_voc(tmp_path, ["2007_000001", "2007_000002"])
    ds = VOCSegmentation(tmp_path, "train")
    assert len(ds) == 2
    rgb, labels = ds[1]
    assert rgb.shape == (6, 5, 3) and labels.shape == (6, 5) and labels[0, 0] == 255
    assert labels.dtype == np.int32 and labels.max() <= 255


def test_voc_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="VOC folder"):
        VOCSegmentation(tmp_path)
    make_voc(tmp_path, ["a", "b"])
    (tmp_path / "JPEGImages" / "b.jpg").unlink()
    ds = VOCSegmentation(tmp_path)
    with pytest.raises(FileNotFoundError, match="b.jpg"):
        ds[1]
    (tmp_path / "JPEGImages" / "b.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read"):
        ds[1]
    Image.fromarray(np.zeros((6, 5), np.uint8)).save(tmp_path / "SegmentationClass" / "a.png")
    with pytest.raises(ValueError, match="palette"):
        ds[0]
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("\n")
    with pytest.raises(ValueError, match="no images"):
        VOCSegmentation(tmp_path, "val")
