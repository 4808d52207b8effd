"""The Relax rewrite: one oversized pair per block, nothing else touched, same outputs."""

import numpy as np
import pytest
import tvm
from support import SMALL, slow

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


@pytest.mark.parametrize("name, frontend", [("xt", "torch"), ("t", "torch"), pytest.param("s", "torch", marks=slow),
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


def test_rewrite_skips_convs_that_are_not_oversized():
    from parcnet_tvm.bench_op import conv_pair_module

    channels, height, width = 8, 6, 6
    too_short = np.zeros((channels, 1, 2 * height - 3, 1), np.float32)  # 9 taps over 6 rows
    ww = np.zeros((channels, 1, 1, 2 * width - 1), np.float32)
    mod = conv_pair_module(too_short, ww, (1, channels, height, width))
    _, replaced, _ = rewrite_oversized_convs(mod)
    assert replaced == 0


@pytest.mark.parametrize("name", ["xt", pytest.param("t", marks=slow)])
def test_whole_model_unchanged_by_rewrite(name):
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


def test_build_records_op_choice_and_generic_build_still_works(tmp_path):
    manifest = build_library(BuildRequest(model="xt", input_size=SMALL, custom_op=False, output=str(tmp_path / "g.so")),
                             log=lambda *_: None)
    assert manifest["oversized_op"] == {"custom_op": False, "algo": "auto"}
    assert manifest["verification"]["status"] == "passed"
