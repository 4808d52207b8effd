"""The libraries and ONNX files bench times, built once and kept under build/bench/ while the
pipeline and the tuning logs they came from stay the same."""

from __future__ import annotations

from pathlib import Path

from .. import outputs
from .backends import BenchCase

BENCH_DIR = Path("build") / "bench"


def prepare_library(case: BenchCase, backend: str, tuning_logs, log, device: str | None = None,
                    any_device: bool = False) -> Path:
    """The TVM library of `backend` for the case, built and verified once and then cached; a tuned
    one from logs of `device` (tuning.device ids) unless `any_device`."""
    from .. import manifest as manifest_io
    from ..build import BuildRequest, build_library
    from ..runtime import why_not_runnable
    from ..targets import get_target
    from ..tuning_log import database_summary
    from ..verify import verify_library

    tag = {"tvm-untuned": "untuned", "tvm-ours": "ours", "tvm-tuned": "tuned"}[backend]
    out = BENCH_DIR / f"{manifest_io.artifact_name(case.model, case.target, case.input_size, case.batch)}-{tag}.so"
    request = BuildRequest(model=case.model, target=case.target, input_size=case.input_size, batch=case.batch,
                           output=str(out), tvm_default=backend == "tvm-untuned",
                           tuning_log=list(tuning_logs) if backend == "tvm-tuned" else None,
                           device=device, any_device=any_device)
    if out.is_file() and out.with_suffix(".json").is_file():
        # Reused only if built by this pipeline from the same logs (same records), else rebuilt.
        manifest = manifest_io.read(out)
        wanted = [database_summary(p) for p in tuning_logs] if backend == "tvm-tuned" else []
        have = (manifest.get("tuning_database") or {}).get("logs", [])
        current = have == wanted and manifest.get("pipeline") == manifest_io.pipeline_fingerprint()
        status = manifest["verification"]["status"]
        if current and status == "skipped" and why_not_runnable(get_target(case.target)) is None:
            verify_library(out)  # built where it could not run (a CUDA library without a GPU): check it now
            return out
        if current and status in ("passed", "skipped"):
            return out
    log(f"[bench] building {out.name}")
    build_library(request, log=lambda *_: None)
    return out


def prepare_onnx(case: BenchCase) -> Path:
    from ..frontend import export_onnx
    from ..manifest import artifact_name
    from ..weights import prepare_model

    height, width = case.input_size
    out = BENCH_DIR / f"{artifact_name(case.model, 'onnx', case.input_size, case.batch)}.onnx"
    if not out.is_file():
        import onnx

        out.parent.mkdir(parents=True, exist_ok=True)
        exported = export_onnx(prepare_model(case.model, case.input_size), (case.batch, 3, height, width))
        with outputs.replacing(out) as (part,):
            onnx.save(exported, str(part))
    return out


def default_tuning_logs(case: BenchCase, device) -> list[Path]:
    """tvm-tuned's log on `device` (a tuning.device.Device): tune.py's work dir of this device,
    else the shipped log if this device measured it; none for another device's."""
    from ..tuning.device import other_device_problem
    from ..tuning_log import default_work_dir, has_log, shipped_log

    if device is None:
        return []
    work_dir = default_work_dir(case.model, case.target, case.input_size, case.batch, device.id)
    if has_log(work_dir):
        return [work_dir]
    shipped = shipped_log(case.model, case.target, case.input_size, case.batch)
    return [shipped] if has_log(shipped) and other_device_problem(shipped, device) is None else []
