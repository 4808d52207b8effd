"""build.py / verify.py: exported libraries, manifests, verification, errors."""

import json
import re
import shutil
import subprocess

import pytest
import torch
from parcnet_tvm.schedules.cuda_oversized import SHARED_BYTES
from support import (
    SMALL,
    cuda_kernel_limits,
    needs_arm_toolchain,
    one_line,
    run_script,
    script_main,
    slow,
)

from parcnet_tvm import ParcnetError
from parcnet_tvm.build import BuildRequest, build_library
from parcnet_tvm.frontend import import_model
from parcnet_tvm.manifest import sha256
from parcnet_tvm.pipeline import compile_prepared, prepare
from parcnet_tvm.targets import get_target
from parcnet_tvm.verify import verify_library
from parcnet_tvm.weights import prepare_model


def test_x86_build_writes_verified_library_and_manifest(xt_small_x86):
    library, manifest = xt_small_x86
    on_disk = json.loads(library.with_suffix(".json").read_text())
    assert on_disk == manifest
    assert manifest["model"] == "parcnetv2_xt"
    assert manifest["input_shape"] == [1, 3, SMALL, SMALL]
    assert manifest["dtype"] == "float32"
    assert manifest["target"]["kind"] == "llvm" and manifest["target_name"] == "x86"
    assert manifest["tvm_version"] == "0.27.0.post1"
    assert manifest["tuning_database"] is None
    assert manifest["sha256"] == sha256(library)
    check = manifest["verification"]
    assert check["status"] == "passed" and check["max_abs_error"] <= 1e-4


def test_manifest_names_the_rule_that_scheduled_each_kernel(xt_small_x86):
    """Untuned: every kernel by one of our hand rules, none by a fallback."""
    _, manifest = xt_small_x86
    schedules = manifest["kernel_schedules"]
    kernels = [k for names in schedules.values() for k in names]
    assert len(kernels) == len(set(kernels)) >= 60
    assert not [rule for rule in schedules if "fallback" in rule], schedules
    assert {"cpu_gemm", "cpu_conv", "cpu_depthwise_conv", "cpu_layer_norm_general", "oversized_conv"} <= set(schedules)
    assert all(name.startswith("fused_matmul") for name in schedules["cpu_gemm"])
    # what the graph passes did, from the passes' own report
    assert manifest["graph_passes"]["oversized_pairs"] == 17
    assert manifest["graph_passes"]["layer_norms_fused"] == 38


@needs_arm_toolchain
def test_arm_build_is_armv7_hard_float_shared_object(tmp_path, monkeypatch):
    """Without the emulated board (no ARM runtime built) the build skips verification and
    verify.py refuses the library, saying why."""
    out = tmp_path / "xt_arm.so"
    monkeypatch.setenv("PARCNET_ARM_RUNTIME_CACHE", str(tmp_path / "empty-cache"))
    script_main("build.py")("--model", "xt", "--target", "arm", "--input-size", SMALL, "-o", out)
    assert "ELF 32-bit LSB shared object, ARM, EABI5" in subprocess.run(
        ["file", str(out)], capture_output=True, text=True).stdout
    attributes = subprocess.run(["readelf", "-A", str(out)], capture_output=True, text=True).stdout
    assert "Tag_ABI_VFP_args: VFP registers" in attributes  # hard-float calling convention
    assert "NEON" in attributes
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["verification"]["status"] == "skipped"
    assert "ARM runtime is not built" in manifest["verification"]["reason"]
    with pytest.raises(ParcnetError, match="cannot verify") as refused:
        script_main("verify.py")(out)
    one_line(refused.value)


def _module_kinds(module):
    kinds = [(module.kind, module)]
    for child in module.imports:
        kinds += _module_kinds(child)
    return kinds


def _called_primfuncs(mod) -> set[str]:
    return {binding.value.args[0].name_hint for block in mod["main"].body.blocks for binding in block.bindings
            if getattr(getattr(binding.value, "op", None), "name", "") == "relax.call_tir"}


