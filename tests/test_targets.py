"""Named targets: CPU detection, target dicts, toolchain errors."""

import subprocess
import sys

import pytest

from parcnet_tvm import ParcnetError, targets
from parcnet_tvm.targets import get_target

AVX512 = "fpu sse sse2 avx avx2 fma bmi2 f16c avx512f avx512bw avx512vl avx512dq avx512cd"


@pytest.mark.parametrize("vendor, flags, expected", [
    ("AuthenticAMD", AVX512 + " avx512_bf16 avx512vbmi avx512_vnni avx512_vbmi2 gfni vaes", "znver4"),
    ("GenuineIntel", AVX512, "skylake-avx512"),
    ("GenuineIntel", AVX512 + " avx512_vnni avx512vbmi avx512_vbmi2 gfni vaes", "icelake-server"),
    ("AuthenticAMD", "avx2 fma bmi2 vaes", "znver3"),
    ("GenuineIntel", "avx2 fma bmi2 f16c", "haswell"),
    ("GenuineIntel", "sse sse2", "x86-64"),
])
def test_x86_mcpu_detection(monkeypatch, vendor, flags, expected):
    monkeypatch.setattr(targets, "_cpuinfo", lambda: (vendor, set(flags.split()), "test CPU"))
    assert targets.detect_x86_mcpu() == expected


def test_host_target_is_detected_cpu_with_core_count():
    target = get_target("x86").as_dict()
    assert target["kind"] == "llvm"
    assert target["mcpu"] == targets.detect_x86_mcpu()
    assert target["num-cores"] == targets.host_cores()


def test_use_threads_sets_tvm_and_pytorch_threads_in_a_fresh_process():
    """TVM alone sizes its pool from the topology (1 thread on a 2-vCPU VM): use_threads gives it
    every core, or the count asked for, and PyTorch the same."""
    code = ("import torch; from parcnet_tvm.targets import use_threads; import sys\n"
            "print(use_threads(int(sys.argv[1])), torch.get_num_threads())")
    for asked, expected in ((0, targets.host_cores()), (1, 1), (3, 3)):
        done = subprocess.run([sys.executable, "-c", code, str(asked)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [str(expected)] * 2, (asked, done.stdout)


def test_arm_target_is_cortex_a17_hard_float():
    target = get_target("arm").as_dict()
    assert target["mtriple"] == "armv7a-linux-gnueabihf"
    assert target["mcpu"] == "cortex-a17"
    assert target["mfloat-abi"] == "hard"
    assert set(target["mattr"]) == {"+neon", "+vfp4"}
    assert target["feature.has_asimd"]  # LLVM sees NEON, so the ARM schedule rules apply


def test_cuda_arch_default_and_override():
    expected = targets.local_cuda_arch() or "sm_90"
    assert get_target("cuda").as_dict()["arch"] == expected
    assert get_target("cuda", cuda_arch="sm_86").as_dict()["arch"] == "sm_86"
    with pytest.raises(ParcnetError, match="sm_90"):
        get_target("cuda", cuda_arch="hopper")


def test_unknown_target():
    with pytest.raises(ParcnetError, match="unknown target 'riscv'.*x86, arm, cuda"):
        get_target("riscv")


def test_missing_cross_compiler_names_debian_package(monkeypatch):
    monkeypatch.setattr(targets.shutil, "which", lambda tool: None)
    with pytest.raises(ParcnetError, match="apt-get install g\\+\\+-arm-linux-gnueabihf"):
        get_target("arm").check_toolchain()
