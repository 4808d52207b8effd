"""The input contract: how an image becomes what the model was evaluated on, and what comes out.

Read from the official repository (XuRuihan/ParCNetV2): its `validate.py` resolves the data
config with timm 0.6.12's `resolve_data_config` (the README pins timm==0.6.12), and the
ParCNetV2 models register no `default_cfg`, so timm's defaults hold: bicubic interpolation,
crop_pct 0.875, ImageNet mean and std; `create_loader` then builds
`transforms_imagenet_eval`: torchvision `Resize(floor(size / crop_pct))` (shorter side; for a
non-square size each side to int(side / crop_pct)), `CenterCrop(size)`, `ToTensor()` (RGB,
scaled to [0, 1]) and `Normalize(mean, std)`. Images are opened with PIL and converted to RGB.

The manifest's "input" and "output" entries written here are read by the runner and by the
C API (arm_runtime/parcnet.cc), which redo these steps in C++ the way Pillow does them, and
by `preprocess_image` below (PIL itself) for the Python API.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .errors import ParcnetError

CROP_PCT = 0.875
INTERPOLATION = "bicubic"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CLASS_NAMES = Path(__file__).resolve().parent / "data" / "imagenet_classes.txt"
SOURCE = ("official validate.py with timm 0.6.12 defaults (ParCNetV2 registers no default_cfg): "
          "Resize(floor(size/0.875), bicubic) + CenterCrop(size) + ToTensor + Normalize(ImageNet mean, std)")


def resize_for(height: int, width: int) -> dict:
    """timm's eval resize for a crop of height x width."""
    if height == width:
        return {"shorter_side": int(math.floor(height / CROP_PCT))}
    return {"height": int(height / CROP_PCT), "width": int(width / CROP_PCT)}


def input_contract(input_shape, assumed: bool = False) -> dict:
    """The manifest's "input" entry for a model taking `input_shape` (N, 3, H, W).
    `assumed`: the model is a user's ONNX file, whose training we do not know."""
    _, _, height, width = input_shape
    return {
        "layout": "NCHW", "dtype": "float32", "shape": list(input_shape), "channel_order": "RGB",
        "pixel_scale": 255.0,  # 8-bit values / 255, then (value - mean) / std per channel
        "mean": list(MEAN), "std": list(STD),
        "resize": resize_for(height, width), "interpolation": INTERPOLATION,
        "crop": [height, width],
        "source": ("assumed for an ONNX file (ParCNetV2's ImageNet evaluation): " if assumed else "") + SOURCE,
    }


def output_contract(batch: int, classes: int = 1000) -> dict:
    """The manifest's "output" entry: logits, and the class names the bundle ships beside it."""
    return {"shape": [batch, classes], "dtype": "float32", "meaning": "logits (no softmax)",
            "class_names": CLASS_NAMES.name if classes == len(class_names()) else None}


def class_names() -> list[str]:
    """The ImageNet-1k class names in label order (sorted WordNet ids, as ImageFolder numbers
    them), one line each: WordNet lemmas, from timm's imagenet_synset_to_lemma.txt."""
    return CLASS_NAMES.read_text().splitlines()


def preprocess_image(image, contract: dict) -> np.ndarray:
    """One image (a path or a PIL image) -> float32 array (3, H, W) by `contract`, with PIL."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(image, Image.Image):
        try:
            image = Image.open(image)
        except (OSError, UnidentifiedImageError) as exc:
            raise ParcnetError(f"{image} is not a readable image ({exc}): give a JPEG, PNG, BMP or PPM file") from None
    image = image.convert("RGB")
    filters = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
    resize, (crop_h, crop_w) = contract["resize"], contract["crop"]
    if "shorter_side" in resize:  # torchvision's Resize(int): the longer side follows, truncated
        side, (w, h) = resize["shorter_side"], image.size
        size = (side, int(side * h / w)) if w <= h else (int(side * w / h), side)
    else:
        size = (resize["width"], resize["height"])
    image = image.resize(size, filters[contract["interpolation"]])
    top, left = int(round((size[1] - crop_h) / 2.0)), int(round((size[0] - crop_w) / 2.0))
    pixels = np.asarray(image, dtype=np.float32)[top:top + crop_h, left:left + crop_w] / np.float32(contract["pixel_scale"])
    out = (pixels - np.asarray(contract["mean"], np.float32)) / np.asarray(contract["std"], np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1))
