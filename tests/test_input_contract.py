"""input_contract.py: the official evaluation's input contract in every manifest, and the C++
preprocessing (the runner and the C API, under qemu) against PIL."""

import numpy as np
import pytest
from support import SMALL, needs_arm_toolchain, pil_eval_preprocess, write_test_image

from parcnet_tvm import runtime as arm_runtime
from parcnet_tvm.input_contract import class_names, input_contract, resize_for


def test_manifest_holds_the_official_contract(xt_small_x86):
    """timm 0.6.12's eval defaults, which the official validate.py uses for ParCNetV2."""
    _, manifest = xt_small_x86
    contract = manifest["input"]
    assert contract["mean"] == [0.485, 0.456, 0.406] and contract["std"] == [0.229, 0.224, 0.225]
    assert contract["interpolation"] == "bicubic" and contract["crop"] == [SMALL, SMALL]
    assert contract["resize"] == {"shorter_side": 73}  # floor(64 / 0.875)
    assert (contract["layout"], contract["channel_order"], contract["pixel_scale"]) == ("NCHW", "RGB", 255.0)
    assert manifest["output"]["shape"] == [1, 1000] and manifest["output"]["class_names"] == "imagenet_classes.txt"


def test_contract_sizes_follow_timm():
    assert resize_for(224, 224) == {"shorter_side": 256}
    assert resize_for(224, 320) == {"height": 256, "width": 365}  # timm: each side int(side / 0.875)
    assert "assumed" in input_contract((1, 3, 224, 224), assumed=True)["source"]


def test_class_names_are_imagenet_in_label_order():
    names = class_names()
    assert len(names) == 1000 and len(set(names)) == 999  # "crane": the bird (134) and the machine (517)
    assert names[0].startswith("tench") and names[281].startswith("tabby") and names[999].startswith("toilet tissue")


@needs_arm_toolchain
@pytest.mark.parametrize("width,height", [(150, 113), (37, 120)], ids=["landscape", "tall"])
def test_runner_preprocessing_matches_pil(xt_arm, runtime, tmp_path, width, height):
    """The runner's --save-input (the C API's parcnet_preprocess_file) equals PIL's resize +
    crop + normalise within 1e-5. The tall image shrinks its height by more than twice as many
    pixels as its width, where Pillow runs the vertical pass first."""
    library, manifest = xt_arm
    image = write_test_image(tmp_path / "image.png", width, height)
    saved = tmp_path / "input.raw"
    done = arm_runtime.run_runner(library, ["--input", str(image), "--save-input", str(saved), "--top", "0"], runtime)
    assert done.returncode == 0, done.stderr
    ours = np.fromfile(saved, np.float32).reshape(manifest["input_shape"])[0]
    expected = pil_eval_preprocess(image, manifest["input"]["crop"], manifest["input"]["resize"]["shorter_side"])
    assert np.abs(ours - expected).max() <= 1e-5


@needs_arm_toolchain
def test_runner_refuses_a_file_that_is_no_image(xt_arm, runtime, tmp_path):
    library, _ = xt_arm
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    refused = arm_runtime.run_runner(library, ["--input", str(bad)], runtime)
    assert refused.returncode == 1 and "not a readable image" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
