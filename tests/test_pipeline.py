"""The pipeline as one list of passes per target kind, with what each pass did in the module."""

import pytest
import tvm
from support import SMALL

from parcnet_tvm.frontend import import_model
from parcnet_tvm.pipeline import (
    GRAPH_PASSES,
    PipelineOptions,
    prepare,
    report,
    schedule_passes,
)
from parcnet_tvm.targets import get_target
from parcnet_tvm.weights import prepare_model


@pytest.fixture(scope="module")
def imported_xt():
    return import_model(prepare_model("xt", SMALL), (1, 3, SMALL, SMALL))


def _names(passes) -> list[str]:
    return [p.info.name for p in passes]


def test_each_target_kind_has_its_list_of_passes():
    options = PipelineOptions()
    cpu = _names(GRAPH_PASSES["llvm"](get_target("x86"), options))
    cuda = _names(GRAPH_PASSES["cuda"](get_target("cuda"), options))
    for names in (cpu, cuda):
        assert names[:3] == ["RewriteOversizedConvs", "ToChannelsLast", "FuseLayerNormGeneral"]
        assert names[-1] == "FuseTIR"
    # conditional passes are written in the list: no op rewrite without our op, no database without logs
    assert "RewriteOversizedConvs" not in _names(GRAPH_PASSES["llvm"](get_target("x86"), PipelineOptions(custom_op=False)))
    assert _names(schedule_passes(get_target("x86"), options)) == ["ScheduleKernels"]
    assert _names(schedule_passes(get_target("x86"), PipelineOptions(tuning_logs=("log",)))) == \
        ["ApplyTuningLogs", "ScheduleKernels"]


def test_passes_report_what_they_did(xt_small_x86, fused_xt):
    """What the passes record reaches the build's manifest (the session's XT build), and the
    graph passes alone report the graph, nothing about schedules."""
    _, manifest = xt_small_x86
    done = manifest["graph_passes"]
    assert done["oversized_pairs"] == 17 and sum(done["oversized_algos"].values()) == 17
    assert done["layer_norms_fused"] == 38
    # every kernel of the fused graph got its schedule from one rule, none from a database
    kernels = sum(len(k) for k in manifest["kernel_schedules"].values())
    assert kernels == sum(isinstance(f, tvm.tirx.PrimFunc) for _, f in fused_xt.functions_items()) > 20
    assert manifest["tuning_database"] is None and "tuning_database" not in manifest["kernel_schedules"]
    fused = report(fused_xt)
    assert fused["oversized_pairs"] == 17 and "kernel_schedules" not in fused


def test_tvm_default_runs_none_of_our_passes(imported_xt):
    untouched = prepare(imported_xt, get_target("x86"), PipelineOptions(tvm_default=True))
    assert untouched.same_as(imported_xt) and report(untouched) == {}


def test_a_parcnet_error_raised_inside_a_pass_reaches_the_caller_as_itself(imported_xt):
    """No module-global list carries it past TVM's FFI: the error object itself, once."""
    import tvm

    from parcnet_tvm import ParcnetError
    from parcnet_tvm.pipeline import run_passes

    refusal = ParcnetError("this pass refuses the module: a fix")

    @tvm.transform.module_pass(opt_level=0, name="Refuses")
    class Refuses:
        def transform_module(self, mod, _ctx):
            raise refusal

    seen = []

    @tvm.transform.module_pass(opt_level=0, name="Sees")
    def sees(mod, _ctx):
        seen.append(mod)
        return mod

    with pytest.raises(ParcnetError) as caught:
        run_passes([sees, Refuses(), sees], imported_xt)
    assert caught.value is refusal and len(seen) == 1  # TVM's own passes still run through the FFI
    assert run_passes([sees], imported_xt) is not None and len(seen) == 2
