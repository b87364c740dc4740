"""ResNet-18 encoder (torchvision) with a C-channel stem; features at strides 4, 8, 16, 32.

The only file I/O in `model/`: optional ImageNet weights from a local torchvision resnet18
state dict. The first convolution's RGB filters are copied and every extra input channel
(the fourth Bayer plane, a noise map) gets their mean; all filters are then scaled by 3/C
so that a grey input gives the same stem activations as it did with three channels.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint
from torchvision.models import resnet18
from torchvision.ops import FrozenBatchNorm2d

from batman.config import BatmanError


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, or the largest divisor of `channels` below 32 when it is small."""
    groups = min(32, channels)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


# `frozen`: BatchNorm whose statistics and affine parameters never change (always eval mode).
NORMS = {"batch": nn.BatchNorm2d, "group": group_norm, "frozen": FrozenBatchNorm2d}


def make_norm(name: str, channels: int) -> nn.Module:
    if name not in NORMS:
        raise BatmanError(f"unknown norm {name!r}; choose one of {', '.join(NORMS)}")
    return NORMS[name](channels)


class Encoder(nn.Module):
    """(N, C, H, W), H and W multiples of 32 -> [layer1 (N,64,H/4,W/4), layer2 (N,128,H/8,W/8),
    layer3 (N,256,H/16,W/16), layer4 (N,512,H/32,W/32)]."""

    channels = (64, 128, 256, 512)

    def __init__(self, in_channels: int, norm: str = "group", weights: str = "", checkpointing: bool = False):
        super().__init__()
        make_norm(norm, 64)  # validates the name before building anything
        net = resnet18(weights=None, norm_layer=NORMS[norm])
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn1, self.relu, self.maxpool = net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.checkpointing = checkpointing
        if weights:
            self.load_resnet18(weights)

    def load_resnet18(self, path: str | Path) -> None:
        """Copy a torchvision resnet18 state dict (fc dropped, conv1 widened to C channels)."""
        path = Path(path)
        if not path.is_file():
            raise BatmanError(f"encoder weights {path} not found; give a local torchvision resnet18 "
                              f"state dict or leave model.encoder_weights empty for random init")
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
            reference = resnet18(weights=None)
            reference.load_state_dict(state)  # strict: every key and shape of resnet18
        except Exception as e:  # unreadable file, not a dict, missing/unexpected keys, wrong shapes
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BatmanError(f"encoder weights {path} are not a torchvision resnet18 state dict: {reason}")
        source = reference.state_dict()
        rgb = source["conv1.weight"]  # (64, 3, 7, 7)
        extra = self.conv1.in_channels - 3
        if extra < 0:
            raise BatmanError(f"encoder weights {path}: the stem needs at least 3 input channels, "
                              f"got {self.conv1.in_channels}")
        stem = torch.cat([rgb, rgb.mean(1, keepdim=True).expand(-1, extra, -1, -1)], 1)
        source["conv1.weight"] = stem * (3 / self.conv1.in_channels)
        # GroupNorm takes BatchNorm's affine parameters; running statistics only where kept.
        target = self.state_dict()
        self.load_state_dict({k: source[k] for k in target})

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        use_checkpoint = self.checkpointing and self.training and torch.is_grad_enabled()
        feats = []
        for stage in (self._stem, self.layer1, self.layer2, self.layer3, self.layer4):
            x = checkpoint(stage, x, use_reentrant=False) if use_checkpoint else stage(x)
            feats.append(x)
        return feats[1:]
