"""Weight files: our own safetensors, torchvision VGG16, pytorch-fcn.

* Own files are safetensors (a JSON header and raw little-endian tensors; no
  pickle), read and written here without extra dependencies. Writes are
  atomic: a temporary file in the same folder, fsync, then rename, so a
  crash never leaves a half-written file in place of a good one.
* `.pth` / `.pt` files go through ``torch.load(..., weights_only=True)``
  and need torch only then. Both torchvision's VGG16 (`features.*`,
  `classifier.*`) and pytorch-fcn's FCN32s/16s/8s state dicts (our layer
  names; training checkpoints keep them under ``model_state_dict``) load.
"""

import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
           "U8": np.uint8}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


CHECKPOINT_FORMAT = "fcn_cuda-checkpoint"  # training.Trainer.save_checkpoint's files
MOMENTUM_PREFIX = "momentum."  # a checkpoint's SGD velocity, beside the weights


class WeightFileError(ValueError):
    """A weight file that is corrupt, truncated, or of an unknown layout."""


# ------------------------------------------------------------- safetensors
def save_safetensors(path, tensors, metadata=None):
    """Writes {name: array} to `path` atomically."""
    path = Path(path)
    header = {}
    offset = 0
    blobs = []
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        if a.dtype not in _NAMES:
            raise TypeError(f"{name}: cannot store dtype {a.dtype} in safetensors here")
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format pads the header to 8 bytes
    atomic_write(path, [struct.pack("<Q", len(head)), head, *blobs])


