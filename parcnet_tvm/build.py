"""Build stage: model -> Relax -> compiled library for a named target -> manifest + verification."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import tvm
from tvm import relax

from schedules import FROM_DATABASE, schedule_kernels

from . import manifest as manifest_io
from .fast_math import legalize_map
from .errors import ParcnetError
from .frontend import import_model
from .layout import to_channels_last
from .norm import fuse_layer_norms
from .oversized import check_algo
from .rewrite import rewrite_oversized_convs
from .tuning_log import apply_database, database_summary
from .model import parse_input_size, variant_key
from .targets import NamedTarget, get_target
from .verify import raise_on_failure, verify_against
from .weights import WEIGHT_SEED, model_from_manifest, prepare_model  # noqa: F401  (model_from_manifest: verify, timing, arm_bundle import it from here)



@dataclass
class BuildRequest:
    model: str = "xt"
    target: str = "x86"
    input_size: object = 224
    batch: int = 1
    checkpoint: str | None = None
    frontend: str = "torch"
    output: str | None = None
    cuda_arch: str | None = None
    mcpu: str | None = None
    verify: bool = True
    custom_op: bool = True        # our oversized-conv op; False keeps TVM's conv2d for it
    oversized_algo: str = "auto"  # auto | direct | toeplitz
    tvm_default: bool = False     # TVM's default build of everything: the untuned baseline
    tuning_log: object = None     # a tuning log dir (or a list of them) to apply
    exact_math: bool = False      # keep libm erf in GELU instead of the fast polynomial
    cuda_graph: bool = True       # CUDA: replay the kernels from a CUDA graph (see compile_relax)

    def output_path(self) -> Path:
        if self.output:
            return Path(self.output)
        height, width = parse_input_size(self.input_size)
        size = f"{height}" if height == width else f"{height}x{width}"
        return Path("build") / f"parcnetv2_{variant_key(self.model)}-{self.target}-{size}.so"


def fused_module(mod: tvm.IRModule, named_target: NamedTarget, custom_op: bool = True,
                 oversized_algo: str = "auto", exact_math: bool = False, log=None) -> tvm.IRModule:
    """Steps 1-2 of `prepare_relax`: the module MetaSchedule extracts its tasks from."""
    if custom_op:
        mod, replaced, algos = rewrite_oversized_convs(mod, oversized_algo,
                                                       target_kind=named_target.target.kind.name)
        if log:
            used = ", ".join(f"{algos.count(a)} {a}" for a in sorted(set(algos)))
            log(f"      replaced {replaced} oversized conv pairs with our op ({used or 'none'})")
    # Every target: channels-last throughout with the 1x1 convs as GEMMs (bias and residual
    # adds as their epilogues), and each LayerNormGeneral as one op.
    mod = to_channels_last(mod)
    mod, norms = fuse_layer_norms(mod)
    if log:
        log(f"      channels-last; {norms} LayerNormGeneral chains as one op each")
    mod = legalize_and_fuse(mod, named_target, exact_math)
    return mod


def prepare_relax(mod: tvm.IRModule, named_target: NamedTarget, custom_op: bool = True,
                  oversized_algo: str = "auto", tuning_log=None, tvm_default: bool = False,
                  exact_math: bool = False, log=None, stats: dict | None = None) -> tvm.IRModule:
    """Our pipeline before TVM's lowering, as named passes:

    1. rewrite each oversized conv pair into our op (unless custom_op=False);
    2. legalize (GELU through a fast erf on CPUs unless exact_math) and fuse: the module
       MetaSchedule extracts its tasks from;
    3. apply the tuning database(s) `tuning_log` (one dir or a list) where they have records;
    4. schedule the rest by hand: one rule per op family (schedules/), a fallback for anything else.

    tvm_default=True skips all of it: TVM's own default build, the untuned baseline.
    `stats`, if given, receives how many PrimFuncs came from the database vs our rules, and
    which rule scheduled each kernel (`kernel_schedules`).
    """
    if tvm_default:
        return mod
    mod = fused_module(mod, named_target, custom_op, oversized_algo, exact_math, log)
    if tuning_log:
        mod = apply_database(mod, named_target, tuning_log, log=log or print)
    mod, kernel_schedules = schedule_kernels(mod, named_target.target)
    if stats is not None:
        total = sum(len(names) for names in kernel_schedules.values())
        tuned = len(kernel_schedules.get(FROM_DATABASE, []))
        stats.update(primfuncs=total, from_database=tuned, hand_scheduled=total - tuned,
                     kernel_schedules=kernel_schedules)
    return mod


def legalize_and_fuse(mod: tvm.IRModule, named_target: NamedTarget | None = None,
                      exact_math: bool = False) -> tvm.IRModule:
    kind = named_target.target.kind.name if named_target else "llvm"
    return tvm.transform.Sequential([
        relax.transform.LegalizeOps(customize_legalize_map=legalize_map(kind, exact_math)),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ])(mod)


def uses_cuda_graph(named_target: NamedTarget, cuda_graph: bool = True, tvm_default: bool = False) -> bool:
    """CUDA builds of our pipeline launch their kernels from a CUDA graph: the VM otherwise
    launches each of the ~300 kernels of a forward pass from the host, which is most of the
    time at batch 1. TVM's default build (the untuned baseline) keeps TVM's default: none."""
    return named_target.target.kind.name == "cuda" and cuda_graph and not tvm_default


def compile_relax(mod: tvm.IRModule, named_target: NamedTarget, custom_op: bool = True,
                  oversized_algo: str = "auto", tuning_log=None, tvm_default: bool = False,
                  exact_math: bool = False, log=None, stats: dict | None = None, cuda_graph: bool = True):
    """Compile for the target through `prepare_relax`, then TVM's lowering and code generation
    (on CUDA with TVM's RewriteCUDAGraph: the kernels after the first one that reads the input
    are captured into a graph on the first call and replayed on later calls)."""
    mod = prepare_relax(mod, named_target, custom_op, oversized_algo, tuning_log, tvm_default,
                        exact_math, log, stats)
    if not uses_cuda_graph(named_target, cuda_graph, tvm_default):
        return tvm.compile(mod, target=named_target.target)
    with tvm.transform.PassContext(config={"relax.backend.use_cuda_graph": True}):
        return tvm.compile(mod, target=named_target.target)


def build_library(request: BuildRequest, log=print) -> dict:
    """Build, export and verify one library; returns its manifest (also written beside it)."""
    named_target = get_target(request.target, cuda_arch=request.cuda_arch, mcpu=request.mcpu)
    named_target.check_toolchain()
    input_size = parse_input_size(request.input_size)
    if request.batch < 1:
        raise ParcnetError(f"batch {request.batch} must be >= 1")
    output = request.output_path()
    input_shape = (request.batch, 3, *input_size)
    log(f"target: {named_target.description}")

    started = time.perf_counter()
    model = prepare_model(request.model, input_size, request.checkpoint)
    log(f"[1/4] model {model.variant.name}, input {list(input_shape)}")

    mod = import_model(model, input_shape, request.frontend)
    imported = time.perf_counter()
    log(f"[2/4] imported through {request.frontend} in {imported - started:.1f} s")

    check_algo(request.oversized_algo)  # before the compile, not in the middle of it
    tuning_logs = [request.tuning_log] if isinstance(request.tuning_log, (str, Path)) \
        else list(request.tuning_log or [])
    if tuning_logs and request.tvm_default:
        raise ParcnetError("a tuning log applies to our pipeline, not to --tvm-default-schedules")
    stats: dict = {}
    executable = compile_relax(mod, named_target, request.custom_op, request.oversized_algo,
                               tuning_log=tuning_logs, tvm_default=request.tvm_default,
                               exact_math=request.exact_math, log=log, stats=stats, cuda_graph=request.cuda_graph)
    if tuning_logs:
        log(f"      tuning log: {stats['from_database']} of {stats['primfuncs']} kernels from the database, "
            f"{stats['hand_scheduled']} from our hand rules")
    named_target.export_library(executable, output)
    compiled = time.perf_counter()
    log(f"[3/4] compiled and exported {output} in {compiled - imported:.1f} s")

    manifest = {
        "library": output.name,
        "model": model.variant.name,
        "input_size": list(input_size),
        "input_shape": list(input_shape),
        "dtype": "float32",
        "frontend": request.frontend,
        "target_name": named_target.name,
        "target": named_target.as_dict(),
        "target_description": named_target.description,
        "tvm_version": tvm.__version__,
        "pipeline": manifest_io.pipeline_fingerprint(),
        "tuning_database": None if not tuning_logs else {
            "logs": [database_summary(d) for d in tuning_logs],
            "kernels_from_database": stats["from_database"],
            "kernels_from_hand_rules": stats["hand_scheduled"],
        },
        "math": "exact" if request.exact_math or request.tvm_default or named_target.name == "cuda"
                else "fast-erf GELU",
        "schedules": "tvm-default" if request.tvm_default else "ours",
        # rule name -> kernels it scheduled (ours, `tuning_database`, or a fallback)
        "kernel_schedules": stats.get("kernel_schedules", {}),
        "cuda_graph": uses_cuda_graph(named_target, request.cuda_graph, request.tvm_default),
        "oversized_op": {"custom_op": request.custom_op and not request.tvm_default,
                         "algo": request.oversized_algo},
        "weights": {
            "checkpoint": str(Path(request.checkpoint).resolve()) if request.checkpoint else None,
            "sha256": manifest_io.sha256(request.checkpoint) if request.checkpoint else None,
            "seed": None if request.checkpoint else WEIGHT_SEED,
        },
        "sha256": manifest_io.sha256(output),
        "build_seconds": round(compiled - started, 1),
        "verification": {"status": "not run"},
    }
    if request.verify:
        manifest["verification"] = verify_against(model, output, named_target, input_shape)
    manifest_io.write(output, manifest)
    result = manifest["verification"]
    if result["status"] == "passed":
        log(f"[4/4] verified against PyTorch: max abs error {result['max_abs_error']:.2e} <= {result['tolerance']:g}")
    else:
        log(f"[4/4] verification {result['status']}" + (f": {result['reason']}" if "reason" in result else ""))
    raise_on_failure(result, output)
    return manifest
