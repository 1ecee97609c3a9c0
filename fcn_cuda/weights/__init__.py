"""Weight files, one module per format, behind `read` and `load_model`.

* `safetensors`: our own files and training checkpoints (no pickle), read
  and written with the safetensors package; writes are atomic.
* `pth`: `.pth` / `.pt` files through ``torch.load(..., weights_only=True)``
  (torch needed only then): torchvision's VGG16 (`features.*`,
  `classifier.*`) and pytorch-fcn's FCN32s/16s/8s state dicts (our layer
  names; training checkpoints keep them under ``model_state_dict``).
* `caffe`: the reference's own `.caffemodel` files (FCN nets and the VGG16
  they start from), read from protobuf's wire format.

Beside them, `state_dict` (the parameter shapes, the checks a state dict
passes, fresh weights) and `transplant` (VGG16's weights grown into an FCN's).

A file's format comes from its suffix, else from its first bytes.
"""

import json
import os
from pathlib import Path

from .. import _validate as V
from ..files import WeightFileError
from ..geometry import VARIANTS
from . import caffe, pth
from .caffe import read_caffemodel
from .safetensors import load as load_safetensors, save as save_safetensors
from .state_dict import as_numpy, checked_class_names, infer_variant
from .transplant import transplant

CHECKPOINT_FORMAT = "fcn_cuda-checkpoint"  # training.Trainer.save_checkpoint's files
MOMENTUM_PREFIX = "momentum."  # a checkpoint's SGD velocity, beside the weights

SUFFIXES = {".safetensors": "safetensors", ".pth": "pth", ".pt": "pth", ".caffemodel": "caffe"}


def file_format(path):
    """'safetensors', 'pth' or 'caffe': by the suffix, else by the first bytes
    (safetensors: an 8-byte header length and '{'; torch.save: a zip or a
    pickle; anything else is tried as a Caffe protobuf)."""
    path = Path(path)
    if path.suffix.lower() in SUFFIXES:
        return SUFFIXES[path.suffix.lower()]
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= path.stat().st_size - 8:
        return "safetensors"
    if head.startswith((b"PK\x03\x04", b"\x80")):
        return "pth"
    return "caffe"


def read(src):
    """(state dict of NumPy arrays, metadata, layout) from a path or a dict.

    layout is 'fcn' (our names, also pytorch-fcn's) or 'vgg16' (torchvision's
    or Caffe's VGG16, fc6 / fc7 convolutionalized). A training checkpoint
    reads as its model's weights (momentum left out; load_model then removes
    the class prior, as the run's final file does).
    """
    meta = {}
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.exists():
            raise FileNotFoundError(f"weights file not found: {path}")
        fmt = file_format(path)
        if fmt == "caffe":
            return caffe.load(path)
        if fmt == "pth":
            sd = pth.load(path)
        else:
            sd, meta = load_safetensors(path)
            if meta.get("format") == CHECKPOINT_FORMAT:
                sd = {k: v for k, v in sd.items() if not k.startswith(MOMENTUM_PREFIX)}
    elif isinstance(src, dict):
        sd = src.get("model_state_dict", src)
    else:
        raise TypeError(f"src must be a path or a state dict, got {type(src).__name__}")
    sd = {str(k): as_numpy(v) for k, v in sd.items()}
    if any(k.startswith("features.") for k in sd):
        return pth.from_torchvision_vgg16(sd), meta, "vgg16"
    return sd, meta, "fcn"


def load_model(src, variant=None, num_classes=None, at_once=None):
    """An FCN from a weights file or state dict (see module docstring).

    The variant comes from the keys (or `variant` for VGG16 weights, default
    '32s'); VGG16 weights get zero score layers and bilinear upsampling with
    `num_classes` (default 21) classes, as the reference's transplant does.
    A training checkpoint loads as the model its run's final.safetensors
    holds (model.deployed: the class prior removed).
    """
    return model_from(read(src), variant, num_classes, at_once, source=src if isinstance(src, (str, os.PathLike))
                      else None)


def model_from(weights, variant=None, num_classes=None, at_once=None, source=None):
    """load_model of what read() returned, (state dict, metadata, layout):
    a caller that looked at the layout first builds the model without
    reading the file again. source: the file they came from; a problem
    with their content (NaN weights, a misshapen layer, bad metadata) is
    then a WeightFileError naming it."""
    if variant is not None:
        V.choice(variant, "variant", VARIANTS)
    if num_classes is not None:
        num_classes = V.integer(num_classes, "num_classes", minimum=1)
    try:
        return _model(*weights, variant, num_classes, at_once)
    except ValueError as e:  # the arguments were checked above: this is the content
        if source is None:
            raise
        raise WeightFileError(f"{source}: {e}") from None


def _model(sd, meta, layout, variant, num_classes, at_once):
    # fcn_cuda.model checks its state dicts with .state_dict, so it imports this package: the model comes
    # in here, when one is built.
    from ..model import FCN, deployed

    if layout == "vgg16":
        variant = variant or "32s"
        num_classes = 21 if num_classes is None else num_classes
        sd = transplant(sd, variant, num_classes)
    else:
        found = infer_variant(sd)
        if variant is not None and variant != found:
            raise ValueError(f"the weights are FCN-{found}, not FCN-{variant}")
        variant = found
        if "score_fr.weight" not in sd:
            raise WeightFileError("the weights have no score_fr.weight")
        found = sd["score_fr.weight"].shape[0]
        if num_classes is not None and num_classes != found:
            raise ValueError(f"the weights have {found} classes, not {num_classes} (num_classes sets the classes of "
                             "a VGG16 transplant only)")
        num_classes = found
    if at_once is None:
        at_once = meta.get("at_once") == "True"
    model = FCN(variant, num_classes, at_once=at_once, state_dict=sd, class_names=_class_names(meta, num_classes))
    if meta.get("format") == CHECKPOINT_FORMAT:  # read as the run's final.safetensors would hold it
        model = deployed(model, json.loads(meta.get("config", "{}")).get("class_weights"))
    return model


def _class_names(meta, num_classes):
    """The class names a weights file carries ("classes": a JSON list), or None."""
    if "classes" not in meta:
        return None
    try:
        return checked_class_names(json.loads(meta["classes"]), num_classes)
    except ValueError:  # not JSON, or not num_classes names
        raise WeightFileError(f"the weights' 'classes' metadata must be a JSON list of {num_classes} names, "
                              f"got {meta['classes'][:80]!r}") from None