@pytest.mark.parametrize("arch, size", [("sm_90", SMALL), pytest.param("sm_86", 448, marks=slow)])
def test_cuda_build_without_gpu_has_a_threaded_kernel_per_op(tmp_path, arch, size):
    """Compile-only (CI has no GPU): every PrimFunc the model calls became a CUDA kernel launched
    with more than one thread and within a block's limits (at 448 the stage-1 maps no longer
    fit shared memory whole), and our op's kernels stage their inputs in shared memory."""
    named = get_target("cuda", cuda_arch=arch)
    mod = import_model(prepare_model("xt", size), (1, 3, size, size))
    prepared = prepare(mod, named)
    executable = compile_prepared(prepared, named)
    # The kernels after the first ones are launched from one CUDA graph, captured on the first call.
    assert executable.as_text().count("call  vm.builtin.cuda_graph.run_or_capture") == 1
    cuda = [m for kind, m in _module_kinds(executable.mod) if kind == "cuda"]
    assert len(cuda) == 1
    source = cuda[0].inspect_source()
    threads = dict((name, int(bound)) for bound, name in
                   re.findall(r'__global__ void __launch_bounds__\((\d+)\) (\w+)_kernel\(', source))
    called = _called_primfuncs(prepared)
    assert len(called) >= 20
    # TVM names a kernel after its PrimFunc, with one more "fused_" in front of some fused ops
    missing = [f for f in called if f not in threads and f"fused_{f}" not in threads]
    assert not missing, f"PrimFuncs without a kernel: {missing}"
    assert min(threads.values()) > 1, f"single-thread kernels: {[k for k, t in threads.items() if t == 1]}"
    assert all(shared <= SHARED_BYTES and count <= 1024 for shared, count in cuda_kernel_limits(source))
    ours = [k for k in threads if k.startswith("oversized_conv_")]
    assert len(ours) == (4 if size == SMALL else 5)  # one per stage; at 448 stage 1's two passes
    for name in ours:
        definition = re.search(rf"{name}_kernel\([^;{{]*\)\s*{{", source)  # not the declaration
        body = source[definition.start():]
        body = body[: body.index("\n}\n")]
        assert "__shared__" in body and "__syncthreads" in body
    out = named.export_library(executable, tmp_path / "xt_cuda.so")
    assert out.stat().st_size > 0


@pytest.mark.parametrize("args, message", [
    (["--model", "q"], "unknown model 'q'"),
    (["--target", "riscv"], "unknown target 'riscv'"),
    (["--input-size", "2"], "too small"),
    (["--onnx", "missing.onnx"], "does not exist"),
    (["--checkpoint", "missing.pth"], "does not exist"),
])
def test_build_script_bad_input_gives_one_clear_error(args, message, tmp_path):
    with pytest.raises(ParcnetError, match=re.escape(message)) as caught:
        script_main("build.py")(*args, "-o", tmp_path / "x.so")
    one_line(caught.value)
    assert not (tmp_path / "x.so").exists()


def test_build_script_error_is_one_line_and_exit_2_on_the_command_line(tmp_path):
    """The one end-to-end run of an error (the other cases call main in-process): run_main
    prints `error: ...` alone on stderr, exits 2, writes nothing."""
    (tmp_path / "x.json").write_text('{"mine": true}\n')
    done = run_script("build.py", "--input-size", SMALL, "-o", tmp_path / "x.so")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1, done.stderr
    assert "is not a manifest of ours: refusing to overwrite it" in done.stderr and "[1/4]" not in done.stdout
    assert (tmp_path / "x.json").read_text() == '{"mine": true}\n' and not (tmp_path / "x.so").exists()


