"""Exact tiled inference: any image size in memory bounded by the tile.

FCN with conv1_1's pad 100 and ceil-mode pooling is not translation
equivariant at the image border, so a tile cut from an image and run alone
gives other scores than the whole image there. It gives the very same ones
(docs/tiled.md works it through) when its input window

  * starts on the network's stride (32: five 2x2 pools), so every feature
    map of the window is a shifted crop of the whole image's (the same pool
    windows, the same deconvolution phases);
  * reaches at least the halo past the tile on every side that is not the
    image's edge: the reach over which the window's own border (conv1_1's
    zero padding, the short last pool window of ceil mode, the missing taps
    of the upsampling) changes anything, worked out from the layers
    (`exact_output`), for every variant and width;
  * ends at the image's own edge wherever it meets it, so that there it sees
    the whole image's padding and its last pool windows.

`plan` checks every tile against `exact_output` before any work: a tile
whose window could not give the whole image's values is a bug, not a
rounding. The scores are then those of the whole image bit for bit when
the same kernel variants run (FCN.conv_plan of the whole image, which every
tile runs), and so are the labels.
"""

import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import _backend
from . import _validate as V
from . import ops
from .model import HEADS, SKIPS, head_geometry, trunk_layers
from .ops.pool import pool_size

_FAR = 1 << 40  # a side at the image's edge: nothing beyond it differs from the whole image


def _conv(r, k, p):
    """Exact cells of a stride-1 conv's output from its input's [lo, hi):
    output o reads input o - p .. o - p + k - 1, zero padding included."""
    return r[0] + p, r[1] + p - k + 1


