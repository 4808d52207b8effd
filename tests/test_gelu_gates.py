"""ARM: the GELUs of channel halves and the GELU gates become calls of our NEON kernel."""

import pytest
from tvm import relax

from parcnet_tvm.gelu_gates import GATE_SYMBOL, GELU_SYMBOL, count_gelu_kernels, rewrite_gelus
from parcnet_tvm.graph import calls
from parcnet_tvm.pipeline import PipelineOptions
from parcnet_tvm.targets import get_target


def _split_module(shape=(1, 4, 4, 16), sections=2, gated=True, swapped=False, axis=-1, dtype="float32"):
    """x -> split -> first * GELU(second), or (GELU(second), first): the split kept for both."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            halves = bb.emit(relax.op.split(x, sections, axis=axis))
            first, second = bb.emit(relax.TupleGetItem(halves, 0)), bb.emit(relax.TupleGetItem(halves, 1))
            gelu = bb.emit(relax.op.nn.gelu(second))
            if gated:
                out = relax.op.multiply(gelu, first) if swapped else relax.op.multiply(first, gelu)
            else:
                out = relax.Tuple([gelu, first])
            out = bb.emit_output(out)
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("swapped", [False, True])
def test_a_gate_of_halves_becomes_one_call_reading_the_split_input(swapped):
    mod, gates, gelus = rewrite_gelus(_split_module(swapped=swapped))
    assert (gates, gelus, count_gelu_kernels(mod)) == (1, 0, 1)
    main = mod["main"]
    assert not calls(main, "relax.split") and not calls(main, "relax.nn.gelu") and not calls(main, "relax.multiply")
    (call,) = calls(main, "relax.call_tir")
    assert call.args[1][0].same_as(main.params[0])  # the split's input, not a copy of a half
    assert [int(n) for n in call.ty.shape] == [1, 4, 4, 8]
    script = mod[call.args[0].name_hint].script()
    # one kernel call per pixel (16), in parallel (the offsets: the numerics test on the board)
    assert GATE_SYMBOL in script and "T.parallel(16)" in script


def test_a_gelu_of_a_half_alone_becomes_a_call_and_the_split_stays_for_the_other_half():
    mod, gates, gelus = rewrite_gelus(_split_module(gated=False))
    assert (gates, gelus) == (0, 1)
    main = mod["main"]
    assert not calls(main, "relax.nn.gelu") and calls(main, "relax.split")
    (call,) = calls(main, "relax.call_tir")
    assert GELU_SYMBOL in mod[call.args[0].name_hint].script()


@pytest.mark.parametrize("case", [
    dict(shape=(1, 4, 4, 12)),                # 6-channel halves: not whole 4-lane vectors
    dict(sections=[4], gated=False),          # a GELU of the last 12 of 16 channels
    dict(shape=(1, 4, 4, 24), sections=3),    # thirds
    dict(shape=(1, 16, 4, 8), axis=1),        # halves of rows, not of channels
    dict(shape=(16, 16)),                     # not an NHWC map
    dict(dtype="float16"),                    # the kernel is fp32
])
def test_what_is_not_a_split_of_fp32_channels_into_halves_is_left_alone(case):
    mod, gates, gelus = rewrite_gelus(_split_module(**case))
    assert (gates, gelus, count_gelu_kernels(mod)) == (0, 0, 0)
    assert calls(mod["main"], "relax.nn.gelu")


def test_arm_builds_call_our_kernel_for_every_block_and_x86_and_exact_maths_do_not(xt_arm, xt_small_x86):
    """The suite's XT builds at 64 (the ARM one verified under qemu by build.py)."""
    from parcnet_tvm.pipeline import cpu_graph_passes, rewrite_gelus_pass

    _, manifest = xt_arm
    blocks = 3 + 3 + 9 + 2  # XT's depths: one gate (MLP) and one GELU (token mixer) per block
    passes = manifest["graph_passes"]
    assert (passes["neon_gelu_gates"], passes["neon_gelus"]) == (blocks, blocks)
    # one kernel per shape: the token mixer's and the MLP's at each of the 4 stages
    assert len(manifest["kernel_schedules"]["neon_gelu"]) == 8
    assert "neon_gelu_gates" not in xt_small_x86[1]["graph_passes"]
    # exact maths keeps libm's erf, which the kernel is not
    assert rewrite_gelus_pass not in cpu_graph_passes(get_target("arm"), PipelineOptions(exact_math=True))
    assert rewrite_gelus_pass in cpu_graph_passes(get_target("arm"), PipelineOptions())
