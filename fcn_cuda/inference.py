"""fcn_cuda.infer: an image in, a label map out, every step a kernel."""

from pathlib import Path

import numpy as np

from . import _backend, ops
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


def infer(img, model=None, return_scores=False, crf=False):
    """H x W integer label map (NumPy) for one image; with return_scores also
    the C x H x W float32 class scores. The labels are the same either way;
    without scores the last upsample and the argmax are one kernel
    (FCN.labels) and the full-resolution scores are never stored.
    model.use_bf16_weights() first runs fc6 on bf16 weights (half its weight
    traffic, bf16 accuracy for that layer).

    crf=True refines the labels with the fully connected CRF
    (fcn_cuda.dense_crf) on the softmax of the scores before the argmax,
    with the parameters tuned for the bundled model (fcn_cuda.crf.SHAPES);
    crf=dict(...) sets some of them (dense_crf's keyword arguments, and
    iterations), e.g. crf=fcn_cuda.crf.DEEPLAB_VOC for PASCAL VOC models.
    The scores returned are the model's, before the CRF."""
    rgb = load_image(img)
    params = settings(crf)
    model = model if model is not None else default_model()
    be = _backend.active()
    img_dev = be.xp.asarray(rgb)
    x = ops.preprocess(img_dev)
    if params is None:
        if not return_scores:
            return be.to_numpy(model.labels(x)[0])
        scores = model(x)
        return be.to_numpy(ops.argmax(scores)[0]), be.to_numpy(scores[0])
    if return_scores:
        scores = model(x)
        probs = ops.softmax(scores)
    else:
        _, probs = model.labels(x, probs=True)
    labels = be.to_numpy(ops.argmax(dense_crf(img_dev, probs[0], **params)[None])[0])
    return (labels, be.to_numpy(scores[0])) if return_scores else labels
