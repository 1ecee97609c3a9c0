"""FCN-32s / 16s / 8s on a VGG16 trunk, as in the Caffe reference: the graph.

The forward pass is a sequence of kernel calls (fcn_cuda.ops); there is no
autograd. Channel counts are read from the weights, so a reduced-width model
(used by the tests and the bundled demo model) runs the same code as VGG16.
The layers and their crop offsets are fcn_cuda.geometry's; the parameter
shapes, the state-dict checks and the fresh initialisation are
fcn_cuda.weights.state_dict's.
"""

import json
import math
import warnings

import numpy as np

from . import _backend
from . import _validate as V
from . import ops
from .geometry import AT_ONCE_SCALE, CONV1_PAD, HEADS, SKIPS, VARIANTS, VGG16_BLOCKS, head_geometry, trunk_layers
from .ops.conv2d import conv2d_auto_splits, conv2d_default_variant
from .ops.pool import pool_size
from .weights.state_dict import checked_class_names, check_state_dict, fresh_state_dict, param_shapes, shapes_for

DROPOUT_P = 0.5


def dropout_key(dropout, layer, h):
    """(seed, step, offset) of ops.dropout for one dropout layer on
    activations h: fc6 and fc7 draw different masks. `dropout` is (seed,
    step), or (seed, step, first) for a share of a larger batch whose first
    image sits at place `first` in it (a data-parallel rank's): each image's
    mask is keyed by its place in the batch, so the shares draw the masks of
    the whole batch."""
    seed, step, *first = dropout
    return seed, (2 * step + layer) % 2**32, (first[0] if first else 0) * math.prod(h.shape[1:])  # any array type


def score_bias_name(variant):
    """The bias added last before the final upsample: score_pool3's (8s),
    score_pool4's (16s). A constant added there reaches every output score
    unchanged through a bilinear upsample, because the crop keeps only
    pixels that two taps reach in each direction (offset 31 >= stride 8, 27
    >= 16, and the window ends inside; true at every image size). FCN-32s
    has none: its crop starts at 19 < 32, where one tap of weight < 1 does."""
    if not SKIPS[variant]:
        raise ValueError("FCN-32s has no bias whose constant reaches every output score unchanged "
                         "(its crop offset 19 is below the upsampling stride 32)")
    return f"{SKIPS[variant][-1]}.bias"


