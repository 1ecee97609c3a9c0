"""Exact tiled inference (fcn_cuda.tiling, infer(tile=...)): tiles give the
whole image's labels and scores bit for bit, on odd sizes, every variant,
several tile sizes; windows short of the halo or off the stride do not;
tiles of one window shape batched give the same bits; bad arguments are
refused before any work; memory is bounded by the tile (and the batch).

The images are thin (one axis a few dozen pixels) where the other axis must
exceed a tile plus both halos (about 470 px) to give windows with a side
inside the image: the emulator's cost grows with the area.
"""

import time
import tracemalloc
import warnings

import numpy as np
import pytest

import fcn_cuda
from fcn_cuda import _backend, ops, tiling
from fcn_cuda.inference import default_model
from fcn_cuda.model import FCN

from _util import needs_extra, to_numpy

WIDTHS = ((2, 3), (3, 3), (4, 4, 4), (4, 4, 4), (4, 4, 4))
C = 5


def varied(variant, at_once=False, seed=1):
    """A tiny model whose score layers are large: its labels spread over every class."""
    m = FCN(variant, C, widths=WIDTHS, fc=6, seed=seed, at_once=at_once)
    sd = m.state_dict()
    rng = np.random.default_rng(seed)
    for k in sd:
        if k.startswith("score"):
            sd[k] = (rng.standard_normal(sd[k].shape) * (3e4 if at_once else 3.0)).astype(np.float32)
    m.load_state_dict(sd)
    return m


def image(h, w, seed=0):
    """Smooth blobs plus noise: labels in regions, with edges between them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([127 + 120 * np.sin(yy / (7 + 5 * c) + xx / (9 + 4 * c) + c) for c in range(3)], axis=2)
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


def whole(model, img):
    """(labels, scores) of the whole image, as NumPy."""
    return fcn_cuda.infer(img, model, return_scores=True)


def assert_tiled_equals_whole(model, img, tile, labels_path=True):
    labels, scores = whole(model, img)
    assert len(np.unique(labels)) >= 2, "a test image of one label proves little"
    out = np.full(img.shape[:2], 255, np.uint8)
    got, got_scores = fcn_cuda.infer(img, model, return_scores=True, tile=tile, out=out)
    assert got is out
    np.testing.assert_array_equal(out, labels)
    assert got_scores.shape == scores.shape and got_scores.dtype == np.float32
    np.testing.assert_array_equal(got_scores, scores)  # bit for bit, not close
    if labels_path:  # the fused upsample + argmax
        np.testing.assert_array_equal(fcn_cuda.infer(img, model, tile=tile), labels)


@pytest.mark.parametrize("variant, at_once, seed, shape, tile", [
    ("8s", False, 1, (555, 37), 160),   # windows with a side inside the image, before and after the tile
    ("16s", False, 4, (37, 555), 64),   # the same along the other axis, another tile size
    ("32s", False, 3, (520, 33), 96),
    ("8s", True, 1, (33, 530), 128),    # at once
])
def test_tiles_with_inner_borders_equal_the_whole_image(be, variant, at_once, seed, shape, tile):
    """(The seeds give each tiny model labels that vary over its image.)"""
    model = varied(variant, at_once, seed)
    tiles = tiling.plan(*shape, tile, variant)
    inner = [t for t in tiles if 0 < t.wy0 or 0 < t.wx0 or t.wy1 < shape[0] or t.wx1 < shape[1]]
    assert len(inner) >= 2  # some window has a side that is not the image's edge
    assert_tiled_equals_whole(model, image(*shape), tile)


@pytest.mark.parametrize("shape, tile", [
    ((45, 70), 96),    # smaller than one tile
    ((97, 65), 96),    # one pixel more than a tile down, 31 fewer across
    ((61, 100), 32),   # the smallest tile, not a multiple of 32 either way
])
def test_odd_sizes_equal_the_whole_image(be, shape, tile):
    assert_tiled_equals_whole(varied("8s", seed=2), image(*shape, seed=1), tile)


def _batch_sizes(model, monkeypatch):
    """The batch sizes model.forward and model.labels are called with, as they run."""
    seen = []
    for name in ("forward", "labels"):
        method = getattr(model, name)

        def spy(x, *args, _method=method, **kwargs):
            seen.append(x.shape[0])
            return _method(x, *args, **kwargs)

        monkeypatch.setattr(model, name, spy)
    return seen


@pytest.mark.parametrize("variant, at_once, seed, shape, tile, batches", [
    ("8s", False, 1, (801, 35), 64, (2, 3)),  # 4 inner tiles share a window: 2 + 2, 3 + a remainder of 1
    ("16s", False, 4, (35, 737), 64, (3,)),
    ("32s", False, 3, (705, 33), 64, (1,)),
    ("8s", True, 1, (33, 737), 64, (3,)),
])
def test_batched_tiles_equal_the_whole_image(be, monkeypatch, variant, at_once, seed, shape, tile, batches):
    """Tiles of one window shape and region run as one N x 3 x h x w batch
    (tile_batch): labels and scores stay the whole image's, bit for bit."""
    model = varied(variant, at_once, seed)
    img = image(*shape, seed=seed)
    labels, scores = whole(model, img)
    assert len(np.unique(labels)) >= 2
    groups = {}
    for t in tiling.plan(*shape, tile, variant):
        groups[t.window_shape, t.region] = groups.get((t.window_shape, t.region), 0) + 1
    assert max(groups.values()) >= 3
    seen = _batch_sizes(model, monkeypatch)
    for batch in batches:
        seen.clear()
        out = np.full(shape, 255, np.uint8)
        got, got_scores = fcn_cuda.infer(img, model, return_scores=True, tile=tile, out=out, tile_batch=batch)
        assert got is out and max(seen) == batch  # batches were formed, none larger than asked
        np.testing.assert_array_equal(out, labels)
        np.testing.assert_array_equal(got_scores, scores)
        assert sum(seen) == sum(groups.values())  # every tile once
    if variant == "8s" and not at_once:  # the fused upsample + argmax
        seen.clear()
        np.testing.assert_array_equal(fcn_cuda.infer(img, model, tile=tile, tile_batch=batches[-1]), labels)
        assert max(seen) == batches[-1] and sum(seen) == sum(groups.values())


