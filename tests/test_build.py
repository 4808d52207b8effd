"""build.py / verify.py: exported libraries, manifests, verification, errors."""

import json
import re
import subprocess

import numpy as np
import pytest
import torch
from support import SMALL, cuda_kernel_limits, needs_arm_toolchain, run_script

from parcnet_tvm import ParcnetError, create_model
from parcnet_tvm.build import BuildRequest, build_library
from parcnet_tvm.frontend import import_model
from parcnet_tvm.manifest import sha256
from parcnet_tvm.pipeline import compile_prepared, prepare
from parcnet_tvm.targets import get_target
from parcnet_tvm.verify import verify_library
from parcnet_tvm.weights import prepare_model
from schedules.cuda import SHARED_BYTES


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


def test_library_holds_the_weights_once(xt_small_x86):
    """Constants must not be multiplied by the pipeline (FoldConstant once made T's library 567 MB
    for 100 MB of weights, too large for the ARM linker)."""
    library, _ = xt_small_x86
    weight_bytes = 4 * sum(p.numel() for p in prepare_model("xt", SMALL).parameters())
    assert library.stat().st_size < 1.3 * weight_bytes + 8e6


def test_verify_script_rechecks_library(xt_small_x86):
    library, _ = xt_small_x86
    done = run_script("verify.py", library)
    assert done.returncode == 0, done.stderr
    assert "matches PyTorch" in done.stdout


def test_verify_rejects_changed_library(xt_small_x86, tmp_path):
    library, manifest = xt_small_x86
    copy = tmp_path / "copy.so"
    copy.write_bytes(library.read_bytes() + b"\0")
    (tmp_path / "copy.json").write_text(json.dumps(manifest))
    with pytest.raises(ParcnetError, match="changed since it was built"):
        verify_library(copy)


def test_verification_fails_loudly_on_mismatch(xt_small_x86, tmp_path, monkeypatch):
    """A library whose weights differ from the PyTorch model is caught by verify."""
    library, manifest = xt_small_x86
    other = dict(manifest)
    checkpoint = tmp_path / "other.pth"
    state = prepare_model("xt", SMALL).state_dict()
    state["head.bias"] = state["head.bias"] + 0.01
    torch.save(state, checkpoint)
    other["weights"] = {"checkpoint": str(checkpoint), "sha256": sha256(checkpoint), "seed": None}
    copy = tmp_path / "lib.so"
    copy.write_bytes(library.read_bytes())
    (tmp_path / "lib.json").write_text(json.dumps(other))
    done = run_script("verify.py", copy)
    assert done.returncode == 2
    assert "does not match PyTorch: max abs error" in done.stderr
    assert json.loads((tmp_path / "lib.json").read_text())["verification"]["status"] == "failed"


def test_verification_runs_two_inputs_and_catches_a_stale_output(xt_small_x86, monkeypatch):
    """Verification calls the library twice on different inputs: a library that answered the
    second call with its first result (a CUDA graph replaying a captured input) fails."""
    from parcnet_tvm import verify

    library, manifest = xt_small_x86
    assert manifest["verification"]["calls"] == 2
    model, named = prepare_model("xt", SMALL), get_target("x86")
    assert verify.verify_against(model, library, named, manifest["input_shape"])["status"] == "passed"
    first = {}
    real_run_vm = verify.run_vm

    def stale_run_vm(vm, x, device):
        return first.setdefault("out", real_run_vm(vm, x, device))

    monkeypatch.setattr(verify, "run_vm", stale_run_vm)
    result = verify.verify_against(model, library, named, manifest["input_shape"])
    assert result["status"] == "failed" and result["input_seed"] == verify.INPUT_SEED + 1


def test_default_weights_let_verification_see_a_wrong_oversized_conv():
    """Without a checkpoint the weights are drawn so that every layer moves the output: an
    oversized conv with its H and W kernels swapped in every block (within 1e-4 of the right
    output under the official init's weights) is off by far more than the tolerance."""
    from parcnet_tvm.verify import TOLERANCE, pytorch_output, reference_input

    model = prepare_model("xt", SMALL)
    x = reference_input(model.input_shape())
    expected = pytorch_output(model, x)
    with torch.no_grad():
        for stage in model.stages:
            for block in stage:
                conv = block.token_mixer.dwconv1
                kernel_h = conv.conv_h.weight.clone()
                conv.conv_h.weight.copy_(conv.conv_w.weight.reshape(kernel_h.shape))
                conv.conv_w.weight.copy_(kernel_h.reshape(conv.conv_w.weight.shape))
    assert np.abs(pytorch_output(model, x) - expected).max() > 100 * TOLERANCE


