"""Build stage: model -> Relax -> our pipeline (`pipeline.py`) -> compiled library for a named
target -> manifest + verification."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import tvm

from . import manifest as manifest_io
from . import outputs
from .errors import ParcnetError
from .fast_math import uses_fast_erf
from .frontend import import_model, import_onnx_file
from .input_contract import input_contract, output_contract
from .model import parse_input_size, variant_key
from .onnx_file import load_onnx_file
from .oversized import check_algo
from .params import describe as describe_weights
from .params import lift_weights
from .params import path_for as weights_path
from .params import save as save_weights
from .pipeline import (
    PipelineOptions,
    codegen,
    lower,
    planned_bytes,
    prepare,
    report,
    uses_cuda_graph,
)
from .targets import NamedTarget, get_target, host_cpu_description
from .tuning.device import check_build_log
from .tuning_log import check_log_target, database_summary, require_log
from .verify import raise_on_failure, verify_against
from .weights import WEIGHT_SEED, prepare_model


@dataclass
class BuildRequest:
    model: str = "xt"
    target: str = "x86"
    input_size: object = 224
    batch: int = 1
    checkpoint: str | None = None
    resize_kernels: bool = False  # the paper's 2H-1 kernels instead of the official lengths
    onnx: str | None = None       # build from this ONNX export instead of our PyTorch model
    frontend: str = "torch"
    output: str | None = None
    cuda_arch: str | None = None
    mcpu: str | None = None
    verify: bool = True
    custom_op: bool = True        # our oversized-conv op; False keeps TVM's conv2d for it
    oversized_algo: str = "auto"  # auto | direct | toeplitz
    tvm_default: bool = False     # TVM's default build of everything: the untuned baseline
    tuning_log: object = None     # a tuning log dir (or a list of them) to apply
    logs_must_apply: bool = True  # a log that gives no kernel its schedule is an error
    device: str | None = None     # the device the library is for (tuning.device ids; default: this CPU / the GPU arch)
    any_device: bool = False      # apply logs another device measured (default: refused)
    exact_math: bool = False      # keep libm erf in GELU instead of the fast polynomial
    cuda_graph: bool = True       # CUDA: replay the kernels from a CUDA graph (pipeline.uses_cuda_graph)
    named_target: object = None   # the target as a job resolved it already (tune_job): used as it is

    def tuning_logs(self) -> list:
        if isinstance(self.tuning_log, (str, Path)):
            return [self.tuning_log]
        return list(self.tuning_log or [])

    def pipeline_options(self) -> PipelineOptions:
        return PipelineOptions(custom_op=self.custom_op, oversized_algo=self.oversized_algo,
                               exact_math=self.exact_math, tuning_logs=tuple(self.tuning_logs()),
                               tvm_default=self.tvm_default, cuda_graph=self.cuda_graph)

    def output_path(self) -> Path:
        if self.output:
            return Path(self.output)
        if self.onnx:
            return Path("build") / f"{Path(self.onnx).stem}-{self.target}{f'-b{self.batch}' if self.batch != 1 else ''}.so"
        name = manifest_io.artifact_name(variant_key(self.model), self.target, parse_input_size(self.input_size),
                                         self.batch, self.resize_kernels)
        return Path("build") / f"{name}.so"


def check_onnx_request(onnx, checkpoint, resize_kernels) -> None:
    """An ONNX file carries its own weights and kernels: refuse options that would change them."""
    if onnx and checkpoint:
        raise ParcnetError("--onnx builds the file's own weights: drop --checkpoint (or build from the "
                           "checkpoint without --onnx)")
    if onnx and resize_kernels:
        raise ParcnetError("--resize-kernels changes our PyTorch model; an ONNX file keeps the kernels it "
                           "was exported with: export it from a model built that way instead")


def returned_shape(mod) -> tuple[int, ...]:
    """The shape of what the imported module's main returns (its first output)."""
    info = mod["main"].ret_ty  # TVM 0.27's name for the return struct info
    info = info.fields[0] if hasattr(info, "fields") else info
    return tuple(int(d) for d in info.shape.values)


@dataclass(frozen=True)
class BuildJob:
    """A build request resolved once, before the import and the compile: what every stage reads."""
    request: BuildRequest        # the options as asked
    target: NamedTarget          # with the detected CPU (or the GPU arch)
    input_shape: tuple           # (batch, 3, H, W); an ONNX file's own
    output: Path
    options: PipelineOptions
    tuning_logs: tuple
    onnx_model: object = None    # the user's ONNX file, loaded (onnx_file.OnnxFileModel)


