"""Caffe .caffemodel files: the FCN reference's own nets and the VGG16 they
start from, read from protobuf's wire format (no Caffe, no protobuf package).

A .caffemodel is one serialized NetParameter. The reader knows these field
numbers of BVLC's caffe.proto and skips every other field by its wire type:

    NetParameter       layer = 100 (LayerParameter); layers = 2 (V1LayerParameter, nets before 2015)
    LayerParameter     name = 1, type = 2 (string), blobs = 7 (BlobProto)
    V1LayerParameter   name = 4, type = 5 (enum), blobs = 6; layer = 1 holds a V0 net's layer
    BlobProto          shape = 7 (BlobShape: dim = 1, packed int64); legacy dims num, channels,
                       height, width = 1..4; data = 5 (packed float); double_data = 8 (packed double)

As Caffe's Blob::FromProto does, the legacy 4-D dims win when any of them is
present, and double_data wins over data. Repeated numbers may come packed
or one field each (proto2 parsers accept both).

The file is memory-mapped and every blob is a read-only NumPy view into it:
a 545 MB VGG16 is never held twice. (Unpacked floats become a strided view
over the 5-byte field records.) Protobuf has no end marker, so a file cut
between two layers reads as a net without its last layers, which
load_model reports as missing.
"""

import json
import mmap
from pathlib import Path

import numpy as np

from ..colors import VOC_CLASSES
from ..files import WeightFileError
from ..geometry import AT_ONCE_SCALE, SKIPS, trunk_layer_names
from .state_dict import infer_variant, shapes_for, state_dict_problems
from .transplant import convolutionalize

VARINT, I64, LEN, GROUP_START, GROUP_END, I32 = 0, 1, 2, 3, 4, 5  # protobuf wire types

NET_LAYER, NET_LAYERS_V1 = 100, 2
LAYER_NAME, LAYER_BLOBS = 1, 7
V1_NAME, V1_BLOBS, V1_V0_LAYER = 4, 6, 1
BLOB_LEGACY_DIMS = (1, 2, 3, 4)  # num, channels, height, width
BLOB_DATA, BLOB_SHAPE, BLOB_DOUBLE_DATA = 5, 7, 8
SHAPE_DIM = 1


class _Corrupt(Exception):
    """Bytes that are not a protobuf message: what, and at which offset."""

    def __init__(self, what, offset):
        super().__init__(f"{what} at byte {offset}")


# ----------------------------------------------------------------- wire format
def _varint(buf, pos, end):
    """(value, position after it) of the base-128 varint at pos."""
    value = shift = 0
    start = pos
    while True:
        if pos >= end:
            raise _Corrupt("a number that runs past the end of its message (truncated?)", start)
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise _Corrupt("a varint longer than 10 bytes", start)


def _signed(v):
    """An int32 / int64 field's value: varints carry negatives as 64-bit two's complement."""
    return v - (1 << 64) if v >= 1 << 63 else v


MAX_GROUP_DEPTH = 100  # as protobuf's own parser limits nesting


def _field(buf, pos, end, depth=0):
    """(field number, wire type, value, position after the field) of the field at pos.
    value: the number (varint), the value's offset (fixed 32 / 64 bit), the
    (start, end) span (length-delimited), None (a group, skipped)."""
    at = pos
    key, pos = _varint(buf, pos, end)
    number, wire = key >> 3, key & 7
    if number == 0:
        raise _Corrupt("field number 0", at)
    if wire == VARINT:
        value, pos = _varint(buf, pos, end)
    elif wire in (I64, I32):
        value, pos = pos, pos + (8 if wire == I64 else 4)
    elif wire == LEN:
        n, pos = _varint(buf, pos, end)
        value, pos = (pos, pos + n), pos + n
    elif wire == GROUP_START:  # deprecated proto2 groups: skipped up to their matching end
        if depth >= MAX_GROUP_DEPTH:
            raise _Corrupt(f"groups nested deeper than {MAX_GROUP_DEPTH}", at)
        value = None
        while True:
            inner_at = pos
            inner, pos = _varint(buf, pos, end)
            if inner & 7 == GROUP_END:
                if inner >> 3 != number:
                    raise _Corrupt(f"a group {number} closed as {inner >> 3}", inner_at)
                break
            pos = _field(buf, inner_at, end, depth + 1)[3]
    else:
        raise _Corrupt(f"field {number} of wire type {wire}, which protobuf does not have here", at)
    if pos > end:
        raise _Corrupt(f"field {number} runs past the end of its message (truncated?)", at)
    return number, wire, value, pos


