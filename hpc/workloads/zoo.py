"""Standard architectures people benchmark data-parallel training with, written here.

torchvision cannot be installed next to the CPU torch of this project (its wheel for torch 2.13 is a
CUDA build that fails to import: notes/environment.md), so ResNet-18/50 are re-implemented with
torchvision's exact layer shapes (same parameter counts: 11,689,512 and 25,557,032 for 1000 classes)
and GPT-2 as a compact decoder with Hugging Face's layout (124,439,808 parameters at the GPT-2 small
sizes). Each factory takes keyword arguments only (`hpc train --model-arg k=v`) and returns an
`nn.Module`; build under `torch.device("meta")` to count parameters without allocating them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["resnet18", "resnet34", "resnet50", "resnet101", "gpt2"]


# -- ResNet (He et al. 2015; torchvision's v1.5: stride on the 3x3 of a bottleneck) ----------------

def _resnet_classes():
    """The ResNet classes, defined on first use so importing this module does not import torch."""
    from torch import nn

    def conv3x3(inp: int, out: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
        return nn.Conv2d(inp, out, 3, stride=stride, padding=1, groups=groups, bias=False)

    def conv1x1(inp: int, out: int, stride: int = 1) -> nn.Conv2d:
        return nn.Conv2d(inp, out, 1, stride=stride, bias=False)

    class BasicBlock(nn.Module):
        """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

        expansion = 1

        def __init__(self, inp: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                     groups: int = 1, base_width: int = 64) -> None:
            super().__init__()
            if groups != 1 or base_width != 64:
                raise ValueError("BasicBlock only supports groups=1 and width_per_group=64")
            self.conv1 = conv3x3(inp, planes, stride)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = conv3x3(planes, planes)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = downsample

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            idt = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + idt)

    class Bottleneck(nn.Module):
        """1x1 reduce, 3x3 (strided), 1x1 expand x4, with a residual connection (ResNet-50/101)."""

        expansion = 4

        def __init__(self, inp: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                     groups: int = 1, base_width: int = 64) -> None:
            super().__init__()
            width = int(planes * (base_width / 64.0)) * groups
            self.conv1 = conv1x1(inp, width)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = conv3x3(width, width, stride, groups)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = conv1x1(width, planes * self.expansion)
            self.bn3 = nn.BatchNorm2d(planes * self.expansion)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            idt = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + idt)

    class ResNet(nn.Module):
        """torchvision.models.ResNet's layout: stem, four stages, global average pool, fc."""

        def __init__(self, block: type, layers: list[int], num_classes: int = 1000, in_channels: int = 3,
                     zero_init_residual: bool = False, groups: int = 1, width_per_group: int = 64) -> None:
            super().__init__()
            self.inplanes, self.groups, self.base_width = 64, groups, width_per_group
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            self.layer1 = self._stage(block, 64, layers[0])
            self.layer2 = self._stage(block, 128, layers[1], stride=2)
            self.layer3 = self._stage(block, 256, layers[2], stride=2)
            self.layer4 = self._stage(block, 512, layers[3], stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512 * block.expansion, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
            if zero_init_residual:
                for m in self.modules():
                    last = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else getattr(m, "bn2", None)
                    if isinstance(m, (Bottleneck, BasicBlock)) and last is not None:
                        nn.init.zeros_(last.weight)

        def _stage(self, block: type, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
            down = None
            if stride != 1 or self.inplanes != planes * block.expansion:
                down = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                     nn.BatchNorm2d(planes * block.expansion))
            layers = [block(self.inplanes, planes, stride, down, self.groups, self.base_width)]
            self.inplanes = planes * block.expansion
            layers += [block(self.inplanes, planes, groups=self.groups, base_width=self.base_width)
                       for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(self.avgpool(x).flatten(1))

    return BasicBlock, Bottleneck, ResNet


def resnet18(num_classes: int = 1000, in_channels: int = 3, **kwargs) -> "torch.nn.Module":
    """ResNet-18 (BasicBlock x [2, 2, 2, 2]); 11,689,512 parameters for 1000 classes."""
    basic, _, resnet = _resnet_classes()
    return resnet(basic, [2, 2, 2, 2], num_classes, in_channels, **kwargs)


def resnet34(num_classes: int = 1000, in_channels: int = 3, **kwargs) -> "torch.nn.Module":
    """ResNet-34 (BasicBlock x [3, 4, 6, 3]); 21,797,672 parameters for 1000 classes."""
    basic, _, resnet = _resnet_classes()
    return resnet(basic, [3, 4, 6, 3], num_classes, in_channels, **kwargs)


def resnet50(num_classes: int = 1000, in_channels: int = 3, **kwargs) -> "torch.nn.Module":
    """ResNet-50 (Bottleneck x [3, 4, 6, 3]); 25,557,032 parameters for 1000 classes."""
    _, bottleneck, resnet = _resnet_classes()
    return resnet(bottleneck, [3, 4, 6, 3], num_classes, in_channels, **kwargs)


def resnet101(num_classes: int = 1000, in_channels: int = 3, **kwargs) -> "torch.nn.Module":
    """ResNet-101 (Bottleneck x [3, 4, 23, 3]); 44,549,160 parameters for 1000 classes."""
    _, bottleneck, resnet = _resnet_classes()
    return resnet(bottleneck, [3, 4, 23, 3], num_classes, in_channels, **kwargs)


# -- GPT-2 (Radford et al. 2019): pre-LN decoder, learned positions, tied embeddings ----------------

def gpt2(vocab_size: int = 50257, n_positions: int = 1024, n_embd: int = 64, n_layer: int = 2,
         n_head: int = 2, dropout: float = 0.0, layer_norm_epsilon: float = 1e-5) -> "torch.nn.Module":
    """A GPT-2-style causal LM returning logits (batch, tokens, vocab).

    Defaults are CPU-test sized; GPT-2 small is n_embd=768, n_layer=12, n_head=12 with vocab 50257 and
    1024 positions (124,439,808 parameters, the LM head tied to the token embedding).
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    if n_embd % n_head:
        raise ValueError(f"n_embd {n_embd} is not divisible by n_head {n_head}")

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c_attn = nn.Linear(n_embd, 3 * n_embd)
            self.c_proj = nn.Linear(n_embd, n_embd)
            self.drop = dropout

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            b, t, c = x.shape
            q, k, v = self.c_attn(x).split(n_embd, dim=2)
            q, k, v = (z.view(b, t, n_head, c // n_head).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               dropout_p=self.drop if self.training else 0.0)
            return self.c_proj(y.transpose(1, 2).reshape(b, t, c))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln_1 = nn.LayerNorm(n_embd, eps=layer_norm_epsilon)
            self.attn = Attention()
            self.ln_2 = nn.LayerNorm(n_embd, eps=layer_norm_epsilon)
            self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(approximate="tanh"),
                                     nn.Linear(4 * n_embd, n_embd), nn.Dropout(dropout))

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT2(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.n_positions = n_positions
            self.wte = nn.Embedding(vocab_size, n_embd)
            self.wpe = nn.Embedding(n_positions, n_embd)
            self.drop = nn.Dropout(dropout)
            self.h = nn.ModuleList(Block() for _ in range(n_layer))
            self.ln_f = nn.LayerNorm(n_embd, eps=layer_norm_epsilon)
            self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
            self.lm_head.weight = self.wte.weight  # tied, as in GPT-2
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                elif p.dim() >= 2:  # residual projections scaled by depth (GPT-2 paper, section 2.3)
                    std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") or \
                        name.endswith("mlp.2.weight") else 0.02
                    nn.init.normal_(p, 0.0, std)

        def forward(self, idx: "torch.Tensor") -> "torch.Tensor":
            t = idx.shape[1]
            if t > self.n_positions:
                raise ValueError(f"sequence of {t} tokens is longer than n_positions {self.n_positions}")
            pos = torch.arange(t, device=idx.device)
            x = self.drop(self.wte(idx) + self.wpe(pos))
            for block in self.h:
                x = block(x)
            return self.lm_head(self.ln_f(x))

    return GPT2()