def build_library(request: BuildRequest, log=print) -> dict:
    """Build, export and verify one library; returns its manifest (also written beside it)."""
    job = resolve_build(request, log)
    log(f"target: {job.target.description}")
    started = time.perf_counter()
    model, mod, frontend = import_model_of(job, log)
    imported = time.perf_counter()
    log(f"[2/4] imported through {frontend} in {imported - started:.1f} s")
    prepared, done = prepare_and_report(mod, job, log)
    # The weights leave the code: OUT.params beside OUT.so, held once in memory (params.py).
    prepared, weights = lift_weights(prepared)
    lowered = lower(prepared, job.target, job.options)
    executable = codegen(lowered, job.target, job.options)
    # Written beside the output under other names (outputs.py), renamed into place together
    # only once they have verified: a failed, interrupted or disk-full build leaves what was
    # at `output` untouched.
    output = job.output
    with outputs.replacing(output, weights_path(output), manifest_io.path_for(output)) as (library, _, manifest_file):
        _export(job.target, executable, weights, library)
        compiled = time.perf_counter()
        log(f"[3/4] compiled and exported in {compiled - imported:.1f} s")
        manifest = describe_library(job, model, mod, frontend, done, library, planned_bytes(lowered), len(weights))
        manifest["build_seconds"] = round(compiled - started, 1)
        manifest["verification"] = _verify(job, model, library, log)
        manifest_file.write_text(manifest_io.dumps(manifest))
    log(f"      {output} and its manifest {manifest_io.path_for(output).name}")
    return manifest


def resolve_build(request: BuildRequest, log) -> BuildJob:
    """Check everything that can be checked before the import and the compile, and resolve
    the target, input shape, output and logs once."""
    named_target = request.named_target or get_target(request.target, cuda_arch=request.cuda_arch, mcpu=request.mcpu)
    named_target.check_toolchain()
    input_size = parse_input_size(request.input_size)
    if request.batch < 1:
        raise ParcnetError(f"batch {request.batch} must be >= 1")
    check_onnx_request(request.onnx, request.checkpoint, request.resize_kernels)
    output = request.output_path()
    manifest_io.check_output(output)
    check_algo(request.oversized_algo)
    tuning_logs = tuple(request.tuning_logs())
    if tuning_logs and request.tvm_default:
        raise ParcnetError("a tuning log applies to our pipeline, not to --tvm-default-schedules: drop one of them")
    for log_dir in tuning_logs:
        require_log(log_dir)
        check_log_target(log_dir, named_target, log=lambda *_: None)  # another kind of device: refused first
        check_build_log(log_dir, named_target, request.device, request.any_device, log)
    onnx_model = load_onnx_file(request.onnx, request.batch) if request.onnx else None
    input_shape = tuple(onnx_model.input_shape) if onnx_model else (request.batch, 3, *input_size)
    return BuildJob(request, named_target, input_shape, output, request.pipeline_options(), tuning_logs, onnx_model)


def import_model_of(job: BuildJob, log) -> tuple:
    """(model, Relax module, frontend name) of our PyTorch model or the user's ONNX file."""
    request = job.request
    if job.onnx_model:  # the user's export; verified against onnxruntime on the same file
        log(f"[1/4] ONNX file {request.onnx}, input {list(job.input_shape)} (batch fixed, shape arithmetic folded)")
        return job.onnx_model, import_onnx_file(job.onnx_model), "onnx-file"
    model = prepare_model(request.model, job.input_shape[2:], request.checkpoint, request.resize_kernels)
    log(f"[1/4] model {model.variant.name}, input {list(job.input_shape)}")
    return model, import_model(model, job.input_shape, request.frontend), request.frontend


def prepare_and_report(mod, job: BuildJob, log) -> tuple:
    """Our graph passes and schedules (`pipeline.prepare`), and what they did, said once."""
    prepared = prepare(mod, job.target, job.options, log)
    done = report(prepared)
    if done:
        algos = ", ".join(f"{n} {a}" for a, n in done.get("oversized_algos", {}).items()) or "none"
        log(f"      {done.get('oversized_pairs', 0)} oversized conv pairs on our op ({algos}); channels-last, "
            f"{done['transposes_left']} transposes left; {done['layer_norms_fused']} LayerNormGeneral chains as one op")
    if job.tuning_logs:
        log(f"      tuning log: {done['kernels_from_database']} of {done['kernels']} kernels from the database, "
            f"{done['kernels'] - done['kernels_from_database']} from our hand rules")
        if job.request.logs_must_apply and not done["kernels_from_database"]:
            raise ParcnetError(f"tuning log {', '.join(map(str, job.tuning_logs))} has no record for any kernel of "
                               "this build: it was tuned for another model, input size or batch; tune this one "
                               "(scripts/tune.py) or drop --tuning-log")
    return prepared, done


