"""FCN's layer geometry: the VGG16 trunk and the three heads as layer lists,
and where each layer's cells sit in the input image (`Geometry`), from which
the crop offsets of the heads follow (`head_geometry`) rather than being
typed in. fcn_cuda.model runs these layers; tiled inference works out its
halos from them."""

from dataclasses import dataclass

VARIANTS = ("32s", "16s", "8s")
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
CONV1_PAD = 100  # makes every later crop valid for any input size

# The upsampling layers of each head: (name, kernel, stride).
HEADS = {
    "32s": (("upscore", 64, 32),),
    "16s": (("upscore2", 4, 2), ("upscore16", 32, 16)),
    "8s": (("upscore2", 4, 2), ("upscore_pool4", 4, 2), ("upscore8", 16, 8)),
}
SKIPS = {"32s": (), "16s": ("score_pool4",), "8s": ("score_pool4", "score_pool3")}
AT_ONCE_SCALE = {"score_pool4": 0.01, "score_pool3": 0.0001}


def trunk_layer_names():
    """conv1_1 ... conv5_3, the trunk's convolutions in order."""
    return [f"conv{b + 1}_{i + 1}" for b, block in enumerate(VGG16_BLOCKS) for i in range(len(block))]


@dataclass(frozen=True)
class Geometry:
    """Where a layer's cell x sits in input-image coordinates: scale * x + shift."""

    scale: float = 1.0
    shift: float = 0.0

    def conv(self, k, s=1, p=0):
        # output x covers input s*x - p .. s*x - p + k - 1, centred at s*x - p + (k-1)/2
        return Geometry(self.scale * s, self.shift + self.scale * ((k - 1) / 2 - p))

    def deconv(self, k, s):
        # output u gathers input x with u = s*x + (k-1)/2  ->  x = (u - (k-1)/2) / s
        return Geometry(self.scale / s, self.shift - self.scale * (k - 1) / 2 / s)

    def offset_into(self, other):
        """Crop offset c with other(u + c) == self(u): both grids must have one scale."""
        assert abs(self.scale - other.scale) < 1e-9, "crop between grids of different scale"
        c = (self.shift - other.shift) / other.scale
        assert abs(c - round(c)) < 1e-9 and c >= 0, f"crop offset {c} is not a whole cell"
        return int(round(c))


def trunk_layers(conv1_pad=CONV1_PAD):
    """The trunk as FCN.score_fr runs it, in order: (kind, name, kernel, stride, pad)
    with kind 'conv' (ReLU after all but score_fr) or 'pool' (max, ceil mode)."""
    layers = []
    for b, block in enumerate(VGG16_BLOCKS):
        layers += [("conv", f"conv{b + 1}_{i + 1}", 3, 1, conv1_pad if b == i == 0 else 1) for i in range(len(block))]
        layers.append(("pool", f"pool{b + 1}", 2, 2, 0))
    return layers + [("conv", "fc6", 7, 1, 0), ("conv", "fc7", 1, 1, 0), ("conv", "score_fr", 1, 1, 0)]


def head_geometry(variant, conv1_pad=CONV1_PAD):
    """Crop offsets of a head, from the layer geometry: {layer: offset}."""
    g = Geometry()
    pools = {}
    for kind, name, k, s, p in trunk_layers(conv1_pad):
        g = g.conv(k, s, p)
        if kind == "pool":
            pools[int(name[4:])] = g
        if name == "fc6":
            break
    offsets = {}
    if variant == "32s":
        offsets["upscore"] = Geometry().offset_into(g.deconv(64, 32))
        return offsets
    g = g.deconv(4, 2)
    offsets["score_pool4"] = g.offset_into(pools[4])
    if variant == "16s":
        offsets["upscore16"] = Geometry().offset_into(g.deconv(32, 16))
        return offsets
    g = g.deconv(4, 2)
    offsets["score_pool3"] = g.offset_into(pools[3])
    offsets["upscore8"] = Geometry().offset_into(g.deconv(16, 8))
    return offsets
