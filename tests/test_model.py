"""The model zoo: official names, shapes and counts; checkpoints; input sizes."""

import pytest
import torch
import torch.nn.functional as F
from official_reference import official_xt
from support import random_state

from parcnet_tvm import ParcnetError, create_model, load_checkpoint, parse_input_size
from parcnet_tvm.model import draw_verification_weights, stage_map_sizes

# From the official implementation (shared/notes/parcnetv2-architecture.md).
OFFICIAL = {
    "xt": ((48, 96, 192, 320), (3, 3, 9, 2), 7_427_720, 225),
    "t": ((64, 128, 320, 512), (3, 3, 12, 3), 24_935_144, 277),
    "s": ((64, 128, 320, 512), (3, 9, 24, 3), 39_436_520, 499),
    "b": ((96, 192, 384, 576), (3, 9, 24, 3), 56_368_360, 499),
}
KERNELS = (111, 55, 27, 13)


def official_shapes(dims, depths, num_classes=1000):
    """Every key of the official state dict and its shape, from the documented naming scheme."""
    shapes = {
        "downsample_layers.0.conv.weight": (dims[0], 3, 7, 7),
        "downsample_layers.0.conv.bias": (dims[0],),
        "downsample_layers.0.post_norm.weight": (dims[0],),
    }
    for i in (1, 2, 3):
        shapes[f"downsample_layers.{i}.pre_norm.weight"] = (dims[i - 1],)
        shapes[f"downsample_layers.{i}.conv.weight"] = (dims[i], dims[i - 1], 3, 3)
        shapes[f"downsample_layers.{i}.conv.bias"] = (dims[i],)
    for i, (c, depth, k) in enumerate(zip(dims, depths, KERNELS)):
        for j in range(depth):
            p = f"stages.{i}.{j}."
            shapes.update({
                p + "norm1.weight": (c,),
                p + "token_mixer.pwconv1.weight": (2 * c, c, 1, 1),
                p + "token_mixer.pwconv1.bias": (2 * c,),
                p + "token_mixer.dwconv1.conv_h.weight": (c, 1, k, 1),
                p + "token_mixer.dwconv1.conv_w.weight": (c, 1, 1, k),
                p + "token_mixer.dwconv2.weight": (c, 1, 7, 7),
                p + "token_mixer.pwconv2.weight": (c, c, 1, 1),
                p + "norm2.weight": (c,),
                p + "mlp.fc1.weight": (5 * c, c),
                p + "mlp.fc1.bias": (5 * c,),
                p + "mlp.fc2.weight": (c, 5 * c // 2),
            })
            if i >= 2:
                shapes[p + "res_scale1.scale"] = (c,)
                shapes[p + "res_scale2.scale"] = (c,)
    shapes.update({"norm.weight": (dims[3],), "norm.bias": (dims[3],),
                   "head.weight": (num_classes, dims[3]), "head.bias": (num_classes,)})
    return shapes


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_variant_matches_official_names_shapes_and_count(name):
    dims, depths, params, keys = OFFICIAL[name]
    model = create_model(name)
    state = model.state_dict()
    assert not model.training
    assert len(state) == keys
    assert sum(p.numel() for p in model.parameters()) == params
    assert {k: tuple(v.shape) for k, v in state.items()} == official_shapes(dims, depths)


def test_aliases_and_unknown_name():
    assert create_model("parcnetv2_xt", 64).variant.name == "parcnetv2_xt"
    assert create_model("parcnetv2_tiny", 64).variant.name == "parcnetv2_t"
    with pytest.raises(ParcnetError, match="unknown model 'q'.*xt, t, s, b"):
        create_model("q")


def test_input_sizes_are_those_the_official_model_runs():
    assert parse_input_size(224) == (224, 224)
    assert parse_input_size("240x320") == (240, 320)
    assert parse_input_size((200, 100)) == (200, 100)
    assert parse_input_size(3) == (3, 3)  # the stem's smallest input
    for bad in (2, 0, "-64x-64", "224x1"):
        with pytest.raises(ParcnetError, match="too small.*at least 3 pixels"):
            parse_input_size(bad)
    with pytest.raises(ParcnetError, match="not a number"):
        parse_input_size("big")


@pytest.mark.parametrize("size", [(200, 200), (240, 320), (97, 31)])
def test_stage_maps_round_as_the_official_downsampling_does(size):
    reference = official_xt()
    maps, x = [], torch.zeros(1, 3, *size)
    with torch.no_grad():
        for down in reference.downsample_layers:
            x = down(x)
            maps.append(tuple(x.shape[1:3]))
    assert stage_map_sizes(size) == maps
    assert stage_map_sizes((200, 200)) == [(50, 50), (25, 25), (13, 13), (7, 7)]


@pytest.mark.parametrize("size", [192, 200, 256, 320, (240, 320)])
def test_default_model_is_the_official_model_at_every_size(size):
    """Same state dict, any input size: our default model gives the official model's logits
    (kernels 111/55/27/13 with padding k//2), which resizing the kernels does not."""
    state = draw_verification_weights(create_model("xt", 224), 0).state_dict()
    reference = official_xt(state)
    model = create_model("xt", size)
    model.load_state_dict(state)
    height, width = (size, size) if isinstance(size, int) else size
    x = torch.randn(1, 3, height, width)
    with torch.no_grad():
        expected = reference(x)
        assert (model(x) - expected).abs().max() <= 1e-4
        resized = create_model("xt", size, resize_kernels=True)
        resized.load_state_dict(state)
        assert (resized(x) - expected).abs().max() > 1e-3


def test_both_kernel_modes_are_the_official_model_at_224():
    state = draw_verification_weights(create_model("xt", 224), 0).state_dict()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = official_xt(state)(x)
        for resize in (False, True):
            model = create_model("xt", 224, resize_kernels=resize)
            model.load_state_dict(state)
            assert (model(x) - expected).abs().max() <= 1e-4


def test_224_keeps_kernels_as_they_are():
    torch.manual_seed(0)
    model = create_model("xt", 224)
    state = random_state(model)
    model.load_state_dict(state)
    conv = model.stages[0][0].token_mixer.dwconv1
    assert torch.equal(conv.conv_h.weight, state["stages.0.0.token_mixer.dwconv1.conv_h.weight"])
    assert conv.conv_h.padding == (55, 0) and conv.conv_w.padding == (0, 55)


@pytest.mark.parametrize("size", [160, 256, (224, 320)])
def test_resize_kernels_resizes_224_kernels(size, tmp_path):
    """--resize-kernels (the paper, Sec. 3.1): a 224 checkpoint in a model for another size has
    each kernel bilinearly (align_corners) resized to 2H-1 / 2W-1 taps, and the oversized conv
    equals a plain F.conv2d reference."""
    reference = create_model("xt", 224)
    state = random_state(reference)
    path = tmp_path / "ckpt224.pth"
    torch.save(state, path)
    model = load_checkpoint(create_model("xt", size, resize_kernels=True), path)
    height, width = (size, size) if isinstance(size, int) else size
    for stage, stride in enumerate((4, 8, 16, 32)):
        h, w = height // stride, width // stride
        prefix = f"stages.{stage}.0.token_mixer.dwconv1."
        w_h = F.interpolate(state[prefix + "conv_h.weight"], size=(2 * h - 1, 1), mode="bilinear", align_corners=True)
        w_w = F.interpolate(state[prefix + "conv_w.weight"], size=(1, 2 * w - 1), mode="bilinear", align_corners=True)
        conv = model.stages[stage][0].token_mixer.dwconv1
        assert torch.allclose(conv.conv_h.weight, w_h) and torch.allclose(conv.conv_w.weight, w_w)
        x = torch.randn(1, w_h.shape[0], h, w)
        expected = F.conv2d(F.conv2d(x, w_h, padding=(h - 1, 0), groups=x.shape[1]),
                            w_w, padding=(0, w - 1), groups=x.shape[1])
        with torch.no_grad():
            assert torch.allclose(conv(x), expected, atol=1e-6)
    with torch.no_grad():
        assert model(torch.randn(1, 3, height, width)).shape == (1, 1000)


def test_fresh_model_at_other_size_keeps_official_kernels_unless_resized():
    torch.manual_seed(3)
    conv = create_model("xt", 160).stages[0][0].token_mixer.dwconv1.conv_h
    assert conv.weight.shape == (48, 1, 111, 1) and conv.padding == (55, 0)
    conv = create_model("xt", 160, resize_kernels=True).stages[0][0].token_mixer.dwconv1.conv_h
    assert conv.weight.shape == (48, 1, 79, 1) and conv.padding == (39, 0)
    assert 0.0 < conv.weight.std() < 0.05  # trunc_normal(0.02) kernels, resized
