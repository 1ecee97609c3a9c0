"""A PyTorch FCN-32s/16s/8s written like pytorch-fcn (its layer names, its
hard-coded crop offsets), the reference that fcn_cuda's model is checked
against. Reduced widths keep the tests fast."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SMALL_WIDTHS = ((4, 4), (8, 8), (8, 8, 8), (16, 16, 16), (16, 16, 16))
SMALL_FC = 32


class TorchFCN(nn.Module):
    def __init__(self, variant, num_classes=21, widths=SMALL_WIDTHS, fc=SMALL_FC, at_once=False, conv1_pad=100):
        super().__init__()
        self.variant, self.at_once, self.conv1_pad = variant, at_once, conv1_pad
        c = 3
        self.blocks = []
        for b, block in enumerate(widths):
            self.blocks.append([])
            for i, k in enumerate(block):
                name = f"conv{b + 1}_{i + 1}"
                setattr(self, name, nn.Conv2d(c, k, 3, padding=conv1_pad if (b, i) == (0, 0) else 1))
                self.blocks[-1].append(name)
                c = k
        self.fc6 = nn.Conv2d(c, fc, 7)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.score_fr = nn.Conv2d(fc, num_classes, 1)
        if variant == "32s":
            self.upscore = nn.ConvTranspose2d(num_classes, num_classes, 64, stride=32, bias=False)
        else:
            self.score_pool4 = nn.Conv2d(widths[3][-1], num_classes, 1)
            self.upscore2 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, bias=False)
        if variant == "16s":
            self.upscore16 = nn.ConvTranspose2d(num_classes, num_classes, 32, stride=16, bias=False)
        if variant == "8s":
            self.score_pool3 = nn.Conv2d(widths[2][-1], num_classes, 1)
            self.upscore_pool4 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, bias=False)
            self.upscore8 = nn.ConvTranspose2d(num_classes, num_classes, 16, stride=8, bias=False)

    pool_indices = None  # {block: N x C x Ho x Wo int indices} to route max-pooling by given argmaxes

    def pool(self, h, b):
        if self.pool_indices is None:
            return F.max_pool2d(h, 2, 2, ceil_mode=True)
        # The max is taken where the given indices say: the same function
        # wherever the argmax is unique, and the gradient then follows the
        # same discrete choice as the implementation under test, so an fp32
        # near-tie cannot send it to another pixel than float64 would.
        idx = torch.as_tensor(np.asarray(self.pool_indices[b]), dtype=torch.int64)
        flat = h.flatten(2).gather(2, idx.flatten(2))
        return flat.view(idx.shape)

    def trunk(self, x):
        pools = {}
        h = x
        for b, block in enumerate(self.blocks):
            for name in block:
                h = F.relu(getattr(self, name)(h))
            h = self.pool(h, b + 1)
            pools[b + 1] = h
        h = F.relu(self.fc6(h))
        h = F.relu(self.fc7(h))
        return self.score_fr(h), pools, h

    def forward(self, x):
        H, W = x.shape[2:]
        score, pools, _ = self.trunk(x)
        if self.variant == "32s":
            return self.upscore(score)[:, :, 19:19 + H, 19:19 + W]
        up2 = self.upscore2(score)
        p4 = pools[4] * 0.01 if self.at_once else pools[4]
        s4 = self.score_pool4(p4)[:, :, 5:5 + up2.shape[2], 5:5 + up2.shape[3]]
        fuse = up2 + s4
        if self.variant == "16s":
            return self.upscore16(fuse)[:, :, 27:27 + H, 27:27 + W]
        up4 = self.upscore_pool4(fuse)
        p3 = pools[3] * 0.0001 if self.at_once else pools[3]
        s3 = self.score_pool3(p3)[:, :, 9:9 + up4.shape[2], 9:9 + up4.shape[3]]
        return self.upscore8(up4 + s3)[:, :, 31:31 + H, 31:31 + W]


def random_fcn(variant, seed=0, bilinear=True, at_once=False, num_classes=21, **kw):
    """A TorchFCN in float64 with random weights everywhere (score layers and
    biases too); upsampling bilinear or random."""
    from fcn_cuda import bilinear_weights

    torch.manual_seed(seed)
    net = TorchFCN(variant, num_classes, at_once=at_once, **kw).double()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith("upscore"):
                if bilinear:
                    p.copy_(torch.from_numpy(bilinear_weights(p.shape[0], p.shape[2])))
                else:
                    p.copy_(torch.randn_like(p) * 0.1)
            elif name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.1)
            else:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn_like(p) * np.sqrt(2.0 / fan_in))
    return net


def state_dict_f32(net):
    return {k: v.detach().float().numpy().copy() for k, v in net.state_dict().items()}
