"""ParCNetV2 as the official classifier computes it, written for the tests independently of
parcnet_tvm.model, from shared/notes/parcnetv2-architecture.md: the same state-dict names, but
the official forward pass's own choices, which our model replaces for export or speed:

- chunk(2) to split channels (TorchScript exports it with a dynamic batch axis as run-time
  Shape/Gather/Slice arithmetic);
- the oversized kernels keep the lengths they were trained with (111/55/27/13 for 224) at any
  input size, with padding k//2 (its `interpolate` option is never reached from the block);
- LayerNormGeneral through clamp_min (Clip in ONNX).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KERNELS = (111, 55, 27, 13)


class Norm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        centred = x - x.mean(-1, keepdim=True)
        return centred / centred.pow(2).sum(-1, keepdim=True).sqrt().clamp_min(1e-6) * self.weight


class ResScale(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.scale


class OversizeConv(nn.Module):
    def __init__(self, dim, kernel):
        super().__init__()
        self.conv_h = nn.Conv2d(dim, dim, (kernel, 1), padding=(kernel // 2, 0), groups=dim, bias=False)
        self.conv_w = nn.Conv2d(dim, dim, (1, kernel), padding=(0, kernel // 2), groups=dim, bias=False)

    def forward(self, x):
        return self.conv_w(self.conv_h(x))


class TokenMixer(nn.Module):
    def __init__(self, dim, kernel):
        super().__init__()
        self.pwconv1 = nn.Conv2d(dim, 2 * dim, 1)
        self.dwconv1 = OversizeConv(dim, kernel)
        self.dwconv2 = nn.Conv2d(dim, dim, 7, padding=3, groups=dim, bias=False)
        self.pwconv2 = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x):
        x1, x2 = self.pwconv1(x.permute(0, 3, 1, 2)).chunk(2, dim=1)
        x2 = F.gelu(x2)
        return self.pwconv2(x1 * (self.dwconv1(x2) + self.dwconv2(x2))).permute(0, 2, 3, 1)


class Mlp(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, 5 * dim)
        self.fc2 = nn.Linear(5 * dim // 2, dim, bias=False)

    def forward(self, x):
        x1, x2 = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(x1 * F.gelu(x2))


class Block(nn.Module):
    def __init__(self, dim, kernel, scaled):
        super().__init__()
        self.norm1, self.norm2 = Norm(dim), Norm(dim)
        self.token_mixer, self.mlp = TokenMixer(dim, kernel), Mlp(dim)
        self.res_scale1 = ResScale(dim) if scaled else nn.Identity()
        self.res_scale2 = ResScale(dim) if scaled else nn.Identity()

    def forward(self, x):
        x = self.res_scale1(x) + self.token_mixer(self.norm1(x))
        return self.res_scale2(x) + self.mlp(self.norm2(x))


class Stem(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.conv = nn.Conv2d(3, dim, 7, stride=4, padding=2)
        self.post_norm = Norm(dim)

    def forward(self, x):
        return self.post_norm(self.conv(x).permute(0, 2, 3, 1))


class Down(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.pre_norm = Norm(dim_in)
        self.conv = nn.Conv2d(dim_in, dim_out, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(self.pre_norm(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class OfficialParCNetV2(nn.Module):
    def __init__(self, dims, depths, num_classes=1000):
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [Stem(dims[0])] + [Down(dims[i - 1], dims[i]) for i in range(1, 4)])
        self.stages = nn.ModuleList(
            nn.Sequential(*(Block(dims[i], KERNELS[i], i >= 2) for _ in range(depths[i]))) for i in range(4))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.head(self.norm(x.mean((1, 2))))


def official_xt(state_dict=None) -> OfficialParCNetV2:
    model = OfficialParCNetV2((48, 96, 192, 320), (3, 3, 9, 2)).eval()
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return model


def export_like_official(model: nn.Module, size, path) -> None:
    """The official repo's onnx/torch2onnx.py settings: the TorchScript exporter (its default
    opset), input/output names, a dynamic batch axis."""
    torch.onnx.export(model.eval(), (torch.zeros(1, 3, *size),), str(path), dynamo=False,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": [0], "output": [0]})
