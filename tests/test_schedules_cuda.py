"""The CUDA path: compile-only checks that run anywhere (nvcc, no GPU), and GPU checks that skip
with the reason when no GPU is visible (CI has none)."""

import numpy as np
import pytest
import tvm
from gpu_emulation import call_on_cpu, emulated_library, run_on_cpu
from support import SMALL, slow
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.runner import PyRunner, RunnerResult

from parcnet_tvm.frontend import import_model
from parcnet_tvm.pipeline import PipelineOptions, fused_module, prepare, report
from parcnet_tvm.schedules import schedule_kernels
from parcnet_tvm.schedules.cuda_depthwise import DepthwiseConvCuda
from parcnet_tvm.targets import get_target, local_cuda_arch
from parcnet_tvm.tuning.budget import TuneBudget
from parcnet_tvm.tuning.device import device_for
from parcnet_tvm.tuning.measurement import Measurement, PooledBuilder, _FinishedFuture
from parcnet_tvm.tuning.tasks import tune_fused_module
from parcnet_tvm.tuning_log import open_database
from parcnet_tvm.verify import load_vm, pytorch_output, reference_input, run_vm
from parcnet_tvm.weights import prepare_model


def needs_gpu(test):
    """A GPU test: skipped with the reason where no GPU is visible; `pytest -m gpu` runs only these."""
    return pytest.mark.gpu(pytest.mark.skipif(local_cuda_arch() is None, reason="no CUDA GPU visible (CI has none)")(test))


def compile_only(named) -> Measurement:
    """Tuning for the GPU target without a GPU: candidates are compiled, not timed (records of
    the target's device, cuda-sm_90, as a GPU run would write)."""
    return Measurement("local", PooledBuilder(2), BuiltOnlyRunner(), "no GPU: compile only", device=device_for(named))


@derived_object
class BuiltOnlyRunner(PyRunner):
    """Stands in for the GPU: every candidate that compiled (MetaSchedule runs only those)
    'ran' in 1 ms; the artifacts it was given are kept."""

    def __init__(self):
        super().__init__()
        self.artifacts = []

    def run(self, runner_inputs):
        self.artifacts += [r.artifact_path for r in runner_inputs]
        return [_FinishedFuture(RunnerResult(run_secs=[1e-3], error_msg=None)) for _ in runner_inputs]


@pytest.fixture(scope="module")
def imported_xt():
    return import_model(prepare_model("xt", SMALL), (1, 3, SMALL, SMALL), "torch")


@pytest.mark.parametrize("only, algo", [(("oversized_conv",), "direct"),
                                        pytest.param(("oversized_conv",), "toeplitz", marks=slow),
                                        pytest.param(None, "auto", marks=slow)])
def test_cuda_tuning_candidates_compile_and_compute_without_a_gpu(imported_xt, tmp_path, only, algo):
    """MetaSchedule's CUDA design spaces (our op's rule for each algorithm, and TVM's rules for
    the heaviest other tasks) produce candidates that nvcc compiles, what tune.py --target cuda
    measures on a GPU, and that compute what they replace (emulated on this CPU: each of our
    op's candidates; the whole model built from the database)."""
    named = get_target("cuda", cuda_arch="sm_90")
    fused = fused_module(imported_xt, named, PipelineOptions(oversized_algo=algo))
    measurement = compile_only(named)
    runner = measurement.runner
    summary = tune_fused_module(fused, named, tmp_path, TuneBudget(8, 4, 4), measurement, only=only,
                                log=lambda *_: None)
    # every candidate compiled (MetaSchedule may measure a few past the budget's 8)
    assert summary.trials_new >= 8 and len(runner.artifacts) == summary.trials_new
    records = open_database(tmp_path).get_all_tuning_records()
    assert len(records) == summary.trials_new
    if only:  # our op's candidates also compute the op (run thread by thread on this CPU)
        for record in records:
            _assert_candidate_computes_its_workload(record)
    else:  # the whole program built from this database computes the model
        _assert_emulated_build_matches_pytorch(prepare(imported_xt, named, PipelineOptions(tuning_logs=(tmp_path,))), named)


def _assert_emulated_build_matches_pytorch(prepared, named, model="xt", batch=1):
    """The whole program of a CUDA build (our rules, the database's records), every kernel run
    thread by thread on this CPU, against PyTorch."""
    x = reference_input((batch, 3, SMALL, SMALL))
    actual = run_vm(load_vm(emulated_library(prepared, named.target), tvm.cpu()), x, tvm.cpu())
    assert np.abs(actual - pytorch_output(prepare_model(model, SMALL), x)).max() <= 1e-4