def test_the_bundled_model_tiles_exactly(be):
    """Its wider layers pick other conv variants than the tiny models' (FCN.conv_plan)."""
    assert_tiled_equals_whole(default_model(), image(520, 33, seed=3), 256, labels_path=False)


def test_plan_covers_the_image_once_with_windows_on_the_stride():
    for variant in ("32s", "16s", "8s"):
        before, after = tiling.halo(variant)
        assert before % 32 == 0 and 200 < before <= after < 260  # the receptive field's reach, about 202 px
        for h, w, tile in ((1000, 777, 96), (33, 2049, 2048), (5000, 31, 1024)):
            cover = np.zeros((h, w), np.int32)
            for t in tiling.plan(h, w, tile, variant):
                cover[t.y0:t.y1, t.x0:t.x1] += 1
                assert t.wy0 % 32 == 0 and t.wx0 % 32 == 0
                assert t.wy0 == 0 or t.y0 - t.wy0 >= before
                assert t.wy1 == h or t.wy1 - t.y1 >= after
            assert (cover == 1).all()


def _scores_of(model, img, t):
    x = ops.preprocess(_backend.active().xp.asarray(img[t.wy0:t.wy1, t.wx0:t.wx1]))
    return to_numpy(model.forward(x, plan=model.conv_plan(*img.shape[:2]), region=t.region))[0]


