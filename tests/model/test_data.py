"""The synthetic shapes set, the VOC loader (seg11valid too) and the SBD loader."""

import hashlib
import re
import sys

import numpy as np
import pytest
from PIL import Image

from fcn_cuda.colors import palette_image
from fcn_cuda.data import SEG11VALID, SBDSegmentation, SyntheticShapes, VOCSegmentation, seg11valid_ids, synthetic_sample


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


def test_cli_data_names_its_kinds(tmp_path, capsys):
    """--data KIND:DIR with an unknown KIND (a typo of sbd) is refused naming the valid forms; a VOC folder
    whose own name holds a colon is still a bare VOC folder."""
    from fcn_cuda import cli

    make_voc(tmp_path / "sbd", ["a"])
    assert cli.main(["train", "--data", f"sdb:{tmp_path / 'sbd'}", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "unknown kind of data 'sdb'" in err and "'synthetic', 'voc:DIR', 'sbd:DIR' or a PASCAL VOC folder" in err
    assert not (tmp_path / "run").exists()
    make_voc(tmp_path / "voc:2011", ["a", "b"])
    assert len(cli.open_dataset(str(tmp_path / "voc:2011"), "train", 0, 0, 0)) == 2
    assert len(cli.open_dataset(f"voc:{tmp_path / 'voc:2011'}", "train", 0, 0, 0)) == 2


# ----------------------------------------------------------------- seg11valid, SBD
def test_seg11valid_is_the_shipped_list_of_736():
    ids = seg11valid_ids()
    assert len(ids) == 736 == len(set(ids)) and ids[0] == "2007_000033" and ids == sorted(ids)
    assert all(re.fullmatch(r"20(07|08|09|10|11)_\d{6}", i) for i in ids)
    row = next(line for line in (SEG11VALID.parent / "SOURCES.md").read_text().splitlines() if "seg11valid.txt" in line)
    assert hashlib.sha256(SEG11VALID.read_bytes()).hexdigest() in row


def test_voc_seg11valid_split(tmp_path):
    ids = seg11valid_ids()
    make_voc(tmp_path, ids, size=(3, 4))
    ds = VOCSegmentation(tmp_path, "seg11valid")
    assert ds.ids == ids and len(ds) == 736
    rgb, labels = ds[735]
    assert rgb.shape == (3, 4, 3) and labels.shape == (3, 4)
    (tmp_path / "JPEGImages" / f"{ids[100]}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=f"lacks 1 of the files of seg11valid's 736 images, first .*{ids[100]}.jpg"):
        VOCSegmentation(tmp_path, "seg11valid")


def make_sbd(root, ids, split="train", size=(5, 7)):
    """SBD's layout: dataset/img/<id>.jpg, dataset/cls/<id>.mat (the MATLAB
    struct GTcls: Boundaries, a cell of sparse maps; Segmentation;
    CategoriesPresent), dataset/<split>.txt."""
    import scipy.io
    import scipy.sparse

    rng = np.random.default_rng(1)
    dataset = root / "dataset"
    for d in ("img", "cls"):
        (dataset / d).mkdir(parents=True, exist_ok=True)
    truth = {}
    for name in ids:
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(dataset / "img" / f"{name}.jpg")
        labels = rng.integers(0, 21, size).astype(np.uint8)
        boundaries = np.empty((20, 1), dtype=object)
        for c in range(20):
            boundaries[c, 0] = scipy.sparse.csc_matrix(labels == c + 1)
        scipy.io.savemat(dataset / "cls" / f"{name}.mat", {"GTcls": {
            "Boundaries": boundaries, "Segmentation": labels,
            "CategoriesPresent": np.unique(labels[labels > 0]).astype(np.uint8)}})
        truth[name] = labels
    (dataset / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return truth


@pytest.mark.parametrize("under", ["", "dataset"])
def test_sbd_loader(tmp_path, under):
    truth = make_sbd(tmp_path, ["2008_000002", "2008_000003", "2009_000001"])
    make_sbd(tmp_path, ["2008_000009"], split="val", size=(4, 6))
    ds = SBDSegmentation(tmp_path / under, "train")
    assert len(ds) == 3 and ds.classes[15] == "person" and len(ds.classes) == 21
    for i, name in enumerate(ds.ids):
        rgb, labels = ds[i]
        assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8 and labels.dtype == np.int32
        assert labels.flags.c_contiguous  # loadmat gives MATLAB's column-major order
        np.testing.assert_array_equal(labels, truth[name])
    assert SBDSegmentation(tmp_path, "val")[0][1].shape == (4, 6)


def test_sbd_loader_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="benchmark_RELEASE"):
        SBDSegmentation(tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        SBDSegmentation(tmp_path, "seg11valid")
    make_sbd(tmp_path, ["a", "b", "c"])
    dataset = tmp_path / "dataset"
    ds = SBDSegmentation(tmp_path)
    (dataset / "cls" / "a.mat").unlink()
    with pytest.raises(FileNotFoundError, match="a.mat"):
        ds[0]
    (dataset / "img" / "b.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="b.jpg"):
        ds[1]
    (dataset / "cls" / "c.mat").write_bytes(b"not a mat file")
    with pytest.raises(ValueError, match="c.mat: not an SBD label file"):
        ds[2]
    import scipy.io

    scipy.io.savemat(dataset / "cls" / "c.mat", {"labels": np.zeros((5, 7), np.uint8)})
    with pytest.raises(ValueError, match="c.mat: not an SBD label file"):
        ds[2]
    scipy.io.savemat(dataset / "cls" / "c.mat", {"GTcls": {"Segmentation": np.zeros((5, 6), np.uint8)}})
    with pytest.raises(ValueError, match="differ in size"):
        ds[2]
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # as where scipy is not installed
    with pytest.raises(ImportError, match="pip install scipy"):
        SBDSegmentation(tmp_path)
