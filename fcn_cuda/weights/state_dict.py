"""State dicts of an FCN: the shapes a variant's parameters have (read from
the weights, so reduced widths work), the checks a state dict passes
before a model takes it, and fresh weights of those shapes."""

import numpy as np

from ..bilinear import bilinear_weights
from ..files import WeightFileError
from ..geometry import HEADS, SKIPS, VGG16_BLOCKS

# The spread of preprocessed pixels (0..255 minus the mean; about 60 on
# photographs and on the synthetic set): fresh conv1_1 weights are scaled
# down by it so that He initialisation, which assumes unit-variance inputs,
# keeps every later activation near unit scale.
PIXEL_STD = 60.0


def trunk_widths(sd):
    """The output channels of each conv layer of a state dict, block by block (VGG16_BLOCKS' layout)."""
    return tuple(tuple(int(np.shape(sd[f"conv{b + 1}_{i + 1}.weight"])[0]) for i in range(len(block)))
                 for b, block in enumerate(VGG16_BLOCKS))


def param_shapes(variant, num_classes, widths=VGG16_BLOCKS, fc=4096):
    """{name: shape} for a model of the given widths."""
    shapes = {}
    c = 3
    for b, block in enumerate(widths):
        for i, k in enumerate(block):
            shapes[f"conv{b + 1}_{i + 1}.weight"] = (k, c, 3, 3)
            shapes[f"conv{b + 1}_{i + 1}.bias"] = (k,)
            c = k
    pool3, pool4 = widths[2][-1], widths[3][-1]
    shapes["fc6.weight"], shapes["fc6.bias"] = (fc, c, 7, 7), (fc,)
    shapes["fc7.weight"], shapes["fc7.bias"] = (fc, fc, 1, 1), (fc,)
    shapes["score_fr.weight"], shapes["score_fr.bias"] = (num_classes, fc, 1, 1), (num_classes,)
    for name in SKIPS[variant]:
        src = pool4 if name == "score_pool4" else pool3
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (num_classes, src, 1, 1), (num_classes,)
    for name, k, _ in HEADS[variant]:
        shapes[f"{name}.weight"] = (num_classes, num_classes, k, k)
    return shapes


def shapes_for(variant, num_classes, state_dict):
    """param_shapes with the widths read from `state_dict` (VGG16's where a layer is missing)."""
    def width(name):
        w = state_dict.get(f"{name}.weight")
        return None if w is None else int(np.shape(w)[0])

    widths = []
    for b, block in enumerate(VGG16_BLOCKS):
        widths.append(tuple(width(f"conv{b + 1}_{i + 1}") or k for i, k in enumerate(block)))
    fc = width("fc6") or 4096
    return param_shapes(variant, num_classes, tuple(widths), fc)


def infer_variant(sd):
    """The variant whose last upsampling layer `sd` holds (upscore8: 8s, upscore16: 16s, upscore: 32s)."""
    for variant in ("8s", "16s", "32s"):
        if f"{HEADS[variant][-1][0]}.weight" in sd:
            return variant
    raise WeightFileError("cannot tell the variant: none of upscore.weight (32s), upscore16.weight (16s), "
                          "upscore8.weight (8s) is present")


def checked_class_names(names, num_classes):
    """None, or `names` as a tuple of num_classes non-empty strings (else ValueError)."""
    if names is None:
        return None
    if isinstance(names, str) or not hasattr(names, "__len__") or len(names) != num_classes \
            or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"class_names must be {num_classes} non-empty strings, got {names!r}")
    return tuple(names)


def as_numpy(v):
    """A NumPy array of a NumPy, CuPy or torch array (a torch tensor's memory is shared)."""
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    elif hasattr(v, "get"):
        v = v.get()
    return np.asarray(v)


def state_dict_problems(sd, shapes):
    """(missing, unknown, misshapen) keys of `sd` against {name: shape};
    misshapen as (name, its shape, the expected shape)."""
    missing = [k for k in shapes if k not in sd]
    unknown = [k for k in sd if k not in shapes]
    wrong = [(k, tuple(np.shape(sd[k])), tuple(shapes[k])) for k in shapes
             if k in sd and tuple(np.shape(sd[k])) != tuple(shapes[k])]
    return missing, unknown, wrong


def check_state_dict(sd, shapes):
    """float32 arrays in `shapes`' order, or one ValueError listing every problem."""
    missing, unknown, wrong = state_dict_problems(sd, shapes)
    if missing or unknown or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys: {missing}")
        if unknown:
            parts.append(f"unknown keys: {unknown}")
        if wrong:
            parts.append(f"shape mismatches: {[f'{k}: {got} != expected {want}' for k, got, want in wrong]}")
        raise ValueError("state dict does not fit the model; " + "; ".join(parts))
    out = {}
    for k in shapes:
        a = np.ascontiguousarray(as_numpy(sd[k]), dtype=np.float32)
        if not np.isfinite(a).all():
            raise ValueError(f"state dict entry {k} contains NaN or inf")
        out[k] = a
    return out


def fresh_state_dict(shapes, seed):
    """A freshly initialised state dict of {name: shape}, as the reference
    starts: biases and score layers zero, upsampling bilinear, every other
    weight He-normal (conv1_1's scaled down by PIXEL_STD), drawn from
    NumPy's default_rng(seed) in the order of `shapes`."""
    rng = np.random.default_rng(seed)
    sd = {}
    for name, shape in shapes.items():
        layer = name.rsplit(".", 1)[0]
        if name.endswith(".bias") or layer.startswith("score"):
            sd[name] = np.zeros(shape, np.float32)
        elif layer.startswith("upscore"):
            sd[name] = bilinear_weights(shape[0], shape[2])
        else:
            fan_in = int(np.prod(shape[1:]))
            std = np.sqrt(2.0 / fan_in) / (PIXEL_STD if layer == "conv1_1" else 1.0)
            sd[name] = (rng.standard_normal(shape) * std).astype(np.float32)
    return sd
