"""The qemu counting plugin (parcnet_tvm/arm_counter/counter.c): instruction classes decoded
from A32 and T32 alike, waiting left out, counts repeatable, kernels named."""

import subprocess

import pytest
from support import SMALL, needs_arm_toolchain

from parcnet_tvm.counting import count_library, count_program

# A NEON dot-product loop between the plugin's markers: 1000 x 1024 q-register FMAs, two
# 16-byte loads each; then a thread that waits by calling sched_yield, as TVM's pool does.
DOT = r"""
#include <arm_neon.h>
#include <sched.h>
#include <stdio.h>
#include <sys/prctl.h>
float a[4096], b[4096];
int main(int argc, char **argv) {
  float32x4_t acc = vdupq_n_f32(0);
  prctl(0x50415243, 1, 0, 0, 0);
  for (int r = 0; r < 1000; r++)
    for (int i = 0; i < 4096; i += 4) acc = vfmaq_f32(acc, vld1q_f32(a + i), vld1q_f32(b + i));
  for (int k = 0; k < 200 * (argc > 1); k++) sched_yield();
  prctl(0x50415243, 0, 0, 0, 0);
  printf("%f\n", vgetq_lane_f32(acc, 0));
  return 0;
}
"""


@pytest.fixture(scope="module")
def dot_programs(tmp_path_factory):
    """The loop above compiled in ARM state and in Thumb-2 state (static: no sysroot needed)."""
    out = tmp_path_factory.mktemp("dot")
    (out / "dot.c").write_text(DOT)
    programs = {}
    for state in ("arm", "thumb"):
        programs[state] = out / f"dot_{state}"
        subprocess.run(["arm-linux-gnueabihf-gcc", "-O2", "-march=armv7-a", "-mfpu=neon-vfpv4", "-mfloat-abi=hard",
                        f"-m{state}", "-static", "-o", programs[state], out / "dot.c"], check=True)
    return programs


@needs_arm_toolchain
def test_classes_are_decoded_alike_in_arm_and_thumb_state(dot_programs):
    counts = {state: count_program([path], 1).threads for state, path in dot_programs.items()}
    for state, threads in counts.items():
        (main,) = threads
        assert main["neon_q_mac"] == 1000 * 1024, state  # one VFMA.F32 q per 4 MACs
        assert main["simd_load"] == 2 * 1000 * 1024 and main["simd_load_bytes"] == 32 * 1000 * 1024, state
        assert main["neon_d_mac"] == main["vfp"] == 0, state
        assert main["branch"] >= 1000 * 1024  # the loop's back edge
    keys = ("neon_q_mac", "neon_q", "simd_load", "simd_store", "simd_load_bytes")
    assert [counts["arm"][0][k] for k in keys] == [counts["thumb"][0][k] for k in keys]


@needs_arm_toolchain
def test_waiting_in_sched_yield_is_not_counted(dot_programs):
    quiet = count_program([dot_programs["arm"]], 1).threads[0]
    waiting = count_program([dot_programs["arm"], "wait"], 1).threads[0]
    assert waiting["yields"] == 200 and waiting["spin_insns"] > 0
    # the wait loop's body between two yields is dropped; only its first pass remains
    assert waiting["insns"] - quiet["insns"] < waiting["spin_insns"] / 50


def test_counts_repeat_exactly_and_four_threads_share_the_work(xt_arm):
    library, manifest = xt_arm
    first, second = (count_library(library, manifest["input_shape"], 1).threads for _ in range(2))
    assert first == second  # instructions, bytes and simulated cache misses alike
    four = count_library(library, manifest["input_shape"], 4).busy_threads()
    assert len(four) == 4
    total = sum(t["neon_q_mac"] for t in four)
    assert total == first[0]["neon_q_mac"]  # the same kernels, split across the pool
    assert max(t["neon_q_mac"] for t in four) < 0.4 * total


def test_every_neon_gemm_runs_its_macs_on_the_micro_kernel_as_q_register_multiply_adds(xt_arm):
    """Each GEMM of the ARM graph (1x1 convs, Linear layers, and on ARM the stem and
    downsampling convs as im2col GEMMs) runs its MACs / 4 q-register multiply-accumulates, all
    inside our micro-kernel, on rows padded to whole 6-row tiles (`padded_tiles`, tested on
    its own): nothing else is computed."""
    from tvm import s_tir, tirx

    from parcnet_tvm.frontend import import_model
    from parcnet_tvm.pipeline import fused_module
    from parcnet_tvm.schedules.cpu_gemm import find_gemm
    from parcnet_tvm.schedules.neon_gemm import padded_tiles
    from parcnet_tvm.targets import get_target
    from parcnet_tvm.weights import prepare_model

    library, manifest = xt_arm
    per_symbol = count_library(library, manifest["input_shape"], 1, blocks=True).per_symbol(library)
    fused = fused_module(import_model(prepare_model("xt", SMALL), (1, 3, SMALL, SMALL), "torch"), get_target("arm"))
    main, expected, gemms = fused["main"].script(), 0, 0
    for var, func in fused.functions_items():
        if not isinstance(func, tirx.PrimFunc) or find_gemm(s_tir.Schedule(func)) is None:
            continue
        sch = s_tir.Schedule(func)
        rows, columns, depth = (int(iv.dom.extent) for iv in sch.get(find_gemm(sch)).iter_vars)
        calls = main.count(f"R.call_tir({var.name_hint},")
        assert calls >= 1, var.name_hint
        expected += calls * padded_tiles(rows) * 6 * columns * depth // 4
        gemms += 1
        assert per_symbol.get(f"{var.name_hint}_compute_", {}).get("neon_q_mac", 0) == 0, var.name_hint
    assert gemms >= 10 and per_symbol["parcnet_sgemm_6x8_packed"]["neon_q_mac"] == expected

