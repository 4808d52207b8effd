"""Build stage: model -> Relax -> compiled library for a named target -> manifest + verification."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tvm
from tvm import relax

from schedules import apply_hand_schedules

from . import manifest as manifest_io
from .checkpoint import load_checkpoint
from .errors import ParcnetError
from .frontend import import_model
from .oversized import check_algo
from .rewrite import rewrite_oversized_convs
from .tune import apply_database
from .model import create_model, parse_input_size, variant_key
from .targets import NamedTarget, get_target
from .verify import raise_on_failure, verify_against

WEIGHT_SEED = 0  # random weights (no checkpoint) are drawn from this seed, so verify can redraw them


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

    def output_path(self) -> Path:
        if self.output:
            return Path(self.output)
        height, width = parse_input_size(self.input_size)
        size = f"{height}" if height == width else f"{height}x{width}"
        return Path("build") / f"parcnetv2_{variant_key(self.model)}-{self.target}-{size}.so"


def prepare_model(name: str, input_size=224, checkpoint=None) -> torch.nn.Module:
    """The PyTorch model in eval mode: checkpoint weights, or random weights from WEIGHT_SEED."""
    torch.manual_seed(WEIGHT_SEED)
    model = create_model(name, input_size=input_size)
    if checkpoint:
        load_checkpoint(model, checkpoint)
    return model


def model_from_manifest(manifest: dict) -> torch.nn.Module:
    weights = manifest["weights"]
    checkpoint = weights.get("checkpoint")
    if checkpoint:
        if not Path(checkpoint).is_file():
            raise ParcnetError(f"checkpoint {checkpoint} named in the manifest does not exist")
        if manifest_io.sha256(checkpoint) != weights["sha256"]:
            raise ParcnetError(f"checkpoint {checkpoint} changed since the library was built; rebuild it")
    return prepare_model(manifest["model"], manifest["input_size"], checkpoint)


def prepare_relax(mod: tvm.IRModule, named_target: NamedTarget, custom_op: bool = True,
                  oversized_algo: str = "auto", tuning_log=None, tvm_default: bool = False,
                  log=None) -> tvm.IRModule:
    """Our pipeline before TVM's lowering, as named passes:

    1. rewrite each oversized conv pair into our op (unless custom_op=False);
    2. legalize and fuse (what MetaSchedule extracts its tasks from);
    3. apply the tuning database's best schedules where it has records;
    4. schedule the rest by hand: our op's rule, then the CPU fallback.

    tvm_default=True skips all of it: TVM's own default build, the untuned baseline.
    """
    if tvm_default:
        return mod
    if custom_op:
        mod, replaced, algos = rewrite_oversized_convs(mod, oversized_algo)
        if log:
            used = ", ".join(f"{algos.count(a)} {a}" for a in sorted(set(algos)))
            log(f"      replaced {replaced} oversized conv pairs with our op ({used or 'none'})")
    mod = legalize_and_fuse(mod)
    if tuning_log:
        mod = apply_database(mod, named_target, tuning_log)
    return apply_hand_schedules(mod, named_target.target)


def legalize_and_fuse(mod: tvm.IRModule) -> tvm.IRModule:
    return tvm.transform.Sequential([
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ])(mod)


def compile_relax(mod: tvm.IRModule, named_target: NamedTarget, custom_op: bool = True,
                  oversized_algo: str = "auto", tuning_log=None, tvm_default: bool = False, log=None):
    """Compile for the target through `prepare_relax`, then TVM's lowering and code generation."""
    mod = prepare_relax(mod, named_target, custom_op, oversized_algo, tuning_log, tvm_default, log)
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
    executable = compile_relax(mod, named_target, request.custom_op, request.oversized_algo,
                               tvm_default=request.tvm_default, log=log)
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
        "tuning_database": None,
        "schedules": "tvm-default" if request.tvm_default else "ours",
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