def test_windows_short_of_the_halo_or_off_the_stride_are_not_exact(be):
    """The controls: each condition the plan keeps is needed. A window that
    starts one stride later than the halo asks, one pixel short of the halo
    after the tile, or one that starts off the stride (with more context
    than needed) gives other scores than the whole image inside the tile."""
    model = varied("8s")
    img = image(600, 34, seed=4)
    _, ref = whole(model, img)
    before, after = tiling.halo("8s")
    t0, t1 = 256, 320
    exact = tiling.Tile(t0, t1, 0, 34, t0 - before, t1 + after, 0, 34)
    np.testing.assert_array_equal(_scores_of(model, img, exact), ref[:, t0:t1])
    late = tiling.Tile(t0, t1, 0, 34, t0 - before + 32, t1 + after, 0, 34)
    end = t1 + after
    while tiling.exact_output("8s", 100, 0, end - exact.wy0)[1] >= t1 - exact.wy0:
        end -= 1  # the longest window the analysis calls inexact ...
    cut = tiling.Tile(t0, t1, 0, 34, t0 - before, end, 0, 34)
    skew = tiling.Tile(t0, t1, 0, 34, t0 - before - 16, t1 + after, 0, 34)
    for t in (late, cut, skew):
        assert not np.array_equal(_scores_of(model, img, t), ref[:, t0:t1])  # ... and it is


def test_tiles_run_the_whole_images_conv_plan():
    """The plan of a window can differ from the whole image's (direct below
    about 20% igemm tile use on the host; on a GPU, fc6's split count falls
    with the pixels): the tiles run the whole image's, so the bits agree."""
    model = default_model()
    small, large = model.conv_plan(100, 100), model.conv_plan(2000, 2000)
    assert small != large
    assert {v for v, _ in small.values()} <= set(ops.CONV2D_VARIANTS)


def test_array_likes_memmaps_and_files_are_read_a_window_at_a_time(tmp_path):
    model = varied("8s")
    img = image(70, 90, seed=5)
    ref = fcn_cuda.infer(img, model)
    np.save(tmp_path / "img.npy", img)
    mm = np.load(tmp_path / "img.npy", mmap_mode="r")
    out = np.lib.format.open_memmap(tmp_path / "labels.npy", mode="w+", dtype=np.uint8, shape=img.shape[:2])
    fcn_cuda.infer(mm, model, tile=64, out=out)
    np.testing.assert_array_equal(out, ref)

    class Reads:
        """An array-like that records the windows read."""

        def __init__(self, a):
            self.a, self.shape, self.dtype, self.reads = a, a.shape, a.dtype, []

        def __getitem__(self, key):
            self.reads.append(key)
            return self.a[key]

    src = Reads(img)
    np.testing.assert_array_equal(fcn_cuda.infer(src, model, tile=64), ref)
    assert len(src.reads) == 4 and all(isinstance(k, tuple) for k in src.reads)
    np.testing.assert_array_equal(fcn_cuda.infer(tmp_path / "img.npy", model, tile=64), ref)
    tifffile = needs_extra("tifffile", "reading TIFF files")
    tifffile.imwrite(tmp_path / "img.tif", img)
    assert isinstance(tiling.open_image(tmp_path / "img.tif"), np.memmap)
    np.testing.assert_array_equal(fcn_cuda.infer(tmp_path / "img.tif", model, tile=64), ref)
    tifffile.imwrite(tmp_path / "packed.tif", img, compression="zlib")  # not mappable: decoded whole
    np.testing.assert_array_equal(fcn_cuda.infer(str(tmp_path / "packed.tif"), model, tile=64), ref)
    gray = img[:, :, 1]
    np.testing.assert_array_equal(fcn_cuda.infer(gray, model, tile=64), fcn_cuda.infer(gray, model))


