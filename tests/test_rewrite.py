"""The Relax rewrite: one oversized pair per block, nothing else touched, same outputs."""

import numpy as np
import pytest
import tvm
from support import SMALL, slow
from tvm import relax

from parcnet_tvm.build import BuildRequest, build_library
from parcnet_tvm.frontend import import_model
from parcnet_tvm.pipeline import PipelineOptions, compile_relax
from parcnet_tvm.rewrite import count_oversized_convs, rewrite_oversized_convs
from parcnet_tvm.targets import get_target
from parcnet_tvm.verify import load_vm, pytorch_output, reference_input, run_vm
from parcnet_tvm.weights import prepare_model

BLOCKS = {"xt": 17, "t": 21, "s": 39, "b": 39}


def _ops(mod):
    """How many calls of each Relax op `main` makes."""
    counts = {}

    def visit(expr):
        if isinstance(expr, tvm.relax.Call) and isinstance(expr.op, tvm.ir.Op):
            counts[expr.op.name] = counts.get(expr.op.name, 0) + 1

    tvm.relax.analysis.post_order_visit(mod["main"], visit)
    return counts


def _canonical(mod):
    mod = tvm.relax.transform.EliminateCommonSubexpr()(mod)
    return tvm.relax.transform.DeadCodeElimination(["main"])(mod)


@pytest.mark.parametrize("name, frontend", [("xt", "torch"), pytest.param("t", "torch", marks=slow), pytest.param("s", "torch", marks=slow),
                                            pytest.param("b", "torch", marks=slow), ("xt", "onnx"), ("t", "onnx")])
def test_one_pair_per_block_and_nothing_else(name, frontend):
    mod = import_model(prepare_model(name, SMALL), (1, 3, SMALL, SMALL), frontend)
    new, replaced, algos = rewrite_oversized_convs(mod)
    assert replaced == BLOCKS[name] == count_oversized_convs(new) == len(algos)
    # rewrite_call re-normalises the function, which merges identical bindings (the reshapes
    # of equal bias constants); compare both after the same common-subexpression pass.
    before, after = _ops(_canonical(mod)), _ops(_canonical(new))
    assert after.pop("relax.call_tir") == replaced
    before["relax.nn.conv2d"] -= 2 * replaced
    assert after == before  # every other op is still there, untouched


def _pair(weight_h, weight_w, shape, padding_h, padding_w):
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            y = builder.emit(relax.op.nn.conv2d(x, relax.const(weight_h), padding=padding_h, groups=shape[1]))
            z = builder.emit_output(relax.op.nn.conv2d(y, relax.const(weight_w), padding=padding_w, groups=shape[1]))
        builder.emit_func_output(z)
    return builder.get()


def test_rewrite_takes_any_odd_length_padded_to_keep_the_map_and_nothing_else():
    channels, height, width = 8, 6, 6
    shape = (1, channels, height, width)
    taps9 = np.zeros((channels, 1, 9, 1), np.float32)  # the official lengths are not 2H-1 off 224
    ww = np.zeros((channels, 1, 1, 2 * width - 1), np.float32)
    assert rewrite_oversized_convs(_pair(taps9, ww, shape, [4, 0], [0, width - 1]))[1] == 1
    # padding that changes the map's size, and even lengths, stay TVM convs
    assert rewrite_oversized_convs(_pair(taps9, ww, shape, [5, 0], [0, width - 1]))[1] == 0
    taps8 = np.zeros((channels, 1, 8, 1), np.float32)
    assert rewrite_oversized_convs(_pair(taps8, ww, shape, [4, 0], [0, width - 1]))[1] == 0


@pytest.mark.parametrize("name", [pytest.param("xt", marks=slow), pytest.param("t", marks=slow)])
def test_whole_model_unchanged_by_rewrite(name):
    """(The default run compares XT's two builds in the test below, on the session's library.)"""
    shape = (1, 3, SMALL, SMALL)
    model = prepare_model(name, SMALL)
    x = reference_input(shape)
    expected = pytorch_output(model, x)
    mod = import_model(model, shape)
    named = get_target("x86")
    ours = run_vm(load_vm(compile_relax(mod, named, PipelineOptions(custom_op=True)), tvm.cpu()), x, tvm.cpu())
    generic = run_vm(load_vm(compile_relax(mod, named, PipelineOptions(custom_op=False)), tvm.cpu()), x, tvm.cpu())
    assert np.abs(ours - expected).max() <= 1e-4
    assert np.abs(ours - generic).max() <= 1e-4


def test_build_records_op_choice_and_generic_build_still_works(xt_small_x86, tmp_path):
    """The build without our op verifies, and computes what the session's build on our op does."""
    generic = tmp_path / "g.so"
    manifest = build_library(BuildRequest(model="xt", input_size=SMALL, custom_op=False, output=str(generic)),
                             log=lambda *_: None)
    assert manifest["oversized_op"] == {"custom_op": False, "algo": "auto"}
    assert manifest["verification"]["status"] == "passed"
    ours, ours_manifest = xt_small_x86
    assert ours_manifest["oversized_op"]["custom_op"] is True
    x = reference_input((1, 3, SMALL, SMALL), seed=5)
    outputs = [run_vm(load_vm(library, tvm.cpu()), x, tvm.cpu()) for library in (ours, generic)]
    assert np.abs(outputs[0] - outputs[1]).max() <= 1e-4