@needs_arm_toolchain
def test_arm_build_is_armv7_hard_float_shared_object(tmp_path):
    """Without the emulated board (no ARM runtime built) the build skips verification and
    verify.py refuses the library, saying why."""
    out = tmp_path / "xt_arm.so"
    no_runtime = {"PARCNET_ARM_RUNTIME_CACHE": str(tmp_path / "empty-cache")}
    done = run_script("build.py", "--model", "xt", "--target", "arm", "--input-size", SMALL, "-o", out,
                      env=no_runtime)
    assert done.returncode == 0, done.stderr
    assert "ELF 32-bit LSB shared object, ARM, EABI5" in subprocess.run(
        ["file", str(out)], capture_output=True, text=True).stdout
    attributes = subprocess.run(["readelf", "-A", str(out)], capture_output=True, text=True).stdout
    assert "Tag_ABI_VFP_args: VFP registers" in attributes  # hard-float calling convention
    assert "NEON" in attributes
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["verification"]["status"] == "skipped"
    assert "ARM runtime is not built" in manifest["verification"]["reason"]
    refused = run_script("verify.py", out, env=no_runtime)
    assert refused.returncode == 2 and "cannot verify" in refused.stderr


def _module_kinds(module):
    kinds = [(module.kind, module)]
    for child in module.imports:
        kinds += _module_kinds(child)
    return kinds


def _called_primfuncs(mod) -> set[str]:
    return {binding.value.args[0].name_hint for block in mod["main"].body.blocks for binding in block.bindings
            if getattr(getattr(binding.value, "op", None), "name", "") == "relax.call_tir"}


@pytest.mark.parametrize("arch, size", [("sm_90", SMALL), ("sm_86", 448)])
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
    (["--input-size", "100"], "not divisible by 32"),
    (["--checkpoint", "missing.pth"], "does not exist"),
])
def test_build_script_bad_input_gives_one_clear_error(args, message, tmp_path):
    done = run_script("build.py", *args, "-o", tmp_path / "x.so")
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "x.so").exists()


def test_build_script_rejects_checkpoint_with_wrong_keys(tmp_path):
    checkpoint = tmp_path / "wrong.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, checkpoint)
    done = run_script("build.py", "--model", "xt", "--input-size", SMALL, "--checkpoint", checkpoint,
                      "-o", tmp_path / "x.so")
    assert done.returncode == 2
    assert "missing keys (225)" in done.stderr and "unexpected keys (1): fc.weight" in done.stderr


def test_build_with_checkpoint_verifies_and_records_it(tmp_path):
    checkpoint = tmp_path / "ckpt.pth"
    torch.manual_seed(11)  # weights unlike the default seed's
    torch.save({"model": create_model("xt", SMALL).state_dict()}, checkpoint)
    manifest = build_library(BuildRequest(model="xt", input_size=SMALL, checkpoint=str(checkpoint),
                                          frontend="onnx", output=str(tmp_path / "ck.so")), log=lambda *_: None)
    assert manifest["weights"]["sha256"] == sha256(checkpoint)
    assert manifest["frontend"] == "onnx"
    assert manifest["verification"]["status"] == "passed"


def test_first_divergence_names_the_wrong_kernel_or_the_overwritten_buffer():
    from parcnet_tvm.verify import first_divergence

    def call(name, inputs, output_before, output_after):
        return {"name": name, "before": [*inputs, output_before], "after": [*inputs, output_after]}

    a, b, c = (np.full(4, v, np.float32) for v in (1.0, 2.0, 3.0))
    garbage = np.full(4, 7.0, np.float32)
    reference = [call("k0", [a], np.zeros(4, np.float32), b), call("k1", [b], np.zeros(4, np.float32), c)]
    same = [call("k0", [a], garbage, b), call("k1", [b], garbage, c)]  # output memory differs before: fine
    assert first_divergence(same, reference) is None
    wrong_kernel = [call("k0", [a], garbage, b), call("k1", [b], garbage, c + 1)]
    found = first_divergence(wrong_kernel, reference)
    assert (found["index"], found["name"], found["cause"]) == (1, "k1", "kernel")
    clobbered = [call("k0", [a], garbage, b), call("k1", [b + 1], garbage, c)]  # k1's input changed
    assert first_divergence(clobbered, reference)["cause"] == "inputs"
    nan = [call("k0", [a], garbage, np.full(4, np.nan, np.float32)), reference[1]]
    assert first_divergence(nan, reference)["index"] == 0
    assert first_divergence(reference[:1], reference)["cause"] == "different kernels"