def _fields(buf, start, end):
    """Each (field number, wire type, value, field offset) of the message in buf[start:end]."""
    pos = start
    while pos < end:
        number, wire, value, after = _field(buf, pos, end)
        yield number, wire, value, pos
        pos = after


def _packed(buf, span, dtype):
    """A view of a packed repeated fixed-size field."""
    start, end = span
    itemsize = np.dtype(dtype).itemsize
    if (end - start) % itemsize:
        raise _Corrupt(f"packed {np.dtype(dtype).name} data of {end - start} bytes", start)
    return np.frombuffer(buf, dtype, count=(end - start) // itemsize, offset=start)


def _unpacked_run(buf, at, end, dtype):
    """(view, position after it) of the run of one-field-per-value records
    (a 1-byte key, then the value) that starts with the key at `at`: a
    strided view, so a long run costs no Python loop and no copy."""
    stride = 1 + np.dtype(dtype).itemsize
    keys = np.ndarray(((end - at) // stride,), np.uint8, buffer=buf, offset=at, strides=(stride,))
    same = keys == buf[at]
    n = len(same) if same.all() else int(np.argmin(same))
    return np.ndarray((n,), dtype, buffer=buf, offset=at + 1, strides=(stride,)), at + n * stride


def _joined(pieces, dtype):
    if len(pieces) == 1:
        return pieces[0]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype)


# ----------------------------------------------------------------- messages
def _blob_shape(buf, start, end):
    dims = []
    for number, wire, value, at in _fields(buf, start, end):
        if number == SHAPE_DIM and wire == VARINT:
            dims.append(_signed(value))
        elif number == SHAPE_DIM and wire == LEN:
            pos, stop = value
            while pos < stop:
                d, pos = _varint(buf, pos, stop)
                dims.append(_signed(d))
    return dims


def _blob(buf, start, end, where):
    """A BlobProto's values as an array of its shape (a view into buf)."""
    legacy, shape, data, double = {}, [], [], []
    pos = start
    while pos < end:
        number, wire, value, after = _field(buf, pos, end)
        if number in BLOB_LEGACY_DIMS and wire == VARINT:
            legacy[number] = _signed(value)
        elif number == BLOB_SHAPE and wire == LEN:
            shape = _blob_shape(buf, *value)
        elif number in (BLOB_DATA, BLOB_DOUBLE_DATA):
            dtype, fixed, out = ("<f4", I32, data) if number == BLOB_DATA else ("<f8", I64, double)
            if wire == LEN:
                out.append(_packed(buf, value, dtype))
            elif wire == fixed and buf[pos] == number << 3 | wire:  # unpacked: one value per field, a 1-byte key
                piece, after = _unpacked_run(buf, pos, end, dtype)
                out.append(piece)
            elif wire == fixed:  # the same with a key written in more bytes than it needs
                out.append(np.frombuffer(buf, dtype, count=1, offset=value))
        pos = after
    if legacy:  # Caffe's unset legacy dims are 0
        shape = [legacy.get(n, 0) for n in BLOB_LEGACY_DIMS]
    values = _joined(double, "<f8") if double else _joined(data, "<f4")
    if any(d < 0 for d in shape) or values.size != int(np.prod(shape)):
        raise WeightFileError(f"{where} holds {values.size} values for its shape {tuple(shape)}")
    return values.reshape(shape)


def _layer(buf, start, end, v1, path):
    """(name, [blob arrays]) of a LayerParameter (or V1LayerParameter)."""
    name_field, blobs_field = (V1_NAME, V1_BLOBS) if v1 else (LAYER_NAME, LAYER_BLOBS)
    name, spans = None, []
    for number, wire, value, at in _fields(buf, start, end):
        if wire != LEN:
            continue
        if number == name_field:
            try:
                name = bytes(buf[value[0]:value[1]]).decode("utf-8")
            except UnicodeDecodeError:
                raise _Corrupt("a layer name that is not UTF-8", at) from None
        elif number == blobs_field:
            spans.append(value)
        elif v1 and number == V1_V0_LAYER:
            raise WeightFileError(f"{path} is a V0 Caffe net (from before 2014); upgrade it with Caffe's "
                                  "upgrade_net_proto_binary first")
    if name is None:
        raise _Corrupt("a layer without a name", start)
    return name, [_blob(buf, a, b, f"{path}: layer {name!r} blob {i}") for i, (a, b) in enumerate(spans)]


def read_caffemodel(path):
    """{layer name: [blob arrays]} of a .caffemodel, in the file's layer order.

    V2 (`layer`) and V1 (`layers`) nets; layers without blobs map to [].
    Arrays have the blob's shape (the legacy 4-D one where the file has it)
    and dtype (float32; float64 for double_data), and are read-only views
    into the memory-mapped file. WeightFileError names the file if it is
    truncated or not a Caffe net."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Caffe model not found: {path}")
    with open(path, "rb") as f:
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file
            raise WeightFileError(f"{path}: empty file, not a Caffe model") from None
    layers = {}
    try:
        for number, wire, value, at in _fields(buf, 0, len(buf)):
            if number in (NET_LAYER, NET_LAYERS_V1) and wire == LEN:
                name, blobs = _layer(buf, *value, v1=number == NET_LAYERS_V1, path=path)
                if layers.get(name) and blobs:
                    raise WeightFileError(f"{path}: two layers named {name!r} hold blobs")
                if blobs or name not in layers:
                    layers[name] = blobs
    except _Corrupt as e:
        raise WeightFileError(f"{path}: not a Caffe model, or truncated: {e}") from None
    if not layers:
        raise WeightFileError(f"{path}: holds no Caffe layers (not a .caffemodel?)")
    return layers


# ----------------------------------------------------------------- to an FCN
def _trailing(a, ndim):
    """`a` without the leading 1-dims that legacy 4-D blobs add (a bias: 1 x 1 x 1 x N)."""
    lead = a.ndim - ndim
    return a.reshape(a.shape[lead:]) if lead > 0 and all(d == 1 for d in a.shape[:lead]) else a


RELEASE_EVERY = 1 << 25  # bytes of the mapped file copied between two hand-backs of its pages


def _owned(view):
    """A float32 copy of a blob's view into the mapped file. The file pages
    it has read are handed back as it goes (MADV_DONTNEED: they are clean,
    and read from the file again if touched), so loading a model costs
    about the file's size in memory, not the mapped file plus the copy."""
    src = view.reshape(-1)
    out = np.empty(view.shape, np.float32)
    dst = out.reshape(-1)
    mapping = src
    while isinstance(mapping, np.ndarray):
        mapping = mapping.base
    mapping = mapping.obj if isinstance(mapping, memoryview) else mapping
    release = isinstance(mapping, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED")
    stride = src.strides[0] if src.size else 1
    if release:
        first = src.ctypes.data - np.frombuffer(mapping, np.uint8).ctypes.data  # the view's offset in the file
    step = max(1, RELEASE_EVERY // stride)
    for a in range(0, src.size, step):
        b = min(a + step, src.size)
        dst[a:b] = src[a:b]
        if release:
            start = (first + a * stride) // mmap.PAGESIZE * mmap.PAGESIZE
            mapping.madvise(mmap.MADV_DONTNEED, start, first + b * stride - start)
    return out


def _params(layers, names, matrices=()):
    """{name.weight, name.bias} from blob 0 and blob 1 of each named layer that
    holds blobs: float32 copies (a model owns its weights), biases 1-D,
    the weights of `matrices` (InnerProduct layers) 2-D, others as stored;
    a third blob is kept as name.blob2 (to be reported)."""
    out = {}
    for name in names:
        for i, blob in enumerate(layers.get(name, ())):
            key = f"{name}.{('weight', 'bias')[i]}" if i < 2 else f"{name}.blob{i}"
            ndim = 1 if i == 1 else 2 if name in matrices else blob.ndim
            out[key] = _owned(_trailing(blob, ndim))
    return out


def _misfits(path, params, shapes, what):
    """One WeightFileError listing every layer of `params` that does not fit `shapes`, by layer name."""
    missing, unknown, wrong = state_dict_problems(params, shapes)
    held = {key.rsplit(".", 1)[0] for key in params}
    expected = {key.rsplit(".", 1)[0] for key in shapes}
    lines = []
    for key in missing:
        layer, part = key.rsplit(".", 1)
        lines.append(f"{layer}: no {part} blob" if layer in held else f"{layer}: missing")
    for key, got, want in wrong:
        layer, part = key.rsplit(".", 1)
        lines.append(f"{layer}: {part} is {'x'.join(map(str, got)) or 'a scalar'}, expected {'x'.join(map(str, want))}")
    for key in unknown:
        layer, part = key.rsplit(".", 1)
        lines.append(f"{layer}: an extra blob ({part})" if layer in expected else f"{layer}: not a layer of {what}")
    if lines:
        raise WeightFileError(f"{path} does not fit {what}: " + "; ".join(dict.fromkeys(lines)))


def _is_classifier(layers):
    """Whether fc6 is an InnerProduct (VGG16 as trained on ImageNet), not a convolution (an FCN)."""
    blobs = layers.get("fc6")
    return bool(blobs) and _trailing(blobs[0], 2).ndim == 2


def load(path):
    """(state dict, metadata, layout) of a .caffemodel, as weights.read gives them:
    'vgg16' (VGG_ILSVRC_16_layers: fc6 / fc7 InnerProduct, convolutionalized
    here; fc8 dropped) or 'fcn' (the reference's FCN nets: layer names map
    to ours; scale_pool4 / scale_pool3 Scale layers mean at-once)."""
    layers = read_caffemodel(path)
    with_blobs = [name for name, blobs in layers.items() if blobs]
    if _is_classifier(layers):
        trunk = [*trunk_layer_names(), "fc6", "fc7"]
        params = _params(layers, [n for n in with_blobs if n != "fc8"], matrices=("fc6", "fc7"))
        shapes = {k: v for k, v in shapes_for("32s", 1, params).items() if k.rsplit(".", 1)[0] in trunk}
        for name in ("fc6", "fc7"):  # InnerProduct weights: the convolutions' OUT x (everything else)
            out, *rest = shapes[f"{name}.weight"]
            shapes[f"{name}.weight"] = (out, int(np.prod(rest)))
        _misfits(path, params, shapes, "VGG16")
        return convolutionalize(params), {}, "vgg16"
    scales = {f"scale_{skip[len('score_'):]}": skip for skip in AT_ONCE_SCALE}
    params = _params(layers, [n for n in with_blobs if n not in scales])
    try:
        variant = infer_variant(params)
    except WeightFileError as e:
        raise WeightFileError(f"{path} is neither an FCN nor VGG16 (fc6 is no InnerProduct): {e}") from None
    num_classes = params["score_fr.weight"].shape[0] if "score_fr.weight" in params else 21
    what = f"FCN-{variant} ({num_classes} classes)"
    _misfits(path, params, shapes_for(variant, num_classes, params), what)
    at_once = any(name in layers for name in scales)
    if at_once:
        _check_scales(path, layers, scales, variant, what)
    meta = {"at_once": str(at_once)}
    if path.stem.endswith("-pascal") and num_classes == len(VOC_CLASSES):
        meta["classes"] = json.dumps(VOC_CLASSES)
    return params, meta, "fcn"


def _check_scales(path, layers, scales, variant, what):
    """An at-once net scales each skip input by the constant FCN applies (AT_ONCE_SCALE)."""
    lines = []
    for name, skip in scales.items():
        if (skip in SKIPS[variant]) != (name in layers):
            lines.append(f"{name}: {'missing' if name not in layers else 'not a layer of ' + what}"
                         " (an at-once net scales every pool it scores)")
        for blob in layers.get(name, ()):
            if not np.all(blob == np.float32(AT_ONCE_SCALE[skip])):
                lines.append(f"{name}: scales by {np.unique(blob)[:4].tolist()}, not by the at-once "
                             f"{AT_ONCE_SCALE[skip]} fcn_cuda applies")
    if lines:
        raise WeightFileError(f"{path} does not fit {what}, at once: " + "; ".join(lines))