def passes_constants(w, stride):
    """True when a per-channel deconvolution weight (C x C x k x k) maps a
    constant map to the same constant away from its border: each channel's
    kernel, split into its stride x stride phases, sums to 1 in every phase.
    Bilinear kernels do (fcn_cuda.bilinear.bilinear_weights)."""
    w = np.asarray(w, np.float64)
    if not _is_per_channel(w) or w.shape[2] % stride or w.shape[3] % stride:
        return False
    kernels = w[np.arange(w.shape[0]), np.arange(w.shape[0])]  # C x k x k
    c, k, kw = kernels.shape
    phases = kernels.reshape(c, k // stride, stride, kw // stride, stride).sum(axis=(1, 3))
    return bool(np.allclose(phases, 1.0, rtol=0, atol=1e-6))


def _is_per_channel(w, xp=np):
    """True when a C x C x k x k deconvolution weight is zero off the diagonal
    (and, as array_equal compares, NaN-free on it). xp: w's array module;
    on a GPU only the answer comes back to the host, not the weights."""
    if w.shape[0] != w.shape[1]:
        return False
    diagonal = xp.zeros_like(w)
    idx = xp.arange(w.shape[0])
    diagonal[idx, idx] = w[idx, idx]
    return bool(xp.array_equal(w, diagonal))


class _SkipsOnly(dict):
    """The activation store of a plain forward: keeps what the head reads
    (pool3, pool4), so every other buffer is freed as soon as it is consumed."""

    KEPT = ("pool3", "pool4")

    def __setitem__(self, name, value):
        if name in self.KEPT:
            super().__setitem__(name, value)


def _stores(store, name):
    return not isinstance(store, _SkipsOnly) or name in _SkipsOnly.KEPT


# The layers whose weights FCN.use_bf16_weights can hold in bf16: fc6 and
# fc7 stream the most weight bytes per output pixel (docs/performance.md, rung 8).
BF16_WEIGHT_LAYERS = ("fc6", "fc7")

# Inference runs the last conv of each block, its ReLU and the pool as one
# kernel (ops.conv2d_relu_maxpool) where conv2d's default variant has that
# epilogue; False forces the separate ops (the tests compare both).
FUSE_POOL = True


class FCN:
    """An FCN with its parameters on the active backend.

    FCN(variant='8s', num_classes=21) builds VGG16 width with a fresh
    initialization: trunk He-normal, score layers zero, upsampling bilinear
    (as the reference starts). `widths` / `fc` give a reduced-width model.
    `at_once=True` scales pool4 by 0.01 and pool3 by 1e-4 (FCN-8s at-once).
    `class_names` (one name per class) travel with the weights in save().
    """

    def __init__(self, variant="8s", num_classes=21, *, widths=VGG16_BLOCKS, fc=4096, at_once=False, seed=0,
                 state_dict=None, class_names=None):
        V.choice(variant, "variant", VARIANTS)
        num_classes = V.integer(num_classes, "num_classes", minimum=1)
        class_names = checked_class_names(class_names, num_classes)
        self.variant = variant
        self.num_classes = num_classes
        self.class_names = class_names
        self.at_once = bool(at_once)
        self.conv1_pad = CONV1_PAD
        self.params = {}
        self.bf16_layers = ()  # use_bf16_weights
        self._bf16 = {}        # {layer: ops.Bf16Weights}, made from self.params
        if state_dict is None:
            state_dict = fresh_state_dict(param_shapes(variant, num_classes, widths, fc), seed)
        self.load_state_dict(state_dict)

    # -------------------------------------------------------------- weights
    def expected_shapes(self, state_dict):
        """The shapes this variant needs, with widths read from `state_dict`."""
        return shapes_for(self.variant, self.num_classes, state_dict)

    def load_state_dict(self, state_dict):
        """Replaces every parameter; one ValueError lists all missing, unknown and misshapen keys."""
        arrays = check_state_dict(state_dict, self.expected_shapes(state_dict))
        be = _backend.active()
        self.params = {k: be.xp.asarray(v) for k, v in arrays.items()}
        self._backend = be.name
        self._bf16 = {}  # made again from the new weights when inference next needs them
        # Decided once here, on the host copy: asking the op to detect
        # per-channel weights would cost a device sync on every forward.
        # (Weights changed in place need upsampling_changed().)
        self._choose_upsample_variants(arrays, np)

    def _choose_upsample_variants(self, weights, xp):
        self.upsample_variant = {k.rsplit(".", 1)[0]: ("bilinear" if _is_per_channel(v, xp) else "gather")
                                 for k, v in weights.items() if k.startswith("upscore")}

    def upsampling_changed(self):
        """Decides the upsampling variants again after the upscore weights
        changed in place (SGD with train_upsampling): on the device, where the
        weights are, so one bool per layer comes back instead of the model."""
        self._choose_upsample_variants(self.params, self._check_backend().xp)

    def shift_scores(self, offset):
        """Adds offset[c] to every output score of class c (to float
        rounding), by folding it into score_bias_name(variant): only the
        last, bilinear upsample lies between that bias and the output, and it
        passes constants through. Raises ValueError where that does not hold
        (not scores_shiftable: FCN-32s, a trained last upsample)."""
        offset = np.asarray(offset, np.float64)
        if offset.shape != (self.num_classes,) or not np.isfinite(offset).all():
            raise ValueError(f"offset must be {self.num_classes} finite numbers, one per class, got {offset!r}")
        bias = score_bias_name(self.variant)
        if not self.scores_shiftable():
            raise ValueError(f"{HEADS[self.variant][-1][0]} is not a bilinear upsampling, so a bias before it does "
                             "not shift the scores by a constant")
        be = self._check_backend()
        self.params[bias] = be.xp.asarray((be.to_numpy(self.params[bias]) + offset).astype(np.float32))

    def scores_shiftable(self):
        """Whether shift_scores can shift every score exactly: FCN-16s or 8s
        with a last upsample that passes constants (bilinear)."""
        name, _, stride = HEADS[self.variant][-1]
        be = self._check_backend()
        return self.variant != "32s" and passes_constants(be.to_numpy(self.params[f"{name}.weight"]), stride)

    def state_dict(self):
        """{name: float32 NumPy array}, in layer order."""
        be = self._check_backend()
        return {k: np.ascontiguousarray(be.to_numpy(v)) for k, v in self.params.items()}

    def save(self, path, **notes):
        """Writes the weights as safetensors, atomically (temp file + rename);
        `notes` (strings: how the weights were made) go into its metadata."""
        from .weights.safetensors import save

        meta = {**notes, "format": "fcn_cuda", "variant": self.variant, "num_classes": str(self.num_classes),
                "at_once": str(self.at_once)}
        if self.class_names:
            meta["classes"] = json.dumps(self.class_names)
        save(path, self.state_dict(), meta)

    def _check_backend(self):
        be = _backend.active()
        if be.name != self._backend:
            # Parameters follow the active backend: move them once.
            self.params = {k: be.xp.asarray(_backend.by_name(self._backend).to_numpy(v))
                           for k, v in self.params.items()}
            self._backend = be.name
            self._bf16 = {}
        return be

    def use_bf16_weights(self, layers=("fc6",)):
        """Inference runs `layers` (a name or names of BF16_WEIGHT_LAYERS:
        fc6, fc7) as ops.conv2d's bf16 default (mma_bf16 on a GPU, igemm_bf16
        on the host) on their weights rounded to bf16 once, here
        (ops.to_bf16_weights): half the weight bytes to stream,
        the lever for fc6 at batch 1 (docs/performance.md, rung 8). The
        other layers are unchanged; () turns the mode off. Returns the model.

        Accuracy: those layers then compute with bf16 operands (x and w
        rounded to nearest even, 8 significant bits) and fp32 accumulation,
        the numerical contract's bf16 tolerance (1e-2 relative error); the
        scores move by about that much at most, and labels change only where
        two classes nearly tie (tests/kernels/test_conv2d_bf16_weights.py).

        Training keeps fp32: a forward pass for a backward one (keep or
        dropout given: loss_and_grads, the Trainer) uses the fp32 weights and
        drops the bf16 copies, since SGD then updates the fp32 weights in
        place; the next inference rounds them again, as it does after
        load_state_dict or a backend switch. Weights changed in place by
        other means need use_bf16_weights called again.
        """
        names = (layers,) if isinstance(layers, str) else layers
        try:
            names = tuple(dict.fromkeys(names))
        except TypeError:
            raise TypeError(f"layers must be a layer name or names, got {type(layers).__name__}") from None
        for name in names:
            V.choice(name, "layers", BF16_WEIGHT_LAYERS)
        self._check_backend()
        self.bf16_layers = names
        self._bf16 = {name: ops.to_bf16_weights(self.params[f"{name}.weight"]) for name in names}
        return self

    def _fc_weight(self, name, training):
        """fc6 / fc7 / score_fr's weights for this pass: the bf16 copy where
        use_bf16_weights asked for it and the pass is inference."""
        if training or name not in self.bf16_layers:
            return self.params[f"{name}.weight"]
        if name not in self._bf16:
            self._bf16[name] = ops.to_bf16_weights(self.params[f"{name}.weight"])
        return self._bf16[name]

    def offsets(self):
        return head_geometry(self.variant, self.conv1_pad)

    def conv_plan(self, height, width, batch=1):
        """{conv layer: (variant, splits)}: what ops.conv2d picks by default
        for each trunk layer of a forward over batch x 3 x height x width
        (a bf16-weights layer: precision bf16's, mma_bf16 on a GPU and
        igemm_bf16 on the host). Both depend on the layer's
        shape, and a variant or split count sums in its own order, so a
        forward over a crop of an image (a tile) runs the whole image's plan
        to give its bits (fcn_cuda.tiling)."""
        be = self._check_backend()
        height = V.integer(height, "height", minimum=1)
        width = V.integer(width, "width", minimum=1)
        batch = V.integer(batch, "batch", minimum=1)
        h, w, plan = height, width, {}
        for kind, name, k, s, p in trunk_layers(self.conv1_pad):
            if kind == "pool":
                h, w = pool_size(h, k, s, True), pool_size(w, k, s, True)
                continue
            h, w = h + 2 * p - k + 1, w + 2 * p - k + 1
            out_c, in_c = self.params[f"{name}.weight"].shape[:2]
            m, crs = batch * max(h, 1) * max(w, 1), in_c * k * k
            variant = conv2d_default_variant(m, out_c, crs, be.name, "bf16" if name in self.bf16_layers else "fp32")
            plan[name] = variant, (conv2d_auto_splits(m, out_c, crs)
                                   if variant in ops.CONV2D_SPLIT_VARIANTS else 1)
        return plan

    # -------------------------------------------------------------- forward
    def __call__(self, x):
        return self.forward(x)

    def forward(self, x, keep=None, dropout=None, *, plan=None, region=None):
        """N x 3 x H x W preprocessed images -> N x C x H x W scores.

        `keep`, a dict, receives every activation the backward pass needs
        (fcn_cuda.backward.backward): layer outputs by name, pool argmax indices
        as "<pool>_idx". Without it only pool3 / pool4 are held, so every
        other buffer is freed as soon as the next layer has read it.
        `dropout`, a (seed, step) pair, applies the reference's training-time
        dropout (p = 0.5) after fc6 and fc7; None is inference.
        `plan` and `region`: as for labels (with a region, N x C x height x width).
        """
        be = self._check_backend()
        x = self._images(x, be)
        store = keep if keep is not None else _SkipsOnly()
        store["x"] = x
        score = self.score_fr(x, store, indices=keep is not None, dropout=dropout, plan=plan)
        top, left, height, width = self._region(region, x)
        return self.head(score, store, height, width, top, left)

    def labels(self, x, probs=False, *, plan=None, region=None):
        """N x 3 x H x W preprocessed images -> N x H x W int32 label map,
        equal to ops.argmax(self(x)) exactly; probs=True returns (labels,
        softmax(self(x)) over the classes).

        The last upsample, its crop and the argmax (and softmax) run as one
        kernel, ops.upsample_argmax, so the N x C x H x W scores are never
        stored. Upsampling weights that are not per-channel (a model loaded
        with trained upscore8) take the unfused sequence instead.

        plan: the trunk's conv variants (conv_plan; default: conv_plan of
        x's shape). region: (top, left, height, width), the part of the
        H x W output to compute (default: all of it); the last upsample
        then computes only that window (fcn_cuda.tiling's tiles).
        """
        be = self._check_backend()
        x = self._images(x, be)
        store = _SkipsOnly()
        score = self.fuse_skips(self.score_fr(x, store, plan=plan), store)
        w, stride, offset, variant = self._last_upsample()
        top, left, height, width = self._region(region, x)
        args = (score, w, stride, height, width, (offset + top, offset + left))
        if variant == "bilinear":
            return ops.upsample_argmax(*args, probs=probs, trusted=True)
        scores = ops.conv_transpose2d_window(*args, variant=variant, trusted=True)
        if probs:
            p, lab = ops.softmax_argmax(scores)
            return lab, p
        return ops.argmax(scores)

    @staticmethod
    def _region(region, x):
        """(top, left, height, width) of the output to compute, checked to lie within x's H x W."""
        h, w = x.shape[2], x.shape[3]
        if region is None:
            return 0, 0, h, w
        if not isinstance(region, (tuple, list)) or len(region) != 4:
            raise ValueError(f"region must be (top, left, height, width), got {region!r}")
        top, left, rh, rw = (V.integer(v, f"region[{i}]", minimum=1 if i > 1 else 0) for i, v in enumerate(region))
        if top + rh > h or left + rw > w:
            raise ValueError(f"region {tuple(region)} leaves the {h} x {w} output")
        return top, left, rh, rw

    @staticmethod
    def _images(x, be):
        x = V.array(x, "x", ndim=4, shape_hint="N x 3 x H x W", be=be)
        if x.shape[1] != 3:
            raise ValueError(f"x must have 3 channels (BGR, mean subtracted), got {x.shape[1]}")
        return x

    def score_fr(self, x, store, indices=False, dropout=None, plan=None):
        """The convolutionalized VGG16 trunk up to score_fr; activations land in `store`.
        fc6 / fc7 read their bf16 weights (use_bf16_weights) in inference
        only: a pass with indices or dropout feeds a backward one, in fp32.
        plan: {conv layer: (variant, splits)} (conv_plan; default: conv_plan
        of x's shape, what conv2d picks)."""
        p = self.params
        training = indices or dropout is not None
        if training:
            self._bf16 = {}  # the fp32 weights may change before the next inference
        if plan is None:
            plan = self.conv_plan(x.shape[2], x.shape[3], x.shape[0])
        if training:  # fp32 weights: conv2d's defaults for them
            plan = {**plan, **{name: (None, None) for name in self.bf16_layers}}
        h = x
        for b, block in enumerate(VGG16_BLOCKS):
            pooled = False
            for i in range(len(block)):
                name = f"conv{b + 1}_{i + 1}"
                pad = self.conv1_pad if name == "conv1_1" else 1
                w, bias = p[f"{name}.weight"], p[f"{name}.bias"]
                variant, splits = plan[name]
                # The block's last conv + ReLU + pool as one kernel when nothing
                # keeps the conv output or the pool indices (inference) and the
                # layer's variant is one of the fused kernel's, undivided: then
                # its bits are conv2d + max_pool2d's.
                fuse = (FUSE_POOL and i == len(block) - 1 and not indices and not _stores(store, name)
                        and variant in ops.CONV2D_RELU_MAXPOOL_VARIANTS and splits == 1)
                if fuse:
                    h = ops.conv2d_relu_maxpool(h, w, bias, padding=pad, variant=variant)
                    pooled = True
                else:
                    h = ops.conv2d(h, w, bias, padding=pad, relu=True, variant=variant, splits=splits)
                    store[name] = h
            if indices:
                h, store[f"pool{b + 1}_idx"] = ops.max_pool2d(h, 2, 2, ceil_mode=True, return_indices=True)
            elif not pooled:
                h = ops.max_pool2d(h, 2, 2, ceil_mode=True)
            store[f"pool{b + 1}"] = h
        if h.shape[2] < 7 or h.shape[3] < 7:  # only when conv1_pad is lowered from 100
            raise ValueError(f"input {x.shape[2]}x{x.shape[3]} is too small for fc6's 7x7 window")
        for layer, (name, relu) in enumerate((("fc6", True), ("fc7", True), ("score_fr", False))):
            variant, splits = plan[name]
            h = ops.conv2d(h, self._fc_weight(name, training), p[f"{name}.bias"], relu=relu, variant=variant,
                           splits=splits)
            store[name] = h
            if dropout is not None and relu:
                h = ops.dropout(h, DROPOUT_P, *dropout_key(dropout, layer, h))
                store[f"{name}_drop"] = h
        return h

    def head(self, score, store, height, width, top=0, left=0):
        """Upsampling and skip fusion from score_fr to the H x W score map
        (its height x width window at (top, left), when given)."""
        w, stride, offset, variant = self._last_upsample()
        return ops.conv_transpose2d_window(self.fuse_skips(score, store), w, stride, height, width,
                                           (offset + top, offset + left), variant=variant, trusted=True)

    def _last_upsample(self):
        """(weight, stride, crop offset, variant) of the head's last upsample."""
        name, _, stride = HEADS[self.variant][-1]
        return self.params[f"{name}.weight"], stride, self.offsets()[name], self.upsample_variant[name]

    def fuse_skips(self, score, store):
        """The head up to its last upsample: score_fr upsampled by 2 and
        summed with the scored pool4 (16s, 8s), again with pool3 (8s). The
        coarse score map (score_fr itself for 32s)."""
        p = self.params
        off = self.offsets()
        layers = HEADS[self.variant]
        for (name, _, stride), skip in zip(layers[:-1], SKIPS[self.variant]):
            up = ops.conv_transpose2d(score, p[f"{name}.weight"], stride=stride,
                                      variant=self.upsample_variant[name], trusted=True)
            pool = store["pool4" if skip == "score_pool4" else "pool3"]
            scale = AT_ONCE_SCALE[skip] if self.at_once else 1.0
            score = ops.score_crop_add(up, pool, p[f"{skip}.weight"], p[f"{skip}.bias"], off[skip], scale=scale)
            store[name] = up
            store[f"fuse_{skip[len('score_'):]}"] = score
        return score

    def num_params(self):
        return int(sum(v.size for v in self.params.values()))

    def __repr__(self):
        bf16 = f", bf16_layers={self.bf16_layers}" if self.bf16_layers else ""
        return (f"FCN(variant={self.variant!r}, num_classes={self.num_classes}, "
                f"params={self.num_params():,}, backend={self._backend!r}{bf16})")


def class_prior(class_weights):
    """log w_c per class (0 where w_c = 0): how far a loss that weights class
    c by w_c lifts class c's scores. The weighted loss is least where
    softmax(scores)_c = w_c p_c / sum_k w_k p_k, p the true class
    frequencies, so scores trained under it exceed an unweighted model's by
    log w_c plus a constant. Weights buy recall of rare classes during
    training but, kept at inference, paint their edges over the background;
    FCN.shift_scores(-class_prior(w)) takes them back out (logit
    adjustment). A class of weight 0 never learned its scores and keeps them."""
    w = np.asarray(class_weights, np.float64)
    return np.log(np.where(w > 0, w, 1.0))


def deployed(model, class_weights):
    """The model a run trained with `class_weights` is used as: a copy with
    the class prior removed (class_prior), or `model` itself when the loss
    was unweighted, or no bias shifts the scores exactly (FCN-32s, a trained
    last upsample: FCN.shift_scores), which it warns of."""
    if class_weights is None:
        return model
    if not model.scores_shiftable():
        warnings.warn(f"FCN-{model.variant} trained with class_weights keeps their prior (log w) in its scores, "
                      "which favours the weighted classes: no bias reaches every score of "
                      + ("FCN-32s" if model.variant == "32s" else "a trained last upsample")
                      + " unchanged (FCN.shift_scores)", stacklevel=2)
        return model
    out = FCN(model.variant, model.num_classes, at_once=model.at_once, state_dict=model.state_dict(),
              class_names=model.class_names)
    out.shift_scores(-class_prior(class_weights))
    return out
