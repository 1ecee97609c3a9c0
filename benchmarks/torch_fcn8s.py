"""The PyTorch side of the end-to-end rows: an FCN-8s written the way
pytorch-fcn writes it (nn.Conv2d / nn.ConvTranspose2d, in-place ReLU,
slicing for the crops), loaded with the very weights of the fcn_cuda model,
plus the reference's pre-processing in torch ops.

The layer structure follows tests/torch_fcn.py (benchmarks do not import
tests); the crop offsets come from fcn_cuda.model.head_geometry, the same
numbers pytorch-fcn hard-codes (5, 9, 31).
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fcn_cuda.model import AT_ONCE_SCALE, CONV1_PAD, head_geometry
from fcn_cuda.ops import MEAN_BGR


class TorchFCN8s(nn.Module):
    """FCN-8s with the widths read from an fcn_cuda state dict."""

    def __init__(self, state_dict, num_classes, at_once=False):
        super().__init__()
        self.at_once = at_once
        self.offsets = head_geometry("8s", CONV1_PAD)
        self.blocks = []
        b = 1
        while f"conv{b}_1.weight" in state_dict:
            self.blocks.append([])
            i = 1
            while f"conv{b}_{i}.weight" in state_dict:
                name = f"conv{b}_{i}"
                k, c = state_dict[f"{name}.weight"].shape[:2]
                setattr(self, name, nn.Conv2d(c, k, 3, padding=CONV1_PAD if (b, i) == (1, 1) else 1))
                self.blocks[-1].append(name)
                i += 1
            b += 1
        fc, c = state_dict["fc6.weight"].shape[:2]
        self.fc6 = nn.Conv2d(c, fc, 7)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.score_fr = nn.Conv2d(fc, num_classes, 1)
        self.score_pool4 = nn.Conv2d(state_dict["score_pool4.weight"].shape[1], num_classes, 1)
        self.score_pool3 = nn.Conv2d(state_dict["score_pool3.weight"].shape[1], num_classes, 1)
        self.upscore2 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, bias=False)
        self.upscore_pool4 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, bias=False)
        self.upscore8 = nn.ConvTranspose2d(num_classes, num_classes, 16, stride=8, bias=False)
        self.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()})

    def forward(self, x):
        h, w = x.shape[2:]
        pools = []
        y = x
        for block in self.blocks:
            for name in block:
                y = F.relu(getattr(self, name)(y), inplace=True)
            y = F.max_pool2d(y, 2, 2, ceil_mode=True)
            pools.append(y)
        y = F.relu(self.fc6(y), inplace=True)
        y = F.relu(self.fc7(y), inplace=True)
        y = self.score_fr(y)
        o = self.offsets
        up = self.upscore2(y)
        p4 = pools[3] * AT_ONCE_SCALE["score_pool4"] if self.at_once else pools[3]
        s4 = self.score_pool4(p4)[:, :, o["score_pool4"]:o["score_pool4"] + up.shape[2],
                                  o["score_pool4"]:o["score_pool4"] + up.shape[3]]
        up = self.upscore_pool4(up + s4)
        p3 = pools[2] * AT_ONCE_SCALE["score_pool3"] if self.at_once else pools[2]
        s3 = self.score_pool3(p3)[:, :, o["score_pool3"]:o["score_pool3"] + up.shape[2],
                                  o["score_pool3"]:o["score_pool3"] + up.shape[3]]
        return self.upscore8(up + s3)[:, :, o["upscore8"]:o["upscore8"] + h, o["upscore8"]:o["upscore8"] + w]


_MEAN = {}


def preprocess(img):
    """N x H x W x 3 uint8 RGB tensor -> N x 3 x H x W float32, BGR minus MEAN_BGR,
    the same transform as fcn_cuda.ops.preprocess."""
    mean = _MEAN.get(img.device)
    if mean is None:
        mean = _MEAN[img.device] = torch.tensor(MEAN_BGR, dtype=torch.float32, device=img.device).view(1, 3, 1, 1)
    return (img.permute(0, 3, 1, 2).flip(1).float() - mean).contiguous()