# What schedules a CUDA build of our models: one rule of ours per op family, no fallback.
CUDA_RULE_NAMES = {"oversized_conv", "cuda_gemm", "cuda_depthwise_conv", "cuda_layer_norm_general",
                   "cuda_elementwise", "cuda_reduction"}


@pytest.mark.parametrize("model, size, batch", [pytest.param("t", 224, 32, marks=slow), ("xt", 224, 1)])
def test_cuda_graph_is_channels_last_and_every_kernel_is_ours(model, size, batch):
    """The configurations gpu_checks.sh tunes and benchmarks: every conv runs channels-last
    (the 1x1 convs as GEMMs), each LayerNormGeneral is one kernel, and every kernel is
    scheduled by one of our rules (none by a fallback)."""
    named = get_target("cuda", cuda_arch="sm_90")
    fused = fused_module(import_model(prepare_model(model, size), (batch, 3, size, size)), named)
    scripts = {var.name_hint: func.script() for var, func in fused.functions_items()
               if isinstance(func, tvm.tirx.PrimFunc)}
    assert not [name for name, text in scripts.items() if "conv2d_nchw" in text]
    assert sum('T.sblock("matmul")' in text for text in scripts.values()) >= 12
    assert sum(name.startswith("layer_norm_general") for name in scripts) == 4  # one kernel per stage's shape
    _, schedules = schedule_kernels(fused, named.target)
    assert set(schedules) == CUDA_RULE_NAMES, schedules


@pytest.mark.parametrize("model", ["xt", pytest.param("t", marks=slow)])
def test_whole_cuda_program_matches_pytorch_in_emulation(model):
    """Every kernel of an untuned CUDA build, scheduled by our rules (tiled GEMMs with their
    shared-memory stages, implicit-GEMM convs, warp-reduced norms, tiled transposes), run
    thread by thread on this CPU: the whole program against PyTorch."""
    named = get_target("cuda", cuda_arch="sm_90")
    batch = 2
    mod = import_model(prepare_model(model, SMALL), (batch, 3, SMALL, SMALL))
    prepared = prepare(mod, named)
    assert set(report(prepared)["kernel_schedules"]) == CUDA_RULE_NAMES
    _assert_emulated_build_matches_pytorch(prepared, named, model, batch)


def _random_args(func, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal([int(d) for d in p.shape]).astype(str(p.dtype)) for p in func.params]


def _assert_emulation_matches_cpu_build(scheduled: tvm.IRModule, unscheduled: tvm.IRModule, what: str):
    """A GPU-scheduled module run thread by thread on this CPU against the same computation
    unscheduled and built for the CPU, on random inputs (outputs are the last parameters;
    every parameter is compared)."""
    name = scheduled.get_global_vars()[0].name_hint
    arrays = _random_args(scheduled[name])
    emulated = run_on_cpu(scheduled, arrays, name)
    reference = call_on_cpu(unscheduled, arrays, unscheduled.get_global_vars()[0].name_hint)
    error = max(float(np.abs(e - r).max()) for e, r in zip(emulated, reference))
    assert error <= 1e-4, f"{what}: max abs error {error}"


def _assert_candidate_computes_its_workload(record):
    sch = tvm.s_tir.Schedule(record.workload.mod)
    record.trace.apply_to_schedule(sch, remove_postproc=False)
    _assert_emulation_matches_cpu_build(sch.mod, record.workload.mod, f"candidate {record.trace}"[:200])


@pytest.fixture(scope="module")
def fused_xt_cuda(imported_xt):
    named = get_target("cuda", cuda_arch="sm_90")
    return fused_module(imported_xt, named), named


def _depthwise_kernels(fused_xt_cuda):
    """{name: (unscheduled PrimFunc, our scheduled module or None)} for XT's PrimFuncs that hold
    a grouped conv, on CUDA."""
    fused, named = fused_xt_cuda
    kernels = {}
    for var, func in fused.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc) and "group_conv2d_nhwc" in func.script():
            func = func.with_attr("global_symbol", var.name_hint)
            sch = DepthwiseConvCuda().apply(func, named.target, False)
            kernels[var.name_hint] = (func, None if sch is None else sch.mod)
    return kernels


