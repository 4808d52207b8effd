"""ParCNetV2 (ICCV'23) in plain PyTorch, state-dict compatible with the official code.

Parameter names and shapes follow the official `models/parcnetv2.py` exactly, so its
checkpoints load with ``strict=True``. The variants are data (``VARIANTS``) and
``create_model`` is the single door.

Activations travel channels-last (B, H, W, C) between blocks; the token mixer and the
downsampling convolutions work channels-first internally, as in the official code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ParcnetError

# Oversized kernel lengths of the official model, made for a 224 input (2H-1, H = 56, 28, 14, 7).
# The official classifier keeps them, with padding k//2, at every input size.
KERNELS_AT_224 = (111, 55, 27, 13)
# The stem's conv (k7 s4 p2) needs at least 3 pixels per side; every later layer runs on any map.
MIN_SIDE = 3
BGU_RATIO = 5  # the channel BGU's hidden width is 5C, split into two 2.5C halves
NORM_EPS = 1e-6


@dataclass(frozen=True)
class Variant:
    name: str
    dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]


VARIANTS = {
    "xt": Variant("parcnetv2_xt", (48, 96, 192, 320), (3, 3, 9, 2)),
    "t": Variant("parcnetv2_t", (64, 128, 320, 512), (3, 3, 12, 3)),
    "s": Variant("parcnetv2_s", (64, 128, 320, 512), (3, 9, 24, 3)),
    "b": Variant("parcnetv2_b", (96, 192, 384, 576), (3, 9, 24, 3)),
}
# Names users may know from the official registry.
ALIASES = {"parcnetv2_tiny": "t", "parcnetv2_small": "s", "parcnetv2_base": "b"}


def variant_key(name: str) -> str:
    """Normalise 'xt' / 'parcnetv2_xt' / 'parcnetv2_tiny' to one of VARIANTS' keys."""
    key = name.lower().strip()
    key = ALIASES.get(key, key)
    if key.startswith("parcnetv2_"):
        key = key[len("parcnetv2_"):]
    if key not in VARIANTS:
        raise ParcnetError(
            f"unknown model {name!r}: choose one of {', '.join(VARIANTS)} "
            f"(or parcnetv2_<name>)"
        )
    return key


def parse_input_size(size) -> tuple[int, int]:
    """Accept 224, '224', '224x320', (224, 320): any size the official model runs (each side
    at least MIN_SIDE; the downsampling rounds as its convs do)."""
    if isinstance(size, str):
        parts = size.lower().replace(",", "x").split("x")
        try:
            size = tuple(int(p) for p in parts)
        except ValueError:
            raise ParcnetError(f"input size {size!r} is not a number or HxW (e.g. 224 or 224x320)")
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2:
        raise ParcnetError(f"input size {size!r} must be one int or (H, W)")
    for side in size:
        if side < MIN_SIDE:
            raise ParcnetError(
                f"input size {size[0]}x{size[1]} is too small: ParCNetV2's stem (7x7 conv, stride 4, "
                f"padding 2) needs at least {MIN_SIDE} pixels per side; use e.g. 224"
            )
    return size


def conv_output_side(side: int, kernel: int, stride: int, padding: int) -> int:
    return (side + 2 * padding - kernel) // stride + 1


def stage_map_sizes(input_size: tuple[int, int]) -> list[tuple[int, int]]:
    """(H, W) of the feature map in each of the four stages, rounded as the official
    downsampling convs round (stem k7 s4 p2, then k3 s2 p1): 200 -> 50, 25, 13, 7."""
    sizes, size = [], tuple(input_size)
    for stage in range(4):
        kernel, stride, padding = (7, 4, 2) if stage == 0 else (3, 2, 1)
        size = tuple(conv_output_side(side, kernel, stride, padding) for side in size)
        sizes.append(size)
    return sizes


def resize_kernel(weight: torch.Tensor, taps: int, axis: int) -> torch.Tensor:
    """Resize a depth-wise 1-D kernel (C,1,K,1) or (C,1,1,K) to `taps` along `axis` (2 or 3).

    Paper Sec. 3.1: bilinear interpolation with align_corners=True keeps the kernel
    oversized (2H-1 taps) at any input resolution.
    """
    if weight.shape[axis] == taps:
        return weight
    size = [taps, 1] if axis == 2 else [1, taps]
    with torch.no_grad():
        return F.interpolate(weight, size=size, mode="bilinear", align_corners=True)