def _pool(r, k, s):
    """Of a ceil-mode max pool: output o reads s*o .. s*o + k - 1, as many of them as exist."""
    return -(-r[0] // s), (r[1] - k) // s + 1


def _deconv(r, k, s):
    """Of a full transposed convolution: output u gathers input x for s*x <= u <= s*x + k - 1."""
    return s * (r[0] - 1) + k, s * r[1]


def stride(conv1_pad=100):
    """The network's output stride: the product of its pools' strides (32)."""
    return int(np.prod([s for kind, _, _, s, _ in trunk_layers(conv1_pad) if kind == "pool"]))


@lru_cache(maxsize=None)
def exact_output(variant, conv1_pad, lo, hi):
    """The output pixels [a, b) of a window, in its own coordinates, that
    equal the whole image's, when the window's input pixels [lo, hi) are the
    image's (lo = -_FAR, hi = _FAR: that side is the image's edge) and the
    window starts on the stride. Each layer keeps the cells whose inputs
    are all exact; the skips keep what both of their sums have."""
    r, pools = (lo, hi), {}
    for kind, name, k, s, p in trunk_layers(conv1_pad):
        r = _conv(r, k, p) if kind == "conv" else _pool(r, k, s)
        pools[name] = r
    offsets = head_geometry(variant, conv1_pad)
    for (name, k, s), skip in zip(HEADS[variant][:-1], SKIPS[variant]):
        r = _deconv(r, k, s)
        pool = pools["pool4" if skip == "score_pool4" else "pool3"]
        r = max(r[0], pool[0] - offsets[skip]), min(r[1], pool[1] - offsets[skip])
    name, k, s = HEADS[variant][-1]
    r = _deconv(r, k, s)
    return r[0] - offsets[name], r[1] - offsets[name]


@lru_cache(maxsize=None)
def halo(variant, conv1_pad=100):
    """(before, after): the input pixels a tile's window needs beyond the
    tile on a side that is not the image's edge. `before` is rounded up to
    the stride so that windows start on it; `after` is the worst over the
    window lengths modulo the stride (ceil mode's last window depends on it)."""
    st = stride(conv1_pad)
    first = exact_output(variant, conv1_pad, 0, _FAR)[0]
    before = -(-max(first, 0) // st) * st
    length = 64 * st
    after = max(length + r - exact_output(variant, conv1_pad, -_FAR, length + r)[1] for r in range(st))
    return before, max(after, 0)


@dataclass(frozen=True)
class Tile:
    """One tile: output rows [y0, y1) x columns [x0, x1) of the image,
    computed from the input window rows [wy0, wy1) x columns [wx0, wx1)."""

    y0: int
    y1: int
    x0: int
    x1: int
    wy0: int
    wy1: int
    wx0: int
    wx1: int

    @property
    def region(self):
        """The tile within its window's output: (top, left, height, width)."""
        return self.y0 - self.wy0, self.x0 - self.wx0, self.y1 - self.y0, self.x1 - self.x0

    @property
    def window_shape(self):
        return self.wy1 - self.wy0, self.wx1 - self.wx0


def _axis(n, tile, variant, conv1_pad):
    """[(out0, out1, win0, win1)] along one axis of n pixels, each checked exact."""
    before, after = halo(variant, conv1_pad)
    spans = []
    for t0 in range(0, n, tile):
        t1 = min(t0 + tile, n)
        w0, w1 = max(0, t0 - before), min(n, t1 + after)
        a, b = exact_output(variant, conv1_pad, -_FAR if w0 == 0 else 0, _FAR if w1 == n else w1 - w0)
        if w0 % stride(conv1_pad) or not a <= t0 - w0 < t1 - w0 <= b:
            raise AssertionError(f"tile [{t0}, {t1}) in window [{w0}, {w1}) is not exact (exact: [{a}, {b}))")
        spans.append((t0, t1, w0, w1))
    return spans


def plan(height, width, tile, variant="8s", conv1_pad=100):
    """The tiles of a height x width image, row by row, each with its window."""
    return [Tile(y0, y1, x0, x1, wy0, wy1, wx0, wx1)
            for y0, y1, wy0, wy1 in _axis(height, tile, variant, conv1_pad)
            for x0, x1, wx0, wx1 in _axis(width, tile, variant, conv1_pad)]


def check_tile(tile, conv1_pad=100):
    """`tile` as an int: a positive multiple of the stride (the tiles' origins sit on it)."""
    st = stride(conv1_pad)
    tile = V.integer(tile, "tile", minimum=1)
    if tile % st:
        lower = max(st, tile // st * st)
        raise ValueError(f"tile must be a multiple of the network's stride {st} (tiles start on it so that their "
                         f"feature maps are crops of the whole image's), got {tile}: use {lower} or {lower + st}")
    return tile


# ---- inputs that need not fit in memory

# Pillow refuses images above Image.MAX_IMAGE_PIXELS (89 Mpx) as possible
# decompression bombs. Tiled inference exists for large images, so it lifts
# the limit to this (65536 x 65536; 12 GiB of decoded RGB) and says so.
TILED_MAX_IMAGE_PIXELS = 1 << 32
NUMPY_SUFFIXES = (".npy",)
TIFF_SUFFIXES = (".tif", ".tiff")


def open_image(img, tiled=True):
    """An image source read a window at a time: an array-like of shape
    H x W, H x W x 1, 3 or 4 (uint8) with slicing. Paths: .npy memory-mapped,
    TIFF through tifffile (memory-mapped where the file is uncompressed and
    contiguous), others through Pillow (decoded whole: uint8 RGB). PIL
    images and arrays (NumPy, np.memmap, zarr, CuPy, torch) are taken as they
    are. Raises TypeError / ValueError naming `img` before reading any pixel."""
    if isinstance(img, (str, Path)):
        img = _open_path(Path(img), tiled)
    else:
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover - Pillow is a dependency
            Image = None
        if Image is not None and isinstance(img, Image.Image):
            img = np.asarray(img.convert("RGB"))
        elif not hasattr(img, "shape"):
            img = np.asarray(img)  # a nested list; anything else fails the dtype check below
    if not hasattr(img, "dtype") or not hasattr(img, "__getitem__"):
        raise TypeError(f"img must be a path, a PIL image or an array-like with shape, dtype and slicing; "
                        f"got {type(img).__name__}")
    shape = tuple(int(v) for v in img.shape)
    if str(img.dtype).replace("torch.", "") != "uint8":
        raise TypeError(f"img must be uint8 (0..255), got {img.dtype}")
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
        raise ValueError(f"img must be H x W x 3 RGB (or gray / RGBA), got shape {shape}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"img is empty (shape {shape})")
    return img


def image_shape(path):
    """(height, width) of an image file, from its header where Pillow reads it (no pixel decoded)."""
    path = Path(path)
    if path.exists() and path.suffix.lower() not in NUMPY_SUFFIXES + TIFF_SUFFIXES:
        from PIL import Image

        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the header only: no bomb to fear yet
        try:
            with Image.open(path) as im:
                return im.height, im.width
        except OSError as e:
            raise ValueError(f"{path}: cannot be read as an image ({e})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    return tuple(int(v) for v in open_image(path, tiled=False).shape[:2])


def _open_path(path, tiled):
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    suffix = path.suffix.lower()
    if suffix in NUMPY_SUFFIXES:
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{path}: cannot be read as a NumPy array ({e})") from None
    if suffix in TIFF_SUFFIXES:
        try:
            import tifffile
        except ImportError:
            tifffile = None  # Pillow reads the common TIFFs, decoded whole
        if tifffile is not None:
            try:
                return tifffile.memmap(path, mode="r")
            except ValueError:  # compressed or not contiguous: decoded whole
                return tifffile.imread(path)
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if tiled:
        Image.MAX_IMAGE_PIXELS = max(limit or 0, TILED_MAX_IMAGE_PIXELS)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as e:
        raise ValueError(f"{path}: {e} (tiled inference raises the limit to {TILED_MAX_IMAGE_PIXELS} pixels)") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot be read as an image ({e})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def read_window(img, y0, y1, x0, x1):
    """Rows [y0, y1) x columns [x0, x1) of an image source as H x W x 3 uint8 RGB (a copy)."""
    a = img[y0:y1, x0:x1]
    a = a.get() if hasattr(a, "get") else a.numpy(force=True) if hasattr(a, "numpy") else a
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3])


def check_out(out, height, width, num_classes):
    """`out` as a writable H x W integer array-like whose dtype holds every class."""
    for attr in ("shape", "dtype", "__setitem__"):
        if not hasattr(out, attr):
            raise TypeError(f"out must be an H x W integer array (e.g. an np.memmap); {type(out).__name__} has "
                            f"no {attr}")
    shape = tuple(int(v) for v in out.shape)
    if shape != (height, width):
        raise ValueError(f"out must have the image's shape {(height, width)}, got {shape}")
    dtype = np.dtype(out.dtype)
    if dtype.kind not in "iu" or np.iinfo(dtype).max < num_classes - 1:
        raise TypeError(f"out must have an integer dtype that holds classes 0..{num_classes - 1}, got {dtype}")
    if getattr(getattr(out, "flags", None), "writeable", True) is False:
        raise ValueError("out is read-only")
    return out


# ---- memory


def whole_image_bytes(model, height, width, batch=1):
    """An upper estimate of the bytes a whole-image labels pass holds at its
    peak on the device: the largest layer's input and output (and a split's
    workspace) beside the preprocessed image and the kept pool3 / pool4,
    plus the labels. batch: images of that size run as one batch (tiles'
    windows, infer_tiles), each holding as much."""
    batch = V.integer(batch, "batch", minimum=1)
    shapes = {name: v.shape for name, v in model.params.items()}
    plan_ = model.conv_plan(height, width)
    h, w, c = height, width, 3
    image = 3 * height * width * 4 + height * width  # x (float32) and the uint8 image
    kept, peak = 0, 0
    for kind, name, k, s, p in trunk_layers(model.conv1_pad):
        if kind == "pool":
            oh, ow, oc = pool_size(h, k, s, True), pool_size(w, k, s, True), c
        else:
            oh, ow, oc = h + 2 * p - k + 1, w + 2 * p - k + 1, shapes[f"{name}.weight"][0]
        out = oc * max(oh, 1) * max(ow, 1) * 4
        work = out * plan_[name][1] if kind == "conv" and plan_[name][1] > 1 else 0
        peak = max(peak, c * h * w * 4 + out + work + kept)
        if name in ("pool3", "pool4"):
            kept += out
        h, w, c = oh, ow, oc
    return batch * (image + peak + height * width * 4)


def free_bytes():
    """Memory free for the active backend now: the GPU's (plus CuPy's pool's cached blocks), else the host's."""
    be = _backend.active()
    if be.name == "cuda":
        pool = be.xp.get_default_memory_pool()
        return int(be.xp.cuda.runtime.memGetInfo()[0]) + int(pool.free_bytes())
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no sysconf: assume plenty
        return 1 << 62


def auto_tile(model, height, width, budget=None):
    """None when a whole-image pass fits half of `budget` (default: the free
    memory), else the largest tile (a multiple of the stride, at most 4096)
    whose window does."""
    budget = free_bytes() // 2 if budget is None else budget
    if whole_image_bytes(model, height, width) <= budget:
        return None
    st = stride(model.conv1_pad)
    before, after = halo(model.variant, model.conv1_pad)
    best = st
    for tile in range(st, 4096 + 1, st):
        if whole_image_bytes(model, tile + before + after, tile + before + after) > budget:
            break
        best = tile
    return best


# The host's default batch of tiles, the one measured (docs/tiled.md): batches
# of 4 took about a fifth less wall time than tiles one by one, for the same
# CPU time (larger grids keep the emulator's workers busy), at 4x the memory.
HOST_TILE_BATCH = 4


def auto_batch(model, tile):
    """How many tiles' windows run as one batch by default: as many
    full-size windows as fit the budget auto_tile uses (half the free
    memory; budget_batch), on the host at most HOST_TILE_BATCH."""
    batch = budget_batch(model, tile, free_bytes() // 2)
    return batch if _backend.active().name == "cuda" else min(batch, HOST_TILE_BATCH)


def budget_batch(model, tile, budget):
    """The most full-size windows (tile plus both halos per axis) whose
    estimated peak (whole_image_bytes) fits `budget`, and at least 1."""
    before, after = halo(model.variant, model.conv1_pad)
    side = tile + before + after
    return max(1, budget // whole_image_bytes(model, side, side))


def check_batch(batch):
    """`batch` (tiles run at once) as an int >= 1, or None (auto_batch)."""
    return None if batch is None else V.integer(batch, "tile_batch", minimum=1)


# ---- the tiled pass


def infer_tiles(img, model, tile, out=None, return_scores=False, tiles=None, progress=None, batch=None):
    """Runs `tiles` (default: all of plan(...)) of `img` (an open_image
    source) and writes each tile's labels into `out` (H x W integer) and,
    with return_scores, its scores into a C x H x W float32 array, which is
    returned. Every tile runs the whole image's conv plan, so its bits are
    the whole image's. progress: a callable taking the tiles done.

    batch: tiles whose windows have one shape and whose regions sit at one
    place in them (the inner tiles, typically) run together, up to `batch`
    at a time, as one N x 3 x h x w forward (default: auto_batch). Every
    kernel computes each image of a batch as it computes it alone, so the
    bits do not change; memory grows to `batch` windows."""
    batch = auto_batch(model, tile) if batch is None else check_batch(batch)
    height, width = int(img.shape[0]), int(img.shape[1])
    conv_plan = model.conv_plan(height, width)
    scores = np.empty((model.num_classes, height, width), np.float32) if return_scores else None
    pending = {}
    for t in plan(height, width, tile, model.variant, model.conv1_pad) if tiles is None else tiles:
        group = pending.setdefault((t.window_shape, t.region), [])
        group.append(t)
        if len(group) == batch:
            _run_batch(img, model, conv_plan, pending.pop((t.window_shape, t.region)), out, scores, progress)
    for group in pending.values():
        _run_batch(img, model, conv_plan, group, out, scores, progress)
    return scores


def _run_batch(img, model, conv_plan, group, out, scores, progress):
    """Tiles with one window shape and one region, as one batch."""
    be = _backend.active()
    windows = np.stack([read_window(img, t.wy0, t.wy1, t.wx0, t.wx1) for t in group])
    x = ops.preprocess(be.xp.asarray(windows))
    del windows
    region = group[0].region
    if scores is not None:
        s = model.forward(x, plan=conv_plan, region=region)
        for i, t in enumerate(group):
            scores[:, t.y0:t.y1, t.x0:t.x1] = be.to_numpy(s[i])
        lab = ops.argmax(s)
        del s
    else:
        lab = model.labels(x, plan=conv_plan, region=region)
    del x
    for i, t in enumerate(group):
        out[t.y0:t.y1, t.x0:t.x1] = be.to_numpy(lab[i])
    if progress is not None:
        progress(len(group))


def warn_auto(height, width, tile, what):
    """Says that tiles were chosen because the whole image would not fit."""
    warnings.warn(f"a {height} x {width} image needs more memory for whole-image inference than {what} has free: "
                  f"running exact tiles of {tile} x {tile} (the same labels)", stacklevel=3)
