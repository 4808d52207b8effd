"""The CPU graph passes: channels-last layout (which transposes are left, 1x1 convs as GEMMs),
LayerNormGeneral as one op. Their numerics (XT and T against PyTorch, <= 1e-4) are checked by
tests/test_rewrite.py::test_whole_model_unchanged_by_rewrite, which builds this pipeline."""

import functools
import re

import pytest
from support import SMALL, slow
from tvm import relax

from parcnet_tvm.frontend import import_model
from parcnet_tvm.graph import calls
from parcnet_tvm.layout import count_transposes, fold_transposes, to_channels_last
from parcnet_tvm.model import VARIANTS
from parcnet_tvm.rewrite import PRIMFUNC_PREFIX, rewrite_oversized_convs
from parcnet_tvm.targets import get_target
from parcnet_tvm.weights import prepare_model

BLOCKS = {name: VARIANTS[name].depths for name in ("xt", "t")}


@functools.cache  # several tests read the same graph
def _channels_last(name):
    mod = import_model(prepare_model(name, SMALL), (1, 3, SMALL, SMALL))
    rewritten, _, _ = rewrite_oversized_convs(mod)
    return mod, to_channels_last(rewritten)


@pytest.mark.parametrize("name", ["xt", pytest.param("t", marks=slow)])
def test_only_the_image_and_our_ops_are_transposed(name):
    imported, mod = _channels_last(name)
    blocks = sum(BLOCKS[name])
    # imported: 2 per block (token mixer in/out), 1 after the stem, 2 per later downsampling
    assert count_transposes(imported) == 2 * blocks + 1 + 2 * 3
    assert count_transposes(mod) == 1 + 2 * blocks
    func = mod["main"]
    ours = [c for c in calls(func, "relax.call_tir") if c.args[0].name_hint.startswith(PRIMFUNC_PREFIX)]
    bound = {}  # var -> the call bound to it

    def collect(expr):
        if isinstance(expr, relax.SeqExpr):
            for block in expr.blocks:
                for binding in block.bindings:
                    bound[binding.var] = binding.value

    relax.analysis.post_order_visit(func, collect)
    our_inputs = {c.args[1][0] for c in ours}
    for transpose in calls(func, "relax.permute_dims"):
        source = transpose.args[0]
        is_image = source.same_as(func.params[0])
        feeds_ours = any(v.same_as(transpose) for v in (bound.get(i) for i in our_inputs) if v is not None)
        reads_ours = source in bound and any(bound[source].same_as(c) for c in ours)
        assert is_image or feeds_ours or reads_ours, "a transpose between blocks is left"


def test_pointwise_convs_become_gemms_with_their_bias():
    _, mod = _channels_last("xt")
    convs = calls(mod["main"], "relax.nn.conv2d")
    assert all(str(c.attrs.data_layout) == "NHWC" for c in convs)
    # left as convolutions: the stem, 3 downsamplings, and one 7x7 depth-wise per block
    assert len(convs) == 1 + 3 + sum(BLOCKS["xt"])
    assert not [c for c in convs if [int(k) for k in c.args[1].ty.shape][:2] == [1, 1]]
    # each block: pwconv1, pwconv2, fc1, fc2 + the head
    matmuls = calls(mod["main"], "relax.matmul")
    assert len(matmuls) == 4 * sum(BLOCKS["xt"]) + 1


def test_transposes_that_cancel_are_removed_and_others_composed():
    x = relax.Var("x", relax.TensorType((1, 2, 3, 4), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        a = bb.emit(relax.op.permute_dims(x, [0, 3, 1, 2]))
        b = bb.emit(relax.op.permute_dims(a, [0, 2, 3, 1]))       # back to x
        c = bb.emit(relax.op.permute_dims(b, [0, 2, 1, 3]))
        d = bb.emit(relax.op.permute_dims(c, [1, 0, 2, 3]))       # composes with c
        bb.emit_func_output(d)
    func = fold_transposes(bb.get()["main"])
    left = calls(func, "relax.permute_dims")
    assert len(left) == 1 and [int(a) for a in left[0].attrs.axes] == [2, 0, 1, 3]
    assert left[0].args[0].same_as(func.params[0])


def test_import_squares_by_multiplying():
    """pow(x, 2) became x * x (CUDA's power kernel gave NaN for negative x on an H200)."""
    mod = import_model(prepare_model("xt", SMALL), (1, 3, SMALL, SMALL))
    assert not calls(mod["main"], "relax.power")
    squares = [c for c in calls(mod["main"], "relax.multiply") if c.args[0].same_as(c.args[1])]
    assert len(squares) == 2 * sum(BLOCKS["xt"]) + 4  # two norms per block, one per downsampling


def test_every_target_runs_the_channels_last_graph(fused_xt):
    """CPUs (the session's fused XT) and CUDA get the same graph passes: LayerNormGeneral as
    one op, the bias-free 1x1 convs (pwconv2) as GEMMs with the residual add, no plain conv2d
    kernel left."""
    from parcnet_tvm.pipeline import fused_module

    cuda = fused_module(import_model(prepare_model("xt", SMALL), (1, 3, SMALL, SMALL)), get_target("cuda"))
    for target, fused in (("x86", fused_xt), ("cuda", cuda)):
        names = [g.name_hint for g in fused.get_global_vars()]
        assert sum(n.startswith("layer_norm_general_") for n in names) == 4, target
        assert not [n for n in names if re.fullmatch(r"conv2d\d*", n)], target

def test_arm_strided_convs_become_im2col_gemms_that_compute_the_same():
    """ARM: the stem and downsampling convs become im2col + GEMM (the reduction padded with
    zeros to a multiple of 4), and the rewritten graph computes what the convs computed."""
    import numpy as np
    import torch
    import tvm

    from parcnet_tvm.frontend import from_torch

    class Convs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 8, 7, stride=4, padding=3)      # depth 147 -> 148
            self.down = torch.nn.Conv2d(8, 16, (3, 5), stride=2, padding=(1, 2))  # depth 120; h != w

        def forward(self, x):
            return self.down(self.stem(x))

    torch.manual_seed(0)
    model, x = Convs().eval(), torch.randn(1, 3, 32, 32)
    mod = from_torch(model, (1, 3, 32, 32))
    plain, gemms = to_channels_last(mod), to_channels_last(mod, im2col_depth_multiple=4)
    assert len(calls(plain["main"], "relax.nn.conv2d")) == 2 and not calls(gemms["main"], "relax.nn.conv2d")
    depths = sorted(int(c.args[1].ty.shape[0]) for c in calls(gemms["main"], "relax.matmul"))
    assert depths == [120, 148]
    outputs = []
    for graph in (plain, gemms):
        result = relax.VirtualMachine(tvm.compile(graph, target="llvm"), tvm.cpu())["main"](tvm.runtime.tensor(x.numpy()))
        outputs.append((result if hasattr(result, "numpy") else result[0]).numpy())
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-5)
    np.testing.assert_allclose(outputs[1], model(x).detach().numpy(), atol=1e-4)
