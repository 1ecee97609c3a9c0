"""PyTorch .pth / .pt files, through ``torch.load(..., weights_only=True)``
(no arbitrary pickles; torch is needed only here): pytorch-fcn's FCN
state dicts and checkpoints (our layer names) and torchvision's VGG16."""

from ..files import WeightFileError
from ..geometry import trunk_layer_names
from .transplant import convolutionalize

VGG16_FEATURES = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # conv indices in torchvision's vgg16.features


def load(path):
    """The state dict a .pth file holds (a checkpoint's model_state_dict)."""
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


def from_torchvision_vgg16(sd):
    """torchvision VGG16 names -> ours, fc6/fc7 reshaped into convolutions
    (classifier.6, the ImageNet classifier, is dropped as in the transplant)."""
    unknown = sorted(k for k in sd if not k.startswith(("features.", "classifier.")))
    if unknown:
        raise WeightFileError(f"torchvision VGG16 weights with unexpected keys: {unknown}")
    try:
        out = {}
        for name, idx in zip(trunk_layer_names(), VGG16_FEATURES):
            out[f"{name}.weight"] = sd[f"features.{idx}.weight"]
            out[f"{name}.bias"] = sd[f"features.{idx}.bias"]
        for name, idx in (("fc6", 0), ("fc7", 3)):
            out[f"{name}.weight"] = sd[f"classifier.{idx}.weight"]
            out[f"{name}.bias"] = sd[f"classifier.{idx}.bias"]
    except KeyError as e:
        raise WeightFileError(f"torchvision VGG16 weights lack {e}") from None
    return convolutionalize(out)
