"""A small writer of Caffe .caffemodel files (protobuf wire format) and of
deploy prototxts, for the tests: FCN-shaped nets of any width, as V1 or V2
nets, with the encodings Caffe and protobuf allow (legacy 4-D dims,
double_data, unpacked repeated floats), unknown fields of every wire type,
and layers without blobs mixed in. Field numbers as in BVLC's caffe.proto
(fcn_cuda/weights/caffe.py lists them).
"""

import numpy as np

from fcn_cuda.model import AT_ONCE_SCALE, HEADS, SKIPS, VGG16_BLOCKS, head_geometry

VARINT, I64, LEN, GROUP_START, GROUP_END, I32 = 0, 1, 2, 3, 4, 5
V1_TYPES = {"Convolution": 4, "Deconvolution": 39, "InnerProduct": 14, "ReLU": 18, "Pooling": 17,  # caffe.proto enum
            "Dropout": 6, "Data": 5, "Eltwise": 25, "SoftmaxWithLoss": 21}  # V1 had no Crop, Scale: NONE (0)


def varint(n):
    n &= (1 << 64) - 1  # negatives as 64-bit two's complement, as protobuf writes int32 / int64
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def key(number, wire):
    return varint(number << 3 | wire)


def message(number, payload):
    return key(number, LEN) + varint(len(payload)) + payload


def string(number, text):
    return message(number, text.encode())


def number(field, value):
    return key(field, VARINT) + varint(value)


def unknown_fields():
    """One field of each wire type, with numbers caffe.proto's messages do not use, to be skipped."""
    group = key(900, GROUP_START) + number(1, 7) + key(2, GROUP_START) + key(2, GROUP_END) + key(900, GROUP_END)
    return (number(901, 300) + key(902, I64) + b"\x01" * 8 + key(903, I32) + b"\x02" * 4
            + message(904, b"\x08\x01") + group)


def shape(dims, packed=True):
    """A BlobShape message (field 7 of BlobProto); its dims packed or one field each."""
    body = message(1, b"".join(varint(d) for d in dims)) if packed else b"".join(number(1, d) for d in dims)
    return message(7, body)


def values(a, double=False, packed=True):
    """BlobProto's data (double_data with double): packed, or one field per value."""
    field, dtype, wire = (8, "<f8", I64) if double else (5, "<f4", I32)
    flat = np.asarray(a).astype(dtype).reshape(-1)
    if packed:
        return message(field, flat.tobytes())
    records = np.zeros(flat.size, [("key", "u1"), ("value", dtype)])
    records["key"], records["value"] = field << 3 | wire, flat
    return records.tobytes()


def blob(a, legacy=False, double=False, packed=True, shape_packed=True):
    """A BlobProto: a's shape (legacy num/channels/height/width, or BlobShape)
    and its values (data or double_data, packed or one field per value)."""
    a = np.asarray(a)
    if legacy:
        dims = (1,) * (4 - a.ndim) + a.shape
        head = b"".join(number(f, d) for f, d in zip((1, 2, 3, 4), dims))
    else:
        head = shape(a.shape, shape_packed)
    return head + values(a, double, packed)


def layer(name, kind, blobs=(), v1=False, bottom=(), top=()):
    """A LayerParameter (V1LayerParameter with v1) holding already-encoded blobs."""
    if v1:
        body = string(4, name) + number(5, V1_TYPES.get(kind, 0))
        body += b"".join(string(2, b) for b in bottom) + b"".join(string(3, t) for t in top)
        return message(2, body + unknown_fields() + b"".join(message(6, b) for b in blobs))
    body = string(1, name) + string(2, kind)
    body += b"".join(string(3, b) for b in bottom) + b"".join(string(4, t) for t in top)
    return message(100, body + unknown_fields() + b"".join(message(7, b) for b in blobs))


def net(layers, name="net"):
    return string(1, name) + unknown_fields() + b"".join(layers)


def fcn_layers(sd, v1=False, at_once=False, **blob_options):
    """The layers of the reference's FCN net for an fcn_cuda state dict: its
    parameters as blobs (weight, then bias) under the layer names, with the
    ReLU, pooling, dropout, crop, eltwise and loss layers (no blobs) between."""
    def params(name):
        return [blob(sd[f"{name}.{p}"], **blob_options) for p in ("weight", "bias") if f"{name}.{p}" in sd]

    out = [layer("data", "Data", v1=v1, top=("data",))]
    for b, block in enumerate(VGG16_BLOCKS):
        for i in range(len(block)):
            name = f"conv{b + 1}_{i + 1}"
            out += [layer(name, "Convolution", params(name), v1), layer(f"relu{b + 1}_{i + 1}", "ReLU", v1=v1)]
        out.append(layer(f"pool{b + 1}", "Pooling", v1=v1))
    for name in ("fc6", "fc7"):
        out += [layer(name, "Convolution", params(name), v1), layer(f"drop{name[2]}", "Dropout", v1=v1)]
    out.append(layer("score_fr", "Convolution", params("score_fr"), v1))
    variant = next(v for v in HEADS if f"{HEADS[v][-1][0]}.weight" in sd)
    for (up, _, _), skip in zip(HEADS[variant], (*SKIPS[variant], None)):
        out.append(layer(up, "Deconvolution", params(up), v1))
        if skip:
            pool = skip[len("score_"):]
            if at_once:
                scale = np.full(sd[f"{skip}.weight"].shape[1], AT_ONCE_SCALE[skip], np.float32)
                out.append(layer(f"scale_{pool}", "Scale", [blob(scale, **blob_options)], v1))
            out += [layer(skip, "Convolution", params(skip), v1), layer(f"{skip}c", "Crop", v1=v1),
                    layer(f"fuse_{pool}", "Eltwise", v1=v1)]
    return out + [layer("score", "Crop", v1=v1), layer("loss", "SoftmaxWithLoss", v1=v1)]