class LayerNormGeneral(nn.Module):
    """The official 'LayerNormGeneral' over the last dim: centre, divide by the clamped L2 norm, scale.

    Not LayerNorm: it divides by ||x - mean||_2 (not the standard deviation) and eps clamps
    that norm instead of being added to the variance. No bias.
    """

    def __init__(self, dim: int, eps: float = NORM_EPS):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        centred = x - x.mean(-1, keepdim=True)
        norm = centred.pow(2).sum(-1, keepdim=True).sqrt().clamp_min(self.eps)
        return centred / norm * self.weight


class Scale(nn.Module):
    """Learnable per-channel residual scale (official `res_scale*`, stages 3 and 4)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.scale


class OversizedConv(nn.Module):
    """Depth-wise Kx1 then 1xK convolution with padding K//2 (paper Sec. 3.1).

    Official behaviour (the default): K is the stage's 224 length (111/55/27/13) at every
    input size, as the official classifier runs it. With `resize_kernels` (the paper's
    resizing): K is 2H-1 (and 2W-1) for this map, and a 224-length state dict (the official
    checkpoints) is resized on load, once.
    """

    def __init__(self, dim: int, map_size: tuple[int, int], kernel_length: int, resize_kernels: bool = False):
        super().__init__()
        height, width = map_size
        self.map_size = map_size
        taps_h, taps_w = (2 * height - 1, 2 * width - 1) if resize_kernels else (kernel_length, kernel_length)
        self.conv_h = nn.Conv2d(dim, dim, (taps_h, 1), padding=(taps_h // 2, 0), groups=dim, bias=False)
        self.conv_w = nn.Conv2d(dim, dim, (1, taps_w), padding=(0, taps_w // 2), groups=dim, bias=False)

    def forward(self, x):
        return self.conv_w(self.conv_h(x))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, conv, axis in (("conv_h", self.conv_h, 2), ("conv_w", self.conv_w, 3)):
            key = f"{prefix}{name}.weight"
            loaded = state_dict.get(key)
            if loaded is None or loaded.dim() != 4:
                continue
            other_axis = 5 - axis
            if loaded.shape[:2] == conv.weight.shape[:2] and loaded.shape[other_axis] == 1:
                state_dict[key] = resize_kernel(loaded, conv.weight.shape[axis], axis)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ParCV2(nn.Module):
    """Token mixer: pwconv1 -> split -> x1 * (oversized(GELU x2) + dw7x7(GELU x2)) -> pwconv2."""

    def __init__(self, dim: int, map_size: tuple[int, int], kernel_length: int, resize_kernels: bool = False):
        super().__init__()
        self.dim = dim
        self.pwconv1 = nn.Conv2d(dim, 2 * dim, 1, bias=True)
        self.act = nn.GELU()
        self.dwconv1 = OversizedConv(dim, map_size, kernel_length, resize_kernels)
        self.dwconv2 = nn.Conv2d(dim, dim, 7, padding=3, groups=dim, bias=False)
        self.pwconv2 = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x):
        x = x.permute(0, 3, 1, 2)
        # split(dim) == the official chunk(2), but exports to ONNX as one static Split
        # instead of run-time Shape/Gather arithmetic that TVM's ONNX importer rejects.
        x1, x2 = self.pwconv1(x).split(self.dim, 1)
        x2 = self.act(x2)
        x = x1 * (self.dwconv1(x2) + self.dwconv2(x2))
        return self.pwconv2(x).permute(0, 2, 3, 1)


class BGU(nn.Module):
    """Channel bifurcate gate unit: fc1 -> split -> x1 * GELU(x2) -> fc2."""

    def __init__(self, dim: int):
        super().__init__()
        hidden = BGU_RATIO * dim
        self.half = (hidden + 1) // 2  # chunk(2)'s first-part size
        self.fc1 = nn.Linear(dim, hidden, bias=True)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden // 2, dim, bias=False)

    def forward(self, x):
        # contiguous(): on the permuted (channels-last view) input, torch.export lowers Linear
        # to a batched matmul over a weight copied per image row (expand + bmm), which TVM
        # runs as a weight copy on every call; contiguous tokens export as one 2-D GEMM.
        x1, x2 = self.fc1(x.contiguous()).split(self.half, -1)  # == chunk(2), see ParCV2
        return self.fc2(x1 * self.act(x2))


class Block(nn.Module):
    def __init__(self, dim: int, map_size: tuple[int, int], kernel_length: int, res_scale: bool,
                 resize_kernels: bool = False):
        super().__init__()
        self.norm1 = LayerNormGeneral(dim)
        self.token_mixer = ParCV2(dim, map_size, kernel_length, resize_kernels)
        self.res_scale1 = Scale(dim) if res_scale else nn.Identity()
        self.norm2 = LayerNormGeneral(dim)
        self.mlp = BGU(dim)
        self.res_scale2 = Scale(dim) if res_scale else nn.Identity()

    def forward(self, x):
        x = self.res_scale1(x) + self.token_mixer(self.norm1(x))
        return self.res_scale2(x) + self.mlp(self.norm2(x))


class Downsampling(nn.Module):
    """Stem (k7 s4 p2, then norm) or stage transition (norm, then k3 s2 p1)."""

    def __init__(self, in_dim: int, out_dim: int, stem: bool):
        super().__init__()
        self.stem = stem
        if stem:
            self.conv = nn.Conv2d(in_dim, out_dim, 7, stride=4, padding=2)
            self.post_norm = LayerNormGeneral(out_dim)
        else:
            self.pre_norm = LayerNormGeneral(in_dim)
            self.conv = nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1)

    def forward(self, x):
        if self.stem:  # NCHW image in, NHWC out
            return self.post_norm(self.conv(x).permute(0, 2, 3, 1))
        x = self.pre_norm(x).permute(0, 3, 1, 2)
        return self.conv(x).permute(0, 2, 3, 1)


class ParCNetV2(nn.Module):
    def __init__(self, variant: Variant, input_size=224, num_classes: int = 1000, in_chans: int = 3,
                 resize_kernels: bool = False):
        super().__init__()
        self.variant = variant
        self.input_size = parse_input_size(input_size)
        self.resize_kernels = resize_kernels
        self.num_classes = num_classes
        dims, depths = variant.dims, variant.depths
        maps = stage_map_sizes(self.input_size)
        self.downsample_layers = nn.ModuleList(
            Downsampling(in_chans if i == 0 else dims[i - 1], dims[i], stem=i == 0) for i in range(4)
        )
        # res_scale exists in the third and fourth stages only (official res_scale_init_values).
        self.stages = nn.ModuleList(
            nn.Sequential(*(Block(dims[i], maps[i], KERNELS_AT_224[i], res_scale=i >= 2, resize_kernels=resize_kernels)
                            for _ in range(depths[i])))
            for i in range(4)
        )
        self.norm = nn.LayerNorm(dims[-1], eps=NORM_EPS)
        self.head = nn.Linear(dims[-1], num_classes)
        self._init_weights()

    def _init_weights(self):
        # Official init: trunc_normal(std=0.02) weights, zero biases, drawn at the 224 kernel
        # lengths; resized kernels (resize_kernels) are the resized 224 kernels, as for a checkpoint.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for stage, taps in zip(self.stages, KERNELS_AT_224):
            for block in stage:
                conv = block.token_mixer.dwconv1
                for sub, shape, axis in ((conv.conv_h, (taps, 1), 2), (conv.conv_w, (1, taps), 3)):
                    if sub.weight.shape[axis] != taps:
                        base = torch.empty(sub.weight.shape[:2] + shape)
                        nn.init.trunc_normal_(base, std=0.02, a=-2.0, b=2.0)
                        sub.weight.data.copy_(resize_kernel(base, sub.weight.shape[axis], axis))

    def forward_features(self, x):
        for downsample, stage in zip(self.downsample_layers, self.stages):
            x = stage(downsample(x))
        return self.norm(x.mean((1, 2)))

    def forward(self, x):
        return self.head(self.forward_features(x))

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        return (batch, 3, *self.input_size)


def draw_verification_weights(model: nn.Module, seed: int) -> nn.Module:
    """Random weights under which every layer moves the output, for checking a compiled model
    without a checkpoint: weights with variance 1/fan-in, biases around 0 and norm and residual
    scales around 1 (std 0.1). Under the official init (std 0.02) the residual branches are
    ~1% of the signal: a compiled XT whose oversized convs swapped their H and W kernels was
    within 1e-4 of PyTorch (8e-6 at 64x64, 4e-5 at 224); with these weights it is 0.03-0.1 off,
    and a correct build 2-4e-6."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.dim() > 1:
                param.copy_(noise / param[0].numel() ** 0.5)
            elif name.endswith("bias"):
                param.copy_(0.1 * noise)
            else:  # norm weights, residual scales
                param.copy_(1.0 + 0.1 * noise)
    return model


def create_model(name: str, input_size=224, num_classes: int = 1000, resize_kernels: bool = False) -> ParCNetV2:
    """Build a ParCNetV2 variant ('xt', 't', 's', 'b' or 'parcnetv2_<name>') in eval mode;
    `resize_kernels` resizes the oversized kernels to each map (the paper) instead of keeping
    the official 224 lengths."""
    model = ParCNetV2(VARIANTS[variant_key(name)], input_size=input_size, num_classes=num_classes,
                      resize_kernels=resize_kernels)
    return model.eval()
