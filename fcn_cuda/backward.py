"""The backward pass of FCN, written out by hand: every step a kernel.

`loss_and_grads(model, x, labels)` runs the training-mode forward (keeping
the activations and pool indices), the softmax cross-entropy loss kernel,
and then the layers in reverse:

  final upsample (window)  crop_backward into the full deconvolution output,
                           then conv_transpose2d_grad_input / _grad_weight
  skip fusions             score_crop_add_backward (the fused 1x1 score conv
                           on the cropped window) and the deconvolutions
  score_fr, fc7, fc6       conv2d_grad_input / conv2d_grad_weight with the
                           ReLU mask fused, dropout_backward (same Philox mask)
  conv5_3 ... conv1_1      the same, max_pool2d_backward from the saved
                           indices, and the skip gradients added at pool3/pool4
"""

from . import ops
from .geometry import AT_ONCE_SCALE, HEADS, SKIPS, VGG16_BLOCKS
from .model import DROPOUT_P, dropout_key


def _conv_layers(model):
    """[(name, input key, padding)] of the trunk, in forward order."""
    layers, prev = [], "x"
    for b, block in enumerate(VGG16_BLOCKS):
        for i in range(len(block)):
            name = f"conv{b + 1}_{i + 1}"
            layers.append((name, prev, model.conv1_pad if name == "conv1_1" else 1))
            prev = name
        prev = f"pool{b + 1}"
    return layers


def backward(model, keep, grad_scores, dropout=None):
    """{param name: gradient} from the gradient of the scores, given the
    activations a training-mode forward left in `keep`."""
    p = model.params
    grads = {}
    off = model.offsets()
    layers, skips = HEADS[model.variant], SKIPS[model.variant]
    fused = ["score_fr"] + [f"fuse_{s[len('score_'):]}" for s in skips]  # input of each upsampling

    # The last upsampling computed only the kept window of its output.
    name, k, s = layers[-1]
    src = keep[fused[-1]]
    n, c, h, w = src.shape
    full = ops.crop_backward(grad_scores, (n, c, (h - 1) * s + k, (w - 1) * s + k), off[name])
    grads[f"{name}.weight"] = ops.conv_transpose2d_grad_weight(src, full, k, s, 0)
    g = ops.conv_transpose2d_grad_input(full, p[f"{name}.weight"], s, 0, src.shape)
    del full

    pool_grads = {}
    for (name, k, s), skip, src_key in reversed(list(zip(layers[:-1], skips, fused[:-1]))):
        pool = "pool4" if skip == "score_pool4" else "pool3"
        scale = AT_ONCE_SCALE[skip] if model.at_once else 1.0
        dfeat, grads[f"{skip}.weight"], grads[f"{skip}.bias"] = ops.score_crop_add_backward(
            g, keep[pool], p[f"{skip}.weight"], off[skip], scale)
        pool_grads[pool] = dfeat
        src = keep[src_key]
        grads[f"{name}.weight"] = ops.conv_transpose2d_grad_weight(src, g, k, s, 0)
        g = ops.conv_transpose2d_grad_input(g, p[f"{name}.weight"], s, 0, src.shape)

    # g is now the gradient of score_fr's output. score_fr, fc7, fc6: 1x1,
    # 1x1 and 7x7 convolutions; fc7 and fc6 are followed by ReLU (+ dropout).
    fc = [("score_fr", "fc7", 1, False), ("fc7", "fc6", 1, True), ("fc6", "pool5", 7, True)]
    for name, src_key, ksize, relu in fc:
        src = keep[f"{src_key}_drop"] if dropout is not None and src_key in ("fc6", "fc7") else keep[src_key]
        if relu and dropout is not None:
            g = ops.dropout_backward(g, DROPOUT_P, *dropout_key(dropout, 0 if name == "fc6" else 1, g))
        mask = keep[name] if relu else None
        grads[f"{name}.weight"], grads[f"{name}.bias"] = ops.conv2d_grad_weight(src, g, ksize, relu_y=mask)
        g = ops.conv2d_grad_input(g, p[f"{name}.weight"], src.shape, relu_y=mask)

    # The trunk, block by block from pool5 down; g is the gradient of a pool output.
    convs = _conv_layers(model)
    for b in range(len(VGG16_BLOCKS), 0, -1):
        pool = f"pool{b}"
        if pool in pool_grads:
            g = ops.crop_add(g, pool_grads.pop(pool), 0)
        block = [layer for layer in convs if layer[0].startswith(f"conv{b}_")]
        g = ops.max_pool2d_backward(g, keep[f"{pool}_idx"], keep[block[-1][0]].shape)
        for name, src_key, pad in reversed(block):
            src, y = keep[src_key], keep[name]
            grads[f"{name}.weight"], grads[f"{name}.bias"] = ops.conv2d_grad_weight(src, g, 3, 1, pad, relu_y=y)
            if name != "conv1_1":
                g = ops.conv2d_grad_input(g, p[f"{name}.weight"], src.shape, 1, pad, relu_y=y)
    return {k: grads[k] for k in p}


def forward_loss(model, x, labels, dropout=None, normalize=False, class_weights=None, divisor=None):
    """The training-mode forward and the loss kernel: (scores, loss, d loss /
    d scores, kept activations), ready for `backward`. dropout: a (seed, step)
    key (model.dropout_key), or None for no dropout; divisor: the loss's
    (ops.softmax_cross_entropy), None for this batch's own."""
    keep = {}
    scores = model.forward(x, keep=keep, dropout=dropout)
    loss, grad = ops.softmax_cross_entropy(scores, labels, normalize=normalize, weight=class_weights, divisor=divisor)
    return scores, loss, grad, keep


def loss_and_grads(model, x, labels, dropout=False, normalize=False, seed=0, step=0, class_weights=None):
    """(loss, {param name: gradient}) for one batch, keyed like state_dict().

    x: N x 3 x H x W preprocessed images; labels: N x H x W int32 (255 =
    ignore). The loss is the reference's: softmax cross-entropy summed over
    valid pixels and divided by N (normalize=True: by the valid pixel count).
    class_weights (C numbers >= 0) weight each pixel's term by its class, as
    torch's cross_entropy(weight=); normalize then divides by their sum.
    dropout=True applies p = 0.5 after fc6 and fc7 with masks keyed by
    (seed, step), the same on every backend.
    """
    key = (seed, step) if dropout else None
    scores, loss, grad, keep = forward_loss(model, x, labels, key, normalize, class_weights)
    del scores
    return loss, backward(model, keep, grad, dropout=key)
