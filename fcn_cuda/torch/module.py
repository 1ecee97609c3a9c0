"""FCN as an nn.Module whose forward is fcn_cuda's kernels (fcn_cuda.torch.functional)."""

import torch
from torch import nn

from .. import _validate as V
from ..geometry import AT_ONCE_SCALE, CONV1_PAD, HEADS, SKIPS, VARIANTS, VGG16_BLOCKS, head_geometry
from ..model import DROPOUT_P, dropout_key
from ..model import FCN as EngineFCN
from ..weights.state_dict import fresh_state_dict, param_shapes, trunk_widths
from .dispatch import check_tensors
from .functional import (conv2d, conv2d_relu_maxpool, conv_transpose2d, conv_transpose2d_window, dropout,
                         max_pool2d, score_crop_add, upsample_argmax)


class FCN(nn.Module):
    """FCN-32s / 16s / 8s as an nn.Module whose forward is fcn_cuda's kernels.

    Parameters carry the reference's names (conv1_1.weight ... fc6, fc7,
    score_fr, score_pool4, score_pool3, upscore*), held by nn.Conv2d /
    nn.ConvTranspose2d modules as in pytorch-fcn, so load_state_dict takes
    pytorch-fcn's state dicts and fcn_cuda's (FCN.from_model). A fresh model
    has fcn_cuda.FCN's initialisation for the same seed. The upsampling
    weights start frozen (requires_grad False, as the reference trains);
    requires_grad_(True) on them trains them through our kernels.

    forward(x): N x 3 x H x W float32 -> N x C x H x W scores, equal bit for
    bit to fcn_cuda.FCN's on the same weights. In training mode, dropout
    (p = 0.5 after fc6 and fc7, unless dropout=False) draws its masks from
    (dropout_seed, dropout_step), and each training forward advances
    dropout_step by one: a step of fcn_cuda's Trainer uses (its seed, its
    step), so the same sequence of batches gets the same masks. labels(x):
    the fused upsample + argmax head (upsample_argmax), as fcn_cuda.FCN.labels.
    """

    def __init__(self, variant="8s", num_classes=21, *, widths=VGG16_BLOCKS, fc=4096, at_once=False, seed=0,
                 dropout=True, dropout_seed=0):
        super().__init__()
        V.choice(variant, "variant", VARIANTS)
        num_classes = V.integer(num_classes, "num_classes", minimum=1)
        self.variant, self.num_classes, self.at_once = variant, num_classes, bool(at_once)
        self.dropout = V.flag(dropout, "dropout")
        self.dropout_seed = V.integer(dropout_seed, "dropout_seed", minimum=0, maximum=2**32 - 1)
        self.dropout_step = 0
        self.offsets = head_geometry(variant)
        shapes = param_shapes(variant, num_classes, widths, fc)
        skip = nn.utils.skip_init  # the weights come from fcn_cuda.FCN's initialisation below
        for name in (k[:-len(".weight")] for k in shapes if k.endswith(".weight")):
            out_c, in_c, r, s = shapes[f"{name}.weight"]
            if name.startswith("upscore"):
                stride = next(st for layer, _, st in HEADS[variant] if layer == name)
                setattr(self, name, skip(nn.ConvTranspose2d, out_c, in_c, r, stride=stride, bias=False))
            else:
                pad = CONV1_PAD if name == "conv1_1" else (1 if name.startswith("conv") else 0)
                setattr(self, name, skip(nn.Conv2d, in_c, out_c, r, padding=pad))
        self.load_state_dict({k: torch.from_numpy(v) for k, v in fresh_state_dict(shapes, seed).items()})
        for name, _, _ in HEADS[variant]:
            getattr(self, name).weight.requires_grad_(False)

    @classmethod
    def from_model(cls, model, **kwargs):
        """An FCN module holding a copy of an fcn_cuda.FCN's weights (its
        variant, classes, widths, at-once); kwargs as FCN's (dropout, ...)."""
        if not isinstance(model, EngineFCN):
            raise TypeError(f"model must be an fcn_cuda.FCN, got {type(model).__name__}")
        sd = model.state_dict()
        net = cls(model.variant, model.num_classes, widths=trunk_widths(sd), fc=sd["fc6.weight"].shape[0],
                  at_once=model.at_once, **kwargs)
        net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
        return net

    def to_model(self):
        """An fcn_cuda.FCN (active backend) holding a copy of these weights: save(), infer(), the Trainer."""
        sd = {k: v.detach().cpu().numpy() for k, v in self.state_dict().items()}
        return EngineFCN(self.variant, self.num_classes, at_once=self.at_once, state_dict=sd)

    def extra_repr(self):
        return f"variant={self.variant!r}, num_classes={self.num_classes}, at_once={self.at_once}"

    # -------------------------------------------------------------- forward
    def _check_input(self, x):
        check_tensors(x=(x, False))
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be N x 3 x H x W (BGR, mean subtracted), got shape {tuple(x.shape)}")

    def _score_fr(self, x):
        """The VGG16 trunk to score_fr; returns (score_fr output, {3: pool3, 4: pool4})."""
        h, pools = x, {}
        for b, block in enumerate(VGG16_BLOCKS):
            for i in range(len(block)):
                conv = getattr(self, f"conv{b + 1}_{i + 1}")
                last = i == len(block) - 1
                # Where no gradient flows, a block ends as fcn_cuda.FCN's inference does.
                if last and not (torch.is_grad_enabled() and any(t.requires_grad for t in (h, conv.weight, conv.bias))):
                    h = conv2d_relu_maxpool(h, conv.weight, conv.bias, padding=conv.padding[0])
                else:
                    h = conv2d(h, conv.weight, conv.bias, padding=conv.padding, relu=True)
                    if last:
                        h = max_pool2d(h, 2, 2, ceil_mode=True)
            pools[b + 1] = h
        key = None
        if self.training and self.dropout:
            key = (self.dropout_seed, self.dropout_step)
            self.dropout_step += 1
        for layer, name in enumerate(("fc6", "fc7")):
            h = conv2d(h, getattr(self, name).weight, getattr(self, name).bias, relu=True)
            if key is not None:
                seed, step, offset = dropout_key(key, layer, h)
                h = dropout(h, DROPOUT_P, seed, step, offset=offset)
        return conv2d(h, self.score_fr.weight, self.score_fr.bias), pools

    def _coarse_scores(self, x):
        """The head up to its last upsample (fcn_cuda.FCN.fuse_skips)."""
        score, pools = self._score_fr(x)
        for (name, _, stride), skip in zip(HEADS[self.variant][:-1], SKIPS[self.variant]):
            up = conv_transpose2d(score, getattr(self, name).weight, stride=stride)
            layer = getattr(self, skip)
            scale = AT_ONCE_SCALE[skip] if self.at_once else 1.0
            score = score_crop_add(up, pools[4 if skip == "score_pool4" else 3], layer.weight, layer.bias,
                                   self.offsets[skip], scale)
        return score

    def forward(self, x):
        self._check_input(x)
        name, _, stride = HEADS[self.variant][-1]
        return conv_transpose2d_window(self._coarse_scores(x), getattr(self, name).weight, stride,
                                       tuple(x.shape[2:]), self.offsets[name])

    def labels(self, x, probs=False):
        """N x H x W int32 labels, == argmax(self(x)); probs=True: (labels,
        softmax probabilities). One kernel for the last upsample and argmax."""
        self._check_input(x)
        name, _, stride = HEADS[self.variant][-1]
        return upsample_argmax(self._coarse_scores(x), getattr(self, name).weight, stride, tuple(x.shape[2:]),
                               self.offsets[name], probs=probs)
