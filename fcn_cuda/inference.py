"""fcn_cuda.infer: an image in, a label map out, every step a kernel."""

from pathlib import Path

import numpy as np

from . import _backend, ops, tiling
from . import _validate as V
from .crf import dense_crf, settings

DEFAULT_WEIGHTS = Path(__file__).parent / "data" / "fcn8s_shapes.safetensors"
_default_model = None


def load_image(img):
    """A path, PIL image or array -> H x W x 3 uint8 RGB (grayscale and RGBA converted)."""
    from PIL import Image

    if isinstance(img, (str, Path)):
        path = Path(img)
        if not path.exists():
            raise FileNotFoundError(f"image not found: {path}")
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except OSError as e:
            raise ValueError(f"{path}: cannot be read as an image ({e})") from None
    if isinstance(img, Image.Image):
        img = np.asarray(img.convert("RGB"))
    a = np.asarray(img.get() if hasattr(img, "get") else img)
    if a.dtype != np.uint8:
        raise TypeError(f"img must be uint8 (0..255), got {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    elif a.ndim == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"img must be H x W x 3 RGB (or gray / RGBA), got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"img is empty (shape {a.shape})")
    return np.ascontiguousarray(a)


def default_model():
    """The bundled FCN-8s (reduced width, trained on the synthetic shapes set)."""
    global _default_model
    if _default_model is None:
        if not DEFAULT_WEIGHTS.exists():
            raise FileNotFoundError(
                f"no bundled default model at {DEFAULT_WEIGHTS}. Pass a model: "
                "fcn_cuda.infer(img, fcn_cuda.load_model(path)), where path is an fcn_cuda .safetensors file, "
                "torchvision VGG16 weights (.pth), a pytorch-fcn FCN32s/16s/8s checkpoint (.pth) or a Caffe "
                "FCN or VGG16 .caffemodel")
        from .weights import load_model

        _default_model = load_model(DEFAULT_WEIGHTS)
    return _default_model


def infer(img, model=None, return_scores=False, crf=False, *, tile=None, out=None, progress=None, tile_batch=None):
    """H x W integer label map (NumPy) for one image; with return_scores also
    the C x H x W float32 class scores. The labels are the same either way;
    without scores the last upsample and the argmax are one kernel
    (FCN.labels) and the full-resolution scores are never stored.
    model.use_bf16_weights() first runs fc6 on bf16 weights (half its weight
    traffic, bf16 accuracy for that layer).

    img: a path, PIL image or H x W x 3 uint8 RGB array (gray and RGBA are
    converted); with tiles also any array-like with shape, dtype and
    slicing (np.memmap, zarr, tifffile's memory maps), read a window at a
    time, and .npy / TIFF paths, memory-mapped (fcn_cuda.tiling.open_image).

    tile=N runs exact tiles of N x N output pixels (N a multiple of 32, the
    network's stride), each from an input window with the halo the model's
    layers need (fcn_cuda.tiling): the labels and scores are the whole
    image's, bit for bit, and memory is bounded by the tile, not the image.
    Without tile, an image whose whole-image pass would take more than half
    the free memory runs in tiles chosen here, with a warning that says so.
    out: an H x W integer array (e.g. an np.memmap) the labels are written
    into and returned as, instead of a new int32 array. progress: with
    tiles, a callable given the number of tiles done after each batch.
    tile_batch: how many tiles of one window shape run at once, as one
    batch (the same bits; memory for that many windows); default
    (tiling.auto_batch): as many as fit the memory budget of the automatic
    tiles, on the host at most 4.

    crf=True refines the labels with the fully connected CRF
    (fcn_cuda.dense_crf) on the softmax of the scores before the argmax,
    with the parameters tuned for the bundled model (fcn_cuda.crf.SHAPES);
    crf=dict(...) sets some of them (dense_crf's keyword arguments, and
    iterations), e.g. crf=fcn_cuda.crf.DEEPLAB_VOC for PASCAL VOC models.
    The CRF couples every pixel with every other, so it has no tiles: crf
    with tile is refused. The scores returned are the model's, before the CRF."""
    return_scores = V.flag(return_scores, "return_scores")
    tile_batch = tiling.check_batch(tile_batch)
    params = settings(crf)
    model = model if model is not None else default_model()
    if tile is not None:
        tile = tiling.check_tile(tile, model.conv1_pad)
        if params is not None:
            raise ValueError("crf cannot run with tile: the dense CRF is fully connected, so a CRF over tiles is "
                             "not the image's CRF; leave tile out (the CRF then needs the whole image in memory) "
                             "or leave crf out")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be a callable taking the tiles done, got {type(progress).__name__}")
    src = tiling.open_image(img, tiled=tile is not None)
    height, width = int(src.shape[0]), int(src.shape[1])
    if out is not None:
        tiling.check_out(out, height, width, model.num_classes)
    if tile is None and params is None:
        tile = tiling.auto_tile(model, height, width)
        if tile is not None:
            tiling.warn_auto(height, width, tile, f"the {_backend.active().name} backend")
    if tile is not None:
        labels = out if out is not None else np.empty((height, width), np.int32)
        scores = tiling.infer_tiles(src, model, tile, labels, return_scores, progress=progress, batch=tile_batch)
        return (labels, scores) if return_scores else labels
    labels, scores = _whole(tiling.read_window(src, 0, height, 0, width), model, return_scores, params)
    if out is not None:
        out[...] = labels
        labels = out
    return (labels, scores) if return_scores else labels


def _whole(img, model, return_scores, params):
    """(labels, scores or None) of a whole-image pass over an RGB uint8 array."""
    be = _backend.active()
    img_dev = be.xp.asarray(img)
    x = ops.preprocess(img_dev)
    if params is None:
        if not return_scores:
            return be.to_numpy(model.labels(x)[0]), None
        scores = model(x)
        return be.to_numpy(ops.argmax(scores)[0]), be.to_numpy(scores[0])
    scores = None
    if return_scores:
        scores = model(x)
        probs = ops.softmax(scores)
    else:
        _, probs = model.labels(x, probs=True)
    labels = be.to_numpy(ops.argmax(dense_crf(img_dev, probs[0], **params)[None])[0])
    return labels, (be.to_numpy(scores[0]) if return_scores else None)