def test_depthwise_convs_get_our_cuda_schedule(fused_xt_cuda):
    """dlight has no rule for the 7x7 depth-wise convs (it gives every output its own thread
    block); ours matches each of XT's, channels-last with the add and gate after it, and
    compiles to one kernel whose threads each keep a row of outputs in registers."""
    _, named = fused_xt_cuda
    kernels = _depthwise_kernels(fused_xt_cuda)
    assert len(kernels) == 4  # one per stage
    for name, (_, scheduled) in kernels.items():
        assert scheduled is not None, f"{name} was not matched"
        source = tvm.compile(scheduled, target=named.target).mod.imports[0].inspect_source()
        assert source.count("__global__") == 2  # declaration + definition of one kernel
        assert "_local_ptr[" in source  # register accumulators
        # output, input, taps and the two inputs of the fused add and gate: one kernel for all
        assert source.split("_kernel(")[1].split(")")[0].count("float*") == 5


@slow  # CUDA tuning candidates stay in the default run
def test_depthwise_convs_are_tuned_within_our_schedule(fused_xt_cuda, tmp_path):
    """MetaSchedule's candidates for the depth-wise convs are our schedule with a sampled row
    tile (they compile, keep the accumulators in registers and compute the conv), not its
    generic tiling."""
    fused, named = fused_xt_cuda
    names = tuple(_depthwise_kernels(fused_xt_cuda))
    measurement = compile_only(named)
    summary = tune_fused_module(fused, named, tmp_path, TuneBudget(8, 4, 4), measurement, only=names,
                                log=lambda *_: None)
    assert summary.trials_new >= 8
    for index, record in enumerate(open_database(tmp_path).get_all_tuning_records()):
        assert "sample_categorical" in str(record.trace)  # our row tile, sampled
        sch = tvm.s_tir.Schedule(record.workload.mod)
        record.trace.apply_to_schedule(sch, remove_postproc=False)
        assert "conv2d_nhwc_intermediate_local" in sch.mod.script()  # our register accumulators
        if index < 3:  # a few run thread by thread (seconds each)
            _assert_candidate_computes_its_workload(record)


# ---------------------------------------------------------------- on a GPU (skipped in CI)

KNOB_CASES = [("direct", "hw"), ("toeplitz", "hw"), ("direct", "h"), ("direct", "w")]


def _op_with_knob(algo, passes, value, monkeypatch):
    """Our op (24 channels of 8x12) scheduled for CUDA with its knob (Toeplitz: rows per
    block; direct: channels per block) forced to `value`; with its inputs and expected output."""
    from test_oversized import _te_func

    import parcnet_tvm.schedules.cuda_oversized as cuda_schedules

    func, x, constants, expected = _te_func(24, 8, 12, algo, passes)
    monkeypatch.setattr(cuda_schedules, "knob", lambda sch, candidates, default, tunable: value)
    sch = cuda_schedules.OversizedConvCuda().apply(func, get_target("cuda", cuda_arch="sm_90").target, False)
    return sch.mod, [x, *constants, np.zeros_like(x)], expected


@pytest.mark.parametrize("algo, passes", KNOB_CASES)
@pytest.mark.parametrize("value", [1, 2, 4, 8])
def test_our_cuda_schedules_compute_the_op_for_every_knob_value(algo, passes, value, monkeypatch):
    """Every value the search can pick for the knob, the kernel run thread by thread on this
    CPU (tests/gpu_emulation.py): which outputs each thread owns and what each block stages."""
    mod, arrays, expected = _op_with_knob(algo, passes, value, monkeypatch)
    assert np.abs(run_on_cpu(mod, arrays)[-1] - expected).max() <= 1e-4


@needs_gpu
@pytest.mark.parametrize("algo, passes", KNOB_CASES)
@pytest.mark.parametrize("value", [1, 2, 4, 8])
def test_our_cuda_kernels_match_the_reference_for_every_knob_value(algo, passes, value, monkeypatch):
    """The same, run on the GPU."""
    mod, arrays, expected = _op_with_knob(algo, passes, value, monkeypatch)
    executable = tvm.compile(mod, target=get_target("cuda").target)
    args = [tvm.runtime.tensor(a, tvm.cuda(0)) for a in arrays]
    executable.mod["main"](*args)
    assert np.abs(args[-1].numpy() - expected).max() <= 1e-4


@needs_gpu
def test_cuda_library_matches_pytorch_on_the_gpu(tmp_path):
    from parcnet_tvm.build import BuildRequest, build_library

    manifest = build_library(BuildRequest(model="xt", target="cuda", input_size=SMALL, batch=2,
                                          output=str(tmp_path / "xt_cuda.so")), log=lambda *_: None)
    assert manifest["verification"]["status"] == "passed"
    assert manifest["verification"]["max_abs_error"] <= 1e-4