def atomic_write(path, chunks):
    """Writes the byte chunks to a temp file beside `path`, then renames it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private: keep the replaced file's mode, or the usual 0644.
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_png(path, img):
    """Writes a PIL image as PNG, atomically."""
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write(path, [buf.getvalue()])


def load_safetensors(path):
    """(tensors, metadata) from a safetensors file; WeightFileError if it is damaged."""
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) < 8:
        raise WeightFileError(f"{path}: too short to be a safetensors file ({len(raw)} bytes)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise WeightFileError(f"{path}: header says {n} bytes but the file has {len(raw) - 8} after it (truncated?)")
    try:
        header = json.loads(raw[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightFileError(f"{path}: the header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise WeightFileError(f"{path}: the header is not a JSON object")
    meta = header.pop("__metadata__", {}) or {}
    body = memoryview(raw)[8 + n:]
    tensors = {}
    for name, info in header.items():
        try:
            dtype = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise WeightFileError(f"{path}: tensor {name!r} has a malformed header entry {info!r}") from None
        if not 0 <= begin <= end <= len(body):
            raise WeightFileError(f"{path}: tensor {name!r} lies outside the file (truncated?)")
        if end - begin != int(np.prod(shape)) * dtype.itemsize:
            raise WeightFileError(f"{path}: tensor {name!r} has {end - begin} bytes for shape {shape}")
        tensors[name] = np.frombuffer(body[begin:end], dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    return tensors, meta


# --------------------------------------------------------- other layouts
VGG16_FEATURES = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # conv indices in torchvision's vgg16.features


def from_torchvision_vgg16(sd):
    """torchvision VGG16 names -> ours, fc6/fc7 reshaped into convolutions."""
    from .model import trunk_layer_names

    out = {}
    for name, idx in zip(trunk_layer_names(), VGG16_FEATURES):
        out[f"{name}.weight"] = sd[f"features.{idx}.weight"]
        out[f"{name}.bias"] = sd[f"features.{idx}.bias"]
    w6 = np.asarray(sd["classifier.0.weight"])
    c5 = out["conv5_3.weight"].shape[0]
    out["fc6.weight"] = w6.reshape(w6.shape[0], c5, 7, 7)
    out["fc6.bias"] = sd["classifier.0.bias"]
    w7 = np.asarray(sd["classifier.3.weight"])
    out["fc7.weight"] = w7.reshape(w7.shape[0], w7.shape[1], 1, 1)
    out["fc7.bias"] = sd["classifier.3.bias"]
    return out


def _to_numpy(v):
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    elif hasattr(v, "get"):
        v = v.get()
    return np.asarray(v)


def _torch_load(path):
    try:
        import torch
    except ImportError:
        raise ImportError(f"{path}: reading .pth files needs torch (pip install torch)") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightFileError(f"{path}: torch.load(weights_only=True) failed: {e}") from None
    if isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict):
        raise WeightFileError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return obj


def read(src):
    """(state dict of NumPy arrays, metadata, layout) from a path or a dict.

    layout is 'fcn' (our names, also pytorch-fcn's) or 'vgg16' (torchvision).
    A training checkpoint reads as its model's weights (momentum left out;
    load_model then removes the class prior, as the run's final file does).
    """
    meta = {}
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.exists():
            raise FileNotFoundError(f"weights file not found: {path}")
        if path.suffix in (".pth", ".pt"):
            sd = _torch_load(path)
        else:
            sd, meta = load_safetensors(path)
            if meta.get("format") == CHECKPOINT_FORMAT:
                sd = {k: v for k, v in sd.items() if not k.startswith(MOMENTUM_PREFIX)}
    elif isinstance(src, dict):
        sd = src.get("model_state_dict", src)
    else:
        raise TypeError(f"src must be a path or a state dict, got {type(src).__name__}")
    sd = {str(k): _to_numpy(v) for k, v in sd.items()}
    if any(k.startswith("features.") for k in sd):
        unknown = sorted(k for k in sd if not k.startswith(("features.", "classifier.")))
        if unknown:
            raise WeightFileError(f"torchvision VGG16 weights with unexpected keys: {unknown}")
        try:
            return from_torchvision_vgg16(sd), meta, "vgg16"
        except KeyError as e:
            raise WeightFileError(f"torchvision VGG16 weights lack {e}") from None
    return sd, meta, "fcn"


def infer_variant(sd):
    if "upscore8.weight" in sd:
        return "8s"
    if "upscore16.weight" in sd:
        return "16s"
    if "upscore.weight" in sd:
        return "32s"
    raise WeightFileError("cannot tell the variant: none of upscore.weight (32s), upscore16.weight (16s), "
                          "upscore8.weight (8s) is present")


def check_state_dict(sd, shapes):
    """float32 arrays in `shapes`' order, or one ValueError listing every problem."""
    missing = [k for k in shapes if k not in sd]
    unknown = [k for k in sd if k not in shapes]
    wrong = [f"{k}: {tuple(np.shape(sd[k]))} != expected {shapes[k]}" for k in shapes
             if k in sd and tuple(np.shape(sd[k])) != tuple(shapes[k])]
    if missing or unknown or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys: {missing}")
        if unknown:
            parts.append(f"unknown keys: {unknown}")
        if wrong:
            parts.append(f"shape mismatches: {wrong}")
        raise ValueError("state dict does not fit the model; " + "; ".join(parts))
    out = {}
    for k in shapes:
        a = np.ascontiguousarray(_to_numpy(sd[k]), dtype=np.float32)
        if not np.isfinite(a).all():
            raise ValueError(f"state dict entry {k} contains NaN or inf")
        out[k] = a
    return out


def load_model(src, variant=None, num_classes=None, at_once=None):
    """An FCN from a weights file or state dict (see module docstring).

    The variant comes from the keys (or `variant` for VGG16 weights, default
    '32s'); VGG16 weights get zero score layers and bilinear upsampling with
    `num_classes` (default 21) classes, as the reference's transplant does.
    A training checkpoint loads as the model its run's final.safetensors
    holds (training.deployed: the class prior removed).
    """
    from .model import FCN, VARIANTS, param_shapes

    sd, meta, layout = read(src)
    if layout == "vgg16":
        variant = variant or "32s"
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        num_classes = num_classes or 21
        widths = []
        i = 0
        from .model import VGG16_BLOCKS, trunk_layer_names

        names = trunk_layer_names()
        for block in VGG16_BLOCKS:
            widths.append(tuple(sd[f"{names[i + j]}.weight"].shape[0] for j in range(len(block))))
            i += len(block)
        fresh = FCN._fresh(param_shapes(variant, num_classes, tuple(widths), sd["fc6.weight"].shape[0]), seed=0)
        fresh.update(sd)
        sd = fresh
    else:
        found = infer_variant(sd)
        if variant is not None and variant != found:
            raise ValueError(f"the weights are FCN-{found}, not FCN-{variant}")
        variant = found
        num_classes = sd["score_fr.weight"].shape[0] if "score_fr.weight" in sd else None
        if num_classes is None:
            raise WeightFileError("the weights have no score_fr.weight")
    if at_once is None:
        at_once = meta.get("at_once") == "True"
    model = FCN(variant, num_classes, at_once=at_once, state_dict=sd, class_names=_class_names(meta, num_classes))
    if meta.get("format") == CHECKPOINT_FORMAT:  # read as the run's final.safetensors would hold it
        from .training import deployed

        model = deployed(model, json.loads(meta.get("config", "{}")).get("class_weights"))
    return model


def _class_names(meta, num_classes):
    """The class names a weights file carries ("classes": a JSON list), or None."""
    from .model import checked_class_names

    if "classes" not in meta:
        return None
    try:
        return checked_class_names(json.loads(meta["classes"]), num_classes)
    except ValueError:  # not JSON, or not num_classes names
        raise WeightFileError(f"the weights' 'classes' metadata must be a JSON list of {num_classes} names, "
                              f"got {meta['classes'][:80]!r}") from None