def vgg16_layers(sd, fc8_outputs=1000, seed=0):
    """VGG_ILSVRC_16_layers as the Model Zoo ships it: a V1 net with legacy
    dims, fc6 / fc7 / fc8 InnerProduct (weights 1 x 1 x OUT x IN)."""
    rng = np.random.default_rng(seed)
    out = []
    for b, block in enumerate(VGG16_BLOCKS):
        for i in range(len(block)):
            name = f"conv{b + 1}_{i + 1}"
            out += [layer(name, "Convolution", [blob(sd[f"{name}.{p}"], legacy=True) for p in ("weight", "bias")],
                          v1=True), layer(f"relu{b + 1}_{i + 1}", "ReLU", v1=True)]
        out.append(layer(f"pool{b + 1}", "Pooling", v1=True))
    fc = sd["fc7.weight"].shape[0]
    fc8 = {"fc8.weight": rng.standard_normal((fc8_outputs, fc)).astype(np.float32),
           "fc8.bias": rng.standard_normal(fc8_outputs).astype(np.float32)}
    for name in ("fc6", "fc7", "fc8"):
        w, bias = (sd.get(f"{name}.{p}", fc8.get(f"{name}.{p}")) for p in ("weight", "bias"))
        out += [layer(name, "InnerProduct", [blob(w.reshape(w.shape[0], -1), legacy=True), blob(bias, legacy=True)],
                      v1=True), layer(f"drop{name[2]}", "Dropout", v1=True)]
    return out


def fcn_prototxt(sd, size, at_once=False):
    """A deploy prototxt (V2 text format) of the FCN that `sd` holds, for
    OpenCV's Caffe importer: the reference's layers and crop offsets
    (fcn_cuda.model.head_geometry, which its own tests pin to the reference's
    numbers), input 1 x 3 x size."""
    def conv(name, bottom, out, k, pad=0, relu=True):
        text = (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
                f'convolution_param {{ num_output: {out} kernel_size: {k} pad: {pad} }} }}\n')
        if relu:
            text += f'layer {{ name: "relu_{name}" type: "ReLU" bottom: "{name}" top: "{name}" }}\n'
        return text

    def crop(name, bottom, like, offset):
        return (f'layer {{ name: "{name}" type: "Crop" bottom: "{bottom}" bottom: "{like}" top: "{name}" '
                f'crop_param {{ axis: 2 offset: {offset} }} }}\n')

    variant = next(v for v in HEADS if f"{HEADS[v][-1][0]}.weight" in sd)
    offsets = head_geometry(variant)
    c = sd["score_fr.weight"].shape[0]
    text = f'input: "data"\ninput_shape {{ dim: 1 dim: 3 dim: {size[0]} dim: {size[1]} }}\n'
    bottom = "data"
    for b, block in enumerate(VGG16_BLOCKS):
        for i in range(len(block)):
            name = f"conv{b + 1}_{i + 1}"
            text += conv(name, bottom, sd[f"{name}.weight"].shape[0], 3, 100 if b == i == 0 else 1)
            bottom = name
        text += (f'layer {{ name: "pool{b + 1}" type: "Pooling" bottom: "{bottom}" top: "pool{b + 1}" '
                 f'pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}\n')
        bottom = f"pool{b + 1}"
    text += conv("fc6", bottom, sd["fc6.weight"].shape[0], 7) + conv("fc7", "fc6", sd["fc7.weight"].shape[0], 1)
    text += conv("score_fr", "fc7", c, 1, relu=False)
    bottom = "score_fr"
    for (up, k, s), skip in zip(HEADS[variant], (*SKIPS[variant], None)):
        text += (f'layer {{ name: "{up}" type: "Deconvolution" bottom: "{bottom}" top: "{up}" '
                 f'convolution_param {{ num_output: {c} kernel_size: {k} stride: {s} bias_term: false }} }}\n')
        bottom = up
        if skip:
            pool = skip[len("score_"):]
            source = pool
            if at_once:
                text += (f'layer {{ name: "scale_{pool}" type: "Scale" bottom: "{pool}" top: "scale_{pool}" '
                         f'scale_param {{ bias_term: false }} }}\n')
                source = f"scale_{pool}"
            text += conv(skip, source, c, 1, relu=False) + crop(f"{skip}c", skip, up, offsets[skip])
            text += (f'layer {{ name: "fuse_{pool}" type: "Eltwise" bottom: "{up}" bottom: "{skip}c" '
                     f'top: "fuse_{pool}" eltwise_param {{ operation: SUM }} }}\n')
            bottom = f"fuse_{pool}"
    return text + crop("score", bottom, "data", offsets[HEADS[variant][-1][0]])