@needs_gpu
def test_cuda_bench_times_every_gpu_backend(tmp_path):
    import json

    from support import run_script

    out = tmp_path / "cuda.json"
    done = run_script("bench.py", "--target", "cuda", "--model", "xt", "--input-size", SMALL, "--repeat", 3,
                      "--backends", "pytorch-eager", "tvm-untuned", "tvm-ours", "--json", out)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {r["backend"]: r for r in json.loads(out.read_text())}
    for name in ("pytorch-eager", "tvm-untuned", "tvm-ours"):
        assert rows[name]["median_ms"] > 0 and rows[name]["peak_mem_mb"] is not None
    assert "CUDA" in done.stdout and "cuDNN" in done.stdout


def _kernel_arguments(main) -> dict:
    """{kernel name: [(shape, dtype), ...]} for every call_tir in a Relax main: inputs, then outputs."""
    kernels = {}
    for block in main.body.blocks:
        for binding in block.bindings:
            call = binding.value
            if getattr(getattr(call, "op", None), "name", "") != "relax.call_tir":
                continue
            out = call.ty_args[0]
            tensors = [arg.ty for arg in call.args[1].fields] + (list(out.fields) if hasattr(out, "fields") else [out])
            kernels[call.args[0].name_hint] = [([int(d) for d in t.shape], str(t.dtype)) for t in tensors]
    return kernels


@needs_gpu
def test_every_kernel_of_the_default_cuda_build_matches_its_cpu_build():
    """Kernel by kernel (TVM's default CUDA build: dlight's GPU rules) against the same kernel
    built for this CPU, on random inputs: names the kernel when a whole-model build goes wrong."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline
    from tvm.relax.backend.cuda import pipeline as cuda_pipeline

    mod = import_model(prepare_model("xt", SMALL), (2, 3, SMALL, SMALL), "torch")
    lowered = {}
    for name, target, pipeline in (("cuda", get_target("cuda").target, cuda_pipeline),
                                   ("cpu", get_target("x86").target, cpu_pipeline)):
        with target:
            lowered[name] = tvm.transform.Sequential(pipeline.library_dispatch_passes(target)
                                                     + pipeline.legalize_passes(target))(mod)
    arguments = _kernel_arguments(lowered["cuda"]["main"])
    assert arguments == _kernel_arguments(lowered["cpu"]["main"])
    rng = np.random.default_rng(0)
    wrong = {}
    for name, specs in arguments.items():
        values = [rng.standard_normal(shape).astype(dtype) if "float" in dtype else np.zeros(shape, dtype)
                  for shape, dtype in specs]
        outputs = {}
        for kind, target, device in (("cuda", get_target("cuda").target, tvm.cuda(0)),
                                     ("cpu", get_target("x86").target, tvm.cpu(0))):
            func = lowered[kind][name].with_attr("global_symbol", name)
            kernel = tvm.compile(tvm.IRModule({name: func}), target=target)
            args = [tvm.runtime.tensor(v, device) for v in values]
            kernel[name](*args)
            outputs[kind] = [a.numpy() for a in args]
        error = max(float(np.abs(a - b).max()) for a, b in zip(outputs["cuda"], outputs["cpu"]))
        if not error <= 1e-3:
            wrong[name] = error
    assert not wrong, f"CUDA kernels that differ from their CPU build: {wrong}"


def test_our_depthwise_schedule_computes_the_convs_and_their_fused_ops(fused_xt_cuda):
    """Each of XT's depth-wise kernels (conv, add, gate) as scheduled for CUDA, run thread by
    thread on this CPU, against the same PrimFunc built for the CPU."""
    for name, (func, scheduled) in _depthwise_kernels(fused_xt_cuda).items():
        _assert_emulation_matches_cpu_build(scheduled, tvm.IRModule({name: func}), name)


@needs_gpu
def test_our_depthwise_kernels_match_their_cpu_build(fused_xt_cuda):
    cuda, cpu = get_target("cuda"), get_target("x86")
    for name, (func, scheduled) in _depthwise_kernels(fused_xt_cuda).items():
        values = _random_args(func)
        outputs = []
        for target, device, mod in ((cuda, tvm.cuda(0), scheduled), (cpu, tvm.cpu(0), tvm.IRModule({name: func}))):
            args = [tvm.runtime.tensor(v, device) for v in values]
            tvm.compile(mod, target=target.target)[name](*args)
            outputs.append(args[-1].numpy())
        assert np.abs(outputs[0] - outputs[1]).max() <= 1e-4, name