def test_pillow_files_lift_the_decompression_bomb_limit_with_tiles_only(tmp_path, monkeypatch):
    from PIL import Image

    model = varied("8s")
    img = image(40, 50, seed=6)
    Image.fromarray(img).save(tmp_path / "img.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)  # 40 x 50 = 2000 px is then "a bomb" (over 2x the limit)
    with pytest.raises(Exception, match="decompression bomb|exceeds limit"):
        fcn_cuda.infer(tmp_path / "img.png", model)
    np.testing.assert_array_equal(fcn_cuda.infer(tmp_path / "img.png", model, tile=32), fcn_cuda.infer(img, model))
    assert Image.MAX_IMAGE_PIXELS == 400  # put back


@pytest.mark.parametrize("tile, error, match", [
    (0, ValueError, "tile must be >= 1"),
    (-32, ValueError, "tile must be >= 1"),
    (100, ValueError, "multiple of the network's stride 32.*use 96 or 128"),
    (1.5, TypeError, "tile must be an int"),
    (True, TypeError, "tile must be an int"),
    ("64", TypeError, "tile must be an int"),
])
def test_bad_tiles_are_refused_before_any_work(tile, error, match):
    out = np.full((40, 40), 7, np.int32)
    with pytest.raises(error, match=match):
        fcn_cuda.infer(image(40, 40), varied("8s"), tile=tile, out=out)
    assert (out == 7).all()


@pytest.mark.parametrize("batch, error, match", [
    (0, ValueError, "tile_batch must be >= 1, got 0"),
    (-2, ValueError, "tile_batch must be >= 1"),
    (2.0, TypeError, "tile_batch must be an int, got float"),
    (True, TypeError, "tile_batch must be an int, got bool"),
    ("2", TypeError, "tile_batch must be an int, got str"),
])
def test_bad_tile_batches_are_refused_before_any_work(batch, error, match):
    out = np.full((40, 40), 7, np.int32)
    for tile in (32, None):
        with pytest.raises(error, match=match):
            fcn_cuda.infer(image(40, 40), varied("8s"), tile=tile, out=out, tile_batch=batch)
    assert (out == 7).all()


def test_bad_outputs_inputs_and_crf_are_refused_before_any_work():
    model = varied("8s")
    img = image(40, 40)
    out = np.full((40, 40), 7, np.int32)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"out must have the image's shape \(40, 40\), got \(40, 41\)"):
        fcn_cuda.infer(img, model, tile=32, out=np.zeros((40, 41), np.int32))
    with pytest.raises(TypeError, match="out must have an integer dtype that holds classes 0..4, got float32"):
        fcn_cuda.infer(img, model, tile=32, out=np.zeros((40, 40), np.float32))
    with pytest.raises(TypeError, match="holds classes 0..299, got uint8"):  # (what infer checks first)
        tiling.check_out(np.zeros((40, 40), np.uint8), 40, 40, 300)
    with pytest.raises(TypeError, match="out must be an H x W integer array.*list has no shape"):
        fcn_cuda.infer(img, model, tile=32, out=[[0] * 40] * 40)
    read_only = np.zeros((40, 40), np.int32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        fcn_cuda.infer(img, model, tile=32, out=read_only)
    with pytest.raises(ValueError, match="crf cannot run with tile: the dense CRF is fully connected"):
        fcn_cuda.infer(img, model, tile=32, crf=True, out=out)
    with pytest.raises(TypeError, match="img must be uint8"):
        fcn_cuda.infer(img.astype(np.float32), model, tile=32, out=out)
    with pytest.raises(ValueError, match="img must be H x W x 3"):
        fcn_cuda.infer(np.zeros((40, 40, 2), np.uint8), model, tile=32, out=out)
    with pytest.raises(TypeError, match="progress must be a callable"):
        fcn_cuda.infer(img, model, tile=32, out=out, progress=3)
    assert (out == 7).all()
    assert time.perf_counter() - start < 5  # refused, not run
    assert fcn_cuda.infer(img, model, out=out) is out  # without tiles too
    np.testing.assert_array_equal(out, fcn_cuda.infer(img, model))


def test_an_image_too_large_for_the_free_memory_runs_in_tiles_and_says_so(monkeypatch):
    model = varied("8s")
    img = image(260, 33, seed=7)
    ref = fcn_cuda.infer(img, model)
    needed = tiling.whole_image_bytes(model, 260, 33)
    monkeypatch.setattr(tiling, "free_bytes", lambda: needed)  # half of it is the budget
    with pytest.warns(UserWarning, match="a 260 x 33 image needs more memory .* running exact tiles of"):
        np.testing.assert_array_equal(fcn_cuda.infer(img, model), ref)
    monkeypatch.setattr(tiling, "free_bytes", lambda: 2 * needed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(fcn_cuda.infer(img, model), ref)


def test_the_whole_image_estimate_bounds_the_measured_peak():
    """whole_image_bytes is an upper estimate (auto tiles rely on it), and not a loose one."""
    model = default_model()
    img = image(100, 150, seed=8)
    fcn_cuda.use_backend("host")
    tracemalloc.start()
    try:
        fcn_cuda.infer(img, model)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    estimate = tiling.whole_image_bytes(model, 100, 150)
    print(f"\nwhole-image peak at 100 x 150: measured {peak / 2**20:.1f} MiB, estimated {estimate / 2**20:.1f} MiB")
    assert peak <= estimate <= 2 * peak


def test_the_default_batch_fits_the_memory_budget(monkeypatch):
    """Tiles run in batches of as many windows as the budget of the
    automatic tiles holds (estimated for the batch); on the host at most 4,
    the batch measured faster than tiles one by one (docs/tiled.md)."""
    model = default_model()
    before, after = tiling.halo(model.variant)
    side = 256 + before + after
    one = tiling.whole_image_bytes(model, side, side)
    assert tiling.whole_image_bytes(model, side, side, batch=3) == 3 * one
    for budget, batch in ((0, 1), (one - 1, 1), (one, 1), (5 * one - 1, 4), (5 * one, 5)):
        assert tiling.budget_batch(model, 256, budget) == batch
    if _backend.active().name == "host":
        monkeypatch.setattr(tiling, "free_bytes", lambda: 2 * 3 * one)  # half of it is the budget
        assert tiling.auto_batch(model, 256) == 3
        monkeypatch.setattr(tiling, "free_bytes", lambda: 2 * 100 * one)
        assert tiling.auto_batch(model, 256) == tiling.HOST_TILE_BATCH == 4


def _peak(model, shape, tile, tmp_path, batch=1):
    """The peak over infer(memmap, tile=..., out=memmap, tile_batch=batch): tracemalloc's on the
    host, CuPy's pool's bytes in use on a GPU (an allocator that notes them)."""
    src = np.lib.format.open_memmap(tmp_path / f"in{shape}.npy", mode="w+", dtype=np.uint8, shape=(*shape, 3))
    src[:] = image(*shape, seed=9)
    out = np.lib.format.open_memmap(tmp_path / f"out{shape}.npy", mode="w+", dtype=np.uint8, shape=shape)
    be = _backend.active()
    if be.name == "cuda":
        cupy, pool, peak = be.xp, be.xp.get_default_memory_pool(), [0]

        def malloc(n):
            mem = pool.malloc(n)
            peak[0] = max(peak[0], pool.used_bytes())
            return mem

        pool.free_all_blocks()
        cupy.cuda.set_allocator(malloc)
        try:
            fcn_cuda.infer(src, model, tile=tile, out=out, tile_batch=batch)
            return peak[0]
        finally:
            cupy.cuda.set_allocator(pool.malloc)
    tracemalloc.start()
    try:
        fcn_cuda.infer(src, model, tile=tile, out=out, tile_batch=batch)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_is_bounded_by_the_tile_not_the_image(be, tmp_path):
    """Memory-mapped input and output: a 4x longer image at the same tile
    peaks within 1.3x, where a whole-image pass grows with the image. (The
    benchmark, benchmarks/tiled.py, measures the bundled model at 4096^2
    against 1024^2; here a tiny model on thin images keeps the emulator's
    time small. Both images have windows with both sides inside the image,
    two of one shape at least, so batches of 2 run in both.)"""
    model = varied("8s")
    short, long_ = _peak(model, (1024, 32), 256, tmp_path, 2), _peak(model, (4096, 32), 256, tmp_path, 2)
    print(f"\ntiles of 256 in batches of 2: peak {short / 2**20:.2f} MiB at 1024 x 32, {long_ / 2**20:.2f} MiB at "
          f"4096 x 32")
    assert long_ <= 1.3 * short
    assert tiling.whole_image_bytes(model, 4096, 32) > 2.5 * tiling.whole_image_bytes(model, 1024, 32)