@pytest.mark.parametrize("case, message", [
    ("manifest name", "names a manifest: give the library's path"),
    ("file in the way", "is a file, not a folder"),
    ("foreign json", "is not a manifest of ours: refusing to overwrite it"),
    ("missing log", "no tuning log in"),
    ("time on arm", "emulated time is not latency"),
    ("missing baseline", "does not exist"),
])
def test_paths_and_options_are_checked_before_any_work(case, message, tmp_path, capsys):
    """Each refused in one line, before the model is even imported ([1/4] never printed), and
    nothing written: a foreign file where the manifest would go stays as it was."""
    output = tmp_path / "x.so"
    extra = []
    if case == "manifest name":
        output = tmp_path / "x.json"
    elif case == "file in the way":
        (tmp_path / "plain").write_text("a file")
        output = tmp_path / "plain" / "x.so"
    elif case == "foreign json":
        (tmp_path / "x.json").write_text('{"mine": true}\n')
    elif case == "missing log":
        extra = ["--tuning-log", tmp_path / "no-log-here"]
    elif case == "time on arm":
        extra = ["--target", "arm", "--time", 3]
    elif case == "missing baseline":
        extra = ["--time", 3, "--baseline", tmp_path / "old.so"]
    with pytest.raises(ParcnetError, match=re.escape(message)) as caught:
        script_main("build.py")("--input-size", SMALL, *extra, "-o", output)
    one_line(caught.value)
    assert "[1/4]" not in capsys.readouterr().out
    if case == "foreign json":
        assert (tmp_path / "x.json").read_text() == '{"mine": true}\n' and not output.exists()


def test_a_failed_build_leaves_the_library_that_was_there(xt_small_x86, tmp_path, monkeypatch):
    from parcnet_tvm import build

    good, _ = xt_small_x86
    output = tmp_path / "xt.so"
    shutil.copyfile(good, output)
    shutil.copyfile(good.with_suffix(".json"), output.with_suffix(".json"))
    before = output.read_bytes(), output.with_suffix(".json").read_bytes()
    monkeypatch.setattr(build, "verify_against", lambda *_: {
        "status": "failed", "max_abs_error": 0.5, "tolerance": 1e-4, "reference": "PyTorch eager fp32"})
    with pytest.raises(ParcnetError, match=f"does not match PyTorch.*nothing written: {output} is as it was"):
        build_library(BuildRequest(model="xt", input_size=SMALL, output=str(output)), log=lambda *_: None)
    assert (output.read_bytes(), output.with_suffix(".json").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xt.json", "xt.so"]  # no partial files left


def test_a_log_of_another_model_is_an_error_naming_it(tiny_run, tmp_path):
    log_dir = tiny_run[0] / "log"  # XT at 64: none of its tasks is XT's at 96
    with pytest.raises(ParcnetError, match=re.escape(f"tuning log {log_dir} has no record for any kernel "
                                                     "of this build")) as caught:
        script_main("build.py")("--input-size", 96, "--tuning-log", log_dir, "-o", tmp_path / "x.so")
    one_line(caught.value)
    assert not (tmp_path / "x.so").exists()


@pytest.mark.parametrize("size, resize", [("100x76", False), pytest.param("72", True, marks=slow)])
def test_any_size_the_official_model_runs_builds_and_verifies(size, resize, tmp_path):
    """Sizes that are not multiples of 32 (downsampling rounds as the official convs do), with
    the official kernel lengths (default) or the paper's resized ones."""
    out = tmp_path / "any.so"
    done = run_script("build.py", "--model", "xt", "--input-size", size, *(["--resize-kernels"] if resize else []),
                      "-o", out)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["verification"]["status"] == "passed" and manifest["resize_kernels"] is resize
    assert manifest["graph_passes"]["oversized_pairs"] == 17
    assert verify_library(out)["status"] == "passed"  # the manifest rebuilds the same model


def test_build_script_rejects_checkpoint_with_wrong_keys(tmp_path):
    checkpoint = tmp_path / "wrong.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, checkpoint)
    with pytest.raises(ParcnetError) as caught:
        script_main("build.py")("--model", "xt", "--input-size", SMALL, "--checkpoint", checkpoint,
                                "-o", tmp_path / "x.so")
    line = one_line(caught.value)
    assert "missing keys (225)" in line and "unexpected keys (1): fc.weight" in line
    assert not (tmp_path / "x.so").exists()


def test_build_with_checkpoint_verifies_and_records_it(xt_checkpoint_x86):
    _, checkpoint, built = xt_checkpoint_x86  # a training checkpoint, the ONNX frontend
    manifest = built.manifest
    assert manifest["weights"]["sha256"] == sha256(checkpoint)
    assert manifest["frontend"] == "onnx"
    assert manifest["verification"]["status"] == "passed"


