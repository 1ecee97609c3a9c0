"""Our own weight files: safetensors (a JSON header and raw little-endian
tensors; no pickle), read and written by the safetensors package.

`save` streams the arrays into a temporary file with
safetensors.numpy.save_file, which writes each tensor from its own memory
(safetensors.numpy.save would first build the whole file as bytes, two
extra copies: fc6 alone is 411 MB at VGG16 width); fcn_cuda.files.replacing
then fsyncs it and renames it over the target, so a failed save never
leaves a partial file.
"""

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ..files import WeightFileError, replacing


def save(path, tensors, metadata=None):
    """Writes {name: array} to `path` atomically; `metadata` values become strings."""
    arrays = {name: np.ascontiguousarray(a) for name, a in tensors.items()}
    meta = {str(k): str(v) for k, v in metadata.items()} if metadata else None
    with replacing(path) as tmp:
        save_file(arrays, str(tmp), metadata=meta)


def load(path):
    """(tensors, metadata) from a safetensors file; WeightFileError naming the file if it is damaged."""
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except SafetensorError as e:
        raise WeightFileError(f"{path}: truncated, damaged or not a safetensors file ({e})") from None
    return tensors, meta
