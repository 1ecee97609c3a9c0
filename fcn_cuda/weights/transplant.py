"""The reference's transplant: VGG16's fully connected layers made
convolutions, and an FCN's state dict grown from VGG16's."""

import numpy as np

from .. import _validate as V
from ..geometry import VARIANTS
from .state_dict import as_numpy, fresh_state_dict, param_shapes, trunk_widths


def convolutionalize(sd):
    """VGG16's fully connected fc6 / fc7 (OUT x IN matrices; fc6 reads pool5
    flattened as C x 7 x 7) reshaped into the convolutions FCN runs: fc6
    OUT x C x 7 x 7, fc7 OUT x IN x 1 x 1, C = conv5_3's outputs (the
    reference's surgery.transplant). A new dict; ValueError names a layer
    that does not fit."""
    c5 = np.shape(sd["conv5_3.weight"])[0]
    w6, w7 = as_numpy(sd["fc6.weight"]), as_numpy(sd["fc7.weight"])
    if w6.ndim != 2 or w6.shape[1] != c5 * 49:
        raise ValueError(f"fc6.weight is {w6.shape}, not OUT x {c5 * 49} (conv5_3's {c5} channels x 7 x 7)")
    if w7.ndim != 2 or w7.shape[1] != w6.shape[0]:
        raise ValueError(f"fc7.weight is {w7.shape}, not OUT x {w6.shape[0]} (fc6's outputs)")
    return {**sd, "fc6.weight": w6.reshape(w6.shape[0], c5, 7, 7), "fc7.weight": w7.reshape(*w7.shape, 1, 1)}


def transplant(vgg, variant="32s", num_classes=21):
    """The state dict of an FCN `variant` starting from VGG16 (`vgg`: the
    trunk and fc6 / fc7 under our names, convolutionalized): the
    reference's transplant, with score layers zero and upsampling bilinear.
    Widths come from `vgg`, so a reduced-width VGG16 gives a reduced FCN."""
    V.choice(variant, "variant", VARIANTS)
    num_classes = V.integer(num_classes, "num_classes", minimum=1)
    shapes = param_shapes(variant, num_classes, trunk_widths(vgg), np.shape(vgg["fc6.weight"])[0])
    # Only what vgg lacks is made fresh (score layers zero, upsampling bilinear): drawing the whole model to
    # overwrite it would cost seconds and a gigabyte at VGG16 width (fc6 alone is 103M weights).
    fresh = fresh_state_dict({k: s for k, s in shapes.items() if k not in vgg}, seed=0)
    return {**{k: vgg[k] if k in vgg else fresh[k] for k in shapes}, **vgg}
