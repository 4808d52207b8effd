"""scripts/breakdown.py: per-kernel times of a built library next to PyTorch's profiler."""

import pytest
from support import run_script

from parcnet_tvm.breakdown import estimate_kernels, kernel_group, profile_library


def test_kernel_groups_drop_numbering_only():
    assert kernel_group("fused_conv2d9_add12_multiply") == "fused_conv2d_add_multiply"
    assert kernel_group("matmul") == "matmul" and kernel_group("fused_matmul4_add") == "fused_matmul_add"


def test_library_profile_accounts_for_every_kernel_kind(xt_small_x86):
    library, _ = xt_small_x86
    result = profile_library(library, repeat=2)
    rows = {r["name"]: r for r in result["kernels"]}
    assert result["end_to_end_ms"] > 0 and all(r["ms"] > 0 and r["calls"] >= 1 for r in rows.values())
    assert any(name.startswith("oversized_conv") for name in rows)  # our op is one of the kernels
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0)
    assert not any(name.startswith("vm.builtin") for name in rows)  # kernels only, no VM bookkeeping
    ms = [r["ms"] for r in result["kernels"]]
    assert ms == sorted(ms, reverse=True)


def test_profile_script_prints_tvm_and_pytorch_tables(xt_small_x86):
    library, _ = xt_small_x86
    done = run_script("breakdown.py", library, "--top", 5, "--repeat", 2)
    assert done.returncode == 0, done.stderr
    assert "ms end to end" in done.stdout and "| op | calls | ms | share |" in done.stdout
    assert "PyTorch eager" in done.stdout and "aten::" in done.stdout


def test_arm_library_gets_the_rk3288_estimate_per_kernel(xt_arm):
    library, _ = xt_arm
    result = estimate_kernels(library)
    rows = {r["name"]: r for r in result["kernels"]}
    assert "RK3288 estimate:" in result["line"] and "not a measurement" in result["line"]
    assert 0 < result["end_to_end_ms_4t"] < result["end_to_end_ms"]
    assert any(name.startswith("fused_matmul") for name in rows) and any("oversized_conv" in n for n in rows)
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0, abs=1e-6)
    # XT's 1x1 convs carry most of its MACs: on ARM in our micro-kernel, a row of its own
    gemms = sum(r["ms"] for name, r in rows.items() if name.startswith(("fused_matmul", "parcnet_sgemm")))
    assert rows["parcnet_sgemm_6x8_packed"]["ms"] > 0.5 * gemms > 0.15 * result["end_to_end_ms"]