def _export(named_target, executable, weights: dict, library: Path) -> None:
    """The code as `library`, the weights beside it. A full disk becomes the OSError that names
    the file (a write() error names none, and TVM's linker reports it as text in a RuntimeError)."""
    for path, write in ((library, lambda: named_target.export_library(executable, library)),
                        (weights_path(library), lambda: save_weights(weights, weights_path(library)))):
        try:
            write()
        except (OSError, RuntimeError) as err:
            if outputs.is_disk_full(err):
                raise outputs.disk_full_error(err, outputs.final(path)) from None
            raise


def _verify(job: BuildJob, model, library: Path, log) -> dict:
    result = verify_against(model, library, job.target, job.input_shape) if job.request.verify \
        else {"status": "not run"}
    if result["status"] == "passed":
        log(f"[4/4] verified against {result['reference'].split()[0]}: max abs error "
            f"{result['max_abs_error']:.2e} <= {result['tolerance']:g}")
    else:
        log(f"[4/4] verification {result['status']}" + (f": {result['reason']}" if "reason" in result else ""))
    raise_on_failure(result, job.output, kept_note=f" (nothing written: {job.output} is as it was)")
    return result


def describe_library(job: BuildJob, model, mod, frontend: str, done: dict, library: Path,
                     activation_bytes: int, tensors: int) -> dict:
    """The manifest of a built library (`library`, still under its partial name; `job.output`
    is where it goes)."""
    request, named_target, input_shape, output = job.request, job.target, job.input_shape, job.output
    tuning_logs = job.tuning_logs
    saved_weights = describe_weights(weights_path(library), tensors)
    return {
        "library": output.name,
        "model": model.name if request.onnx else model.variant.name,
        "input_size": list(input_shape[2:]),
        "input_shape": list(input_shape),
        # the input contract (official evaluation preprocessing) and the output, for the runner,
        # the C API and the Python API: input_contract.py
        "input": input_contract(input_shape, assumed=bool(request.onnx)),
        "output": output_contract(*returned_shape(mod)),
        "resize_kernels": request.resize_kernels,
        "dtype": "float32",
        "frontend": frontend,
        "onnx_file": {"path": str(Path(request.onnx).resolve()), "sha256": manifest_io.sha256(request.onnx)}
        if request.onnx else None,
        "target_name": named_target.name,
        "target": named_target.as_dict(),
        "target_description": named_target.description,
        # the CPU the x86 library was built on and for, as detected (cpuid + sysfs): its tiles
        "cpu": host_cpu_description() if named_target.name == "x86" else None,
        "tvm_version": tvm.__version__,
        "pipeline": manifest_io.pipeline_fingerprint(),
        "tuning_database": None if not tuning_logs else {
            "logs": [database_summary(d) for d in tuning_logs],
            "kernels_from_database": done["kernels_from_database"],
            "kernels_from_hand_rules": done["kernels"] - done["kernels_from_database"],
        },
        # what the graph passes did (oversized_pairs, layer_norms_fused, ...): {} for TVM's default
        "graph_passes": {k: v for k, v in done.items() if k not in ("kernel_schedules", "kernels",
                                                                     "kernels_from_database")},
        "math": "fast-erf GELU" if uses_fast_erf(named_target.target.kind.name, request.exact_math)
                and not request.tvm_default else "exact",
        "schedules": "tvm-default" if request.tvm_default else "ours",
        # rule name -> kernels it scheduled (ours, `tuning_database`, or a fallback)
        "kernel_schedules": done.get("kernel_schedules", {}),
        "cuda_graph": uses_cuda_graph(named_target, job.options),
        "oversized_op": {"custom_op": request.custom_op and not request.tvm_default,
                         "algo": request.oversized_algo},
        "weights": {"in": "the ONNX file"} if request.onnx else {
            "checkpoint": str(Path(request.checkpoint).resolve()) if request.checkpoint else None,
            "sha256": manifest_io.sha256(request.checkpoint) if request.checkpoint else None,
            "seed": None if request.checkpoint else WEIGHT_SEED,
        },
        "sha256": manifest_io.sha256(library),
        "params": {**saved_weights, "file": weights_path(output).name},
        # what running the library holds besides its code: weights once, planned activations
        "memory": {"weights_bytes": saved_weights["bytes"],
                   "planned_activation_bytes": activation_bytes,
                   "library_bytes": library.stat().st_size},
        "build_seconds": None,
        "verification": {"status": "not run"},
    }
