"""The CPU hand rules (schedules/cpu_*.py): which kernels each one schedules, that a scheduled
kernel computes what TVM's unscheduled kernel computes, that tiles follow the target, and
that the rules are MetaSchedule's design space."""

import math
import re

import numpy as np
import pytest
import tvm
from tvm import tirx

from parcnet_tvm.schedules import hand_rule_for, schedule_kernels
from parcnet_tvm.schedules.cpu_target import cpu_target
from parcnet_tvm.schedules.cpu_tiling import register_tile_choices, tile_registers
from parcnet_tvm.targets import get_target
from parcnet_tvm.tuning.tasks import extract_tasks, task_contexts

# Every kernel family of ParCNetV2 and the rule that must schedule it.
FAMILY_RULES = {
    "fused_matmul": "cpu_gemm",                  # 1x1 convs and Linear layers, bias/residual fused
    "layer_norm_general": "cpu_layer_norm_general",
    "oversized_conv": "oversized_conv",
    "gelu": "cpu_elementwise",
    "transpose": "cpu_elementwise",
}
TARGETS = {"avx512": ("x86", "znver4"), "avx2": ("x86", "haswell"), "neon": ("arm", None)}


def named(isa):
    name, mcpu = TARGETS[isa]
    return get_target(name, mcpu=mcpu)


def rule_of(kernel_schedules: dict) -> dict:
    return {kernel: rule for rule, kernels in kernel_schedules.items() for kernel in kernels}


@pytest.mark.parametrize("isa", list(TARGETS))
def test_every_kernel_gets_a_hand_rule_on_every_cpu(fused_xt, isa):
    _, used = schedule_kernels(fused_xt, named(isa).target)
    assert not [rule for rule in used if "fallback" in rule], used
    rules = rule_of(used)
    assert len(rules) == sum(isinstance(f, tirx.PrimFunc) for _, f in fused_xt.functions_items())
    checked = 0
    for kernel, rule in rules.items():
        expected = expected_rule(kernel)
        if expected:
            assert rule == expected, (kernel, rule)
            checked += 1
    assert checked >= 50  # of XT's 66 kernels; the rest are reshapes, splits, the head


def expected_rule(kernel: str) -> str | None:
    if kernel.startswith("fused_conv2d"):  # the 7x7 depth-wise convs carry their add and gate
        return "cpu_depthwise_conv" if "multiply" in kernel else "cpu_conv"
    return next((rule for family, rule in FAMILY_RULES.items() if family in kernel), None)


def _one_kernel_per_rule(fused, target) -> dict:
    _, used = schedule_kernels(fused, target)
    return {rule: kernels[0] for rule, kernels in used.items()}


def _run(func, target, inputs) -> np.ndarray:
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    arrays = [tvm.runtime.tensor(a) for a in inputs]
    lib.mod["main"](*arrays)
    return arrays[-1].numpy()


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_each_rule_computes_what_the_unscheduled_kernel_computes(fused_xt, isa):
    """One kernel per rule, scheduled by our rule and by nothing (TVM's naive lowering), on the
    same random inputs (AVX-512 code runs only on a host that has it)."""
    target = named(isa).target
    if isa == "avx512" and cpu_target(get_target("x86").target).isa != "avx512":
        pytest.skip("this host has no AVX-512")
    scheduled, _ = schedule_kernels(fused_xt, target)
    rng = np.random.default_rng(0)
    for rule, kernel in _one_kernel_per_rule(fused_xt, target).items():
        plain = fused_xt[kernel]
        inputs = [rng.standard_normal([int(d) for d in p.ty.shape]).astype("float32") for p in plain.params]
        expected = _run(plain, get_target("x86", mcpu="x86-64").target, inputs)
        got = _run(scheduled[kernel], target, inputs)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4, err_msg=f"{rule}: {kernel}")


def test_tiles_follow_the_vector_width_and_register_file():
    avx512, avx2, neon = (cpu_target(named(isa).target) for isa in ("avx512", "avx2", "neon"))
    assert (avx512.lanes, avx512.vector_registers) == (16, 32)
    assert (avx2.lanes, avx2.vector_registers) == (8, 16)
    assert (neon.lanes, neon.vector_registers) == (4, 16) and neon.cores == 4
    assert cpu_target(get_target("x86", mcpu="x86-64").target).lanes == 4  # SSE only
    # XT's stage-1 fc1 GEMM: 3136 tokens x 240 channels.
    for cpu in (avx512, avx2, neon):
        _, _, (rows, vectors) = register_tile_choices(3136, 240 // cpu.lanes, cpu.vector_registers)
        assert tile_registers(rows, vectors) <= cpu.vector_registers
        assert rows * vectors >= cpu.vector_registers // 2  # enough accumulators to hide FMA latency


@pytest.mark.parametrize("isa, lanes", [("avx512", 16), ("avx2", 8), ("neon", 4)])
def test_gemm_is_vectorised_by_the_targets_vector_width(fused_xt, isa, lanes):
    target = named(isa).target
    scheduled, used = schedule_kernels(fused_xt, target)
    gemm = scheduled[used["cpu_gemm"][0]].script()
    assert re.search(rf"T\.vectorized\((T\.int64\()?{lanes}\)", gemm) and "T.parallel" in gemm
    assert '"local"' in gemm  # accumulators in registers, written once with the fused add


def test_hand_rules_are_the_design_space_unless_generic_is_asked(fused_xt, tmp_path):
    target = get_target("x86")
    tasks = extract_tasks(fused_xt, target, only=("fused_matmul1_add", "layer_norm_general"))
    ours, _ = task_contexts(tasks, target, tmp_path / "ours", "ours", seed=0)
    generic, _ = task_contexts(tasks, target, tmp_path / "generic", "generic", seed=0)
    for task, context in zip(tasks, ours):
        assert hand_rule_for(task.dispatched[0]["main"], target.target) is not None
        assert type(context.space_generator).__name__ == "ScheduleFn"
    assert all(type(c.space_generator).__name__ == "PostOrderApply" for c in generic)
    gemm = [c for t, c in zip(tasks, ours) if "matmul" in t.task_name][0]
    space = gemm.generate_design_space()
    assert len(space) == 1
    knobs = [inst for inst in space[0].trace.insts if inst.kind.name == "SampleCategorical"]
    assert knobs  # the register tile's rows (its vectors too where more than one width fits)


def test_neon_gemm_walks_row_blocks_over_packed_weight_panels():
    """NEON: a chunk is a block of rows (a multiple of every row tile) per column tile, and
    weights whose rows fall on few L1 sets are packed per chunk; never at too few chunks."""
    from parcnet_tvm.schedules.cpu_gemm import panel_conflicts, row_block

    assert row_block(3136, [2, 4, 7, 8], 15, 16) == 56   # XT stage 1 at 224
    assert row_block(196, [2, 4, 7], 60, 16) == 28
    assert row_block(49, [7], 100, 16) == 49             # one tile row choice: all the rows
    assert row_block(256, [2, 4, 8], 3, 16) is None       # 3 chunks would idle the cores
    assert panel_conflicts(960, 192, 32 * 1024)           # rows 60 lines apart: 32 of 128 sets
    assert not panel_conflicts(240, 48, 32 * 1024)


def test_x86_gemm_keeps_row_tiles_outermost(fused_xt):
    scheduled, used = schedule_kernels(fused_xt, named("avx2").target)
    for kernel in used["cpu_gemm"]:
        assert "param_0_local" not in scheduled[kernel].script()


def _gemm_with_bias(rows: int, columns: int, depth: int):
    from tvm import te

    a, b = te.placeholder((rows, depth), name="A"), te.placeholder((depth, columns), name="B")
    bias = te.placeholder((columns,), name="bias")
    k = te.reduce_axis((0, depth), name="k")
    product = te.compute((rows, columns), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="matmul")
    out = te.compute((rows, columns), lambda i, j: product[i, j] + bias[j], name="T_add")
    return te.create_prim_func([a, b, bias, out])


def test_neon_gemm_chunks_follow_the_shared_l2_and_the_cores():
    from parcnet_tvm.schedules.cpu_gemm import micro_plan

    neon = cpu_target(named("neon").target)  # 4 cores, 4 x 256 KiB of L2 shared

    def plan(rows, columns, depth):
        p = micro_plan(rows, columns, depth, neon)
        return p.group, p.tiles_per_block
    assert plan(196, 1024, 320) == (4, 33)     # 32 column groups: all 198 padded rows in one block
    assert plan(196, 320, 320) == (2, 33)      # 20 groups of 2 divide among 4 cores, 10 of 4 need blocks
    assert plan(196, 1024, 1152) == (4, 11)    # 33 tiles of 27 KiB: 11 fit 3/4 MiB
    assert plan(784, 32, 32) == (1, 33)        # 4 column tiles: 4 row blocks of them
    assert plan(1, 1000, 64) == (1, 1)         # 125 column tiles: groups of 1
    # a chunk's accumulators (row tiles x 4 column tiles) stay within 64 KiB
    assert max(micro_plan(3136, 256, 64, neon).tile_choices) == 75


def test_neon_gemm_steps_through_the_reduction_with_a_group_in_l1():
    """A row tile's inputs and a group of column tiles' weights, per reduction step, fit 3/4 of
    the A17's L1; row tiles are padded to a count that has row blocks."""
    from parcnet_tvm.schedules import neon_gemm
    from parcnet_tvm.schedules.cpu_gemm import micro_depth_block

    assert micro_depth_block(1280, 4, 32 * 1024) == 160   # 160 x (32 + 6) floats: 23.75 KiB
    assert micro_depth_block(148, 4, 32 * 1024) == 148    # the whole depth fits
    assert micro_depth_block(4 * 41, 4, 32 * 1024) == 4 * 41  # only steps of 4 divide it: none
    assert neon_gemm.padded_tiles(49) == 9 and neon_gemm.padded_tiles(196) == 33
    assert neon_gemm.padded_tiles(3136) == 525            # 523 is a prime: 21 blocks of 25


def test_neon_gemm_samples_its_row_blocks_when_tuned():
    """Tuning: MetaSchedule's knob is the row tiles per block (3, 11 or 33 of T's 33), and every
    sample compiles (the group and the reduction step are fixed per shape)."""
    from tvm import s_tir

    from parcnet_tvm.schedules.cpu_gemm import GemmCpu

    arm, sampled = named("neon"), set()
    for seed in range(1, 7):
        sch = s_tir.Schedule(_gemm_with_bias(196, 320, 320), seed=seed)
        assert GemmCpu().schedule(sch, arm.target, True)
        knob, = [inst for inst in sch.trace.insts if inst.kind.name == "SampleCategorical"]
        assert [int(c) for c in knob.attrs[0]] == [3, 11, 33]
        sampled.add(int(sch.trace.decisions[knob]))
        tvm.compile(sch.mod, target=arm.target)
    assert len(sampled) >= 2


def _depthwise_gated(height: int, width: int, channels: int, stride: int = 1):
    """ParCNetV2's depth-wise 7x7 conv with the add and gate fused after it (NHWC, HWIO)."""
    from tvm import te, topi

    x = te.placeholder((1, height, width, channels), name="x")
    weights = te.placeholder((7, 7, 1, channels), name="w")
    other, gate = (te.placeholder(x.shape if stride == 1 else (1, height // 2, width // 2, channels), name=n)
                   for n in ("other", "gate"))
    conv = topi.nn.group_conv2d_nhwc(x, weights, stride, 3, 1, channels)
    out = topi.multiply(gate, topi.add(other, conv))
    return te.create_prim_func([x, weights, other, gate, out])


def test_neon_depthwise_kernel_takes_the_7x7_convs_of_whole_groups_of_7_outputs():
    """Our NEON kernel computes 7 outputs of a row: convs of other widths, windows or strides
    keep the LLVM tile (T's four depth-wise convs at 224 all fit: 56, 28, 14 and 7 wide)."""
    from tvm import s_tir

    from parcnet_tvm.schedules import neon_depthwise
    from parcnet_tvm.schedules.cpu_depthwise import DepthwiseConvCpu

    for size, channels in ((56, 64), (28, 128), (14, 320), (7, 512)):
        assert neon_depthwise.fits(size, size, channels, (7, 7), [1, size + 6, size + 6, channels], [7, 7, 1, channels])
    assert not neon_depthwise.fits(8, 8, 64, (7, 7), [1, 14, 14, 64], [7, 7, 1, 64])      # 8 wide
    assert not neon_depthwise.fits(7, 7, 64, (5, 5), [1, 11, 11, 64], [5, 5, 1, 64])      # 5x5 window
    assert not neon_depthwise.fits(7, 7, 64, (7, 7), [1, 20, 20, 64], [7, 7, 1, 64])      # padded for stride 2
    assert not neon_depthwise.fits(7, 7, 66, (7, 7), [1, 13, 13, 66], [7, 7, 1, 66])      # partial vector
    assert not neon_depthwise.fits(7, 7, 64, (7, 7), [1, 13, 13, 64], [7, 7, 1, 64], "float16")
    arm = named("neon").target
    for func, on_kernel in ((_depthwise_gated(14, 14, 64), True), (_depthwise_gated(16, 16, 64), False),
                            (_depthwise_gated(28, 28, 64, stride=2), False)):
        sch = s_tir.Schedule(func)
        assert DepthwiseConvCpu().schedule(sch, arm, False)
        assert (neon_depthwise.SYMBOL in sch.mod.script()) == on_kernel
    # tuning: the schedule's trace (our kernel's intrinsic in it) replays on a fresh schedule, as
    # MetaSchedule replays a log's records, and compiles
    sch = s_tir.Schedule(_depthwise_gated(14, 14, 64))
    assert DepthwiseConvCpu().schedule(sch, arm, True)
    replayed = s_tir.Schedule(_depthwise_gated(14, 14, 64))
    sch.trace.apply_to_schedule(replayed, remove_postproc=False)
    tvm.ir.assert_structural_equal(replayed.mod, sch.mod)
    tvm.compile(replayed.mod, target=arm)


@pytest.mark.usefixtures("runtime")
def test_neon_kernels_match_numpy_on_the_emulated_board(tmp_path):
    """GEMMs on our NEON micro-kernel, run on the emulated board: rows padded to whole tiles
    (49 rows: only the real rows written, the bias fused), copied weight panels (rows 960 floats
    apart alias few L1 sets, copied per step of two reduction steps), a reduction of 148 (the
    stem's im2col), a single row, and 3136 rows padded to 525 tiles in row blocks. Depth-wise
    convs on our NEON kernel with their add and gate: 64 channels (lines of 16, 2 bands of rows,
    the padded copy's pixels aligned), 36 channels (lines of one vector) 21 wide. The GELU
    kernels on channel halves, alone and gated, against libm's erf."""
    from tvm import s_tir

    from parcnet_tvm import board
    from parcnet_tvm.gelu_gates import gelu_rows
    from parcnet_tvm.pipeline import kernel_scratch_bytes
    from parcnet_tvm.schedules import neon_depthwise, neon_gemm
    from parcnet_tvm.schedules.cpu_depthwise import DepthwiseConvCpu
    from parcnet_tvm.schedules.cpu_gemm import GemmCpu
    from parcnet_tvm.targets import arm_linker

    arm = named("neon")
    shapes = [(49, 64, 148), (196, 960, 384), (1, 1000, 64), (3136, 32, 64)]
    libraries = []
    for rows, columns, depth in shapes:
        sch = s_tir.Schedule(_gemm_with_bias(rows, columns, depth))
        assert GemmCpu().schedule(sch, arm.target, False)
        script = sch.mod.script()
        assert "parcnet_sgemm_6x8_packed" in script
        if columns == 960:  # rows 960 floats apart alias few L1 sets: the group's panel copied per step
            assert re.search(r"T\.vectorized\(8\):\s+with T\.sblock\(\"B_local\"\)", script)
            assert re.search(r"for k_0 in range\(2\)", script), script  # two reduction steps
        # the write-back of a block's last tile skips its padding rows (49: 9 blocks of 1 tile;
        # 3136: 5 blocks of 105 tiles, the last with 14 padding rows)
        assert rows not in (49, 3136) or f"< {rows})" in script
        # the packed rows are scratch memory the footprint counts (rows padded to whole tiles)
        assert kernel_scratch_bytes(sch.mod) == neon_gemm.padded_tiles(rows) * 6 * depth * 4
        libraries.append(tmp_path / f"gemm_{rows}_{columns}_{depth}.so")
        tvm.compile(sch.mod, target=arm.target).export_library(str(libraries[-1]), fcompile=arm_linker())
    depthwise = [(14, 14, 64), (7, 21, 36)]
    for height, width, channels in depthwise:
        sch = s_tir.Schedule(_depthwise_gated(height, width, channels))
        assert DepthwiseConvCpu().schedule(sch, arm.target, False)
        script = sch.mod.script()
        assert neon_depthwise.SYMBOL in script and "buffer_dim_align" in script
        if channels == 64:  # 4 lines x 2 bands of 7 rows: 8 jobs, 2 per core
            assert "T.parallel(8)" in script
            # the padded copy's pixels 80 floats apart (5 cache lines), which the footprint counts
            assert kernel_scratch_bytes(sch.mod) == 20 * 20 * 80 * 4
        else:  # 36 channels (2.25 lines): 48 floats, 3 lines apart
            assert kernel_scratch_bytes(sch.mod) == 13 * 27 * 48 * 4
        libraries.append(tmp_path / f"depthwise_{height}_{width}_{channels}.so")
        tvm.compile(sch.mod, target=arm.target).export_library(str(libraries[-1]), fcompile=arm_linker())
    gelus = [(False, 24), (True, 24), (True, 8)]  # (gated, channels of the split's input)
    for gated, channels in gelus:
        libraries.append(tmp_path / f"gelu_{gated}_{channels}.so")
        tvm.compile(gelu_rows((1, 3, 5, channels), gated), target=arm.target).export_library(
            str(libraries[-1]), fcompile=arm_linker())
    rng = np.random.default_rng(0)
    with board.emulated_board(log=lambda *_: None) as tracker:
        session = board.connect(tracker, board.EMULATED_KEY, None)
        device = session.cpu(0)
        for (rows, columns, depth), library in zip(shapes, libraries):
            session.upload(str(library))
            kernel = session.load_module(library.name)["main"]
            a, b = rng.standard_normal((rows, depth), "float32"), rng.standard_normal((depth, columns), "float32")
            bias = rng.standard_normal(columns, "float32")
            out = tvm.runtime.tensor(np.full((rows, columns), np.nan, "float32"), device)
            kernel(*(tvm.runtime.tensor(x, device) for x in (a, b, bias)), out)
            np.testing.assert_allclose(out.numpy(), a @ b + bias, rtol=1e-4, atol=1e-4)
        for (height, width, channels), library in zip(depthwise, libraries[len(shapes):]):
            session.upload(str(library))
            kernel = session.load_module(library.name)["main"]
            x, other, gate = (rng.standard_normal((1, height, width, channels), "float32") for _ in range(3))
            weights = rng.standard_normal((7, 7, 1, channels), "float32")
            out = tvm.runtime.tensor(np.full(x.shape, np.nan, "float32"), device)
            kernel(*(tvm.runtime.tensor(v, device) for v in (x, weights, other, gate)), out)
            padded = np.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))
            conv = sum(padded[:, ry:ry + height, rx:rx + width, :] * weights[ry, rx, 0]
                       for ry in range(7) for rx in range(7))
            np.testing.assert_allclose(out.numpy(), gate * (other + conv), rtol=1e-4, atol=1e-4)
        erf = np.vectorize(math.erf)
        for (gated, channels), library in zip(gelus, libraries[len(shapes) + len(depthwise):]):
            session.upload(str(library))
            kernel = session.load_module(library.name)["main"]
            # the erf's whole range and past its clamp at +-4 sqrt 2, zeros, and 1e-3-sized values
            x = rng.uniform(-12, 12, (1, 3, 5, channels)).astype("float32")
            x[0, 0, 0, channels // 2:][:4] = [0, 1e-3, 40, -40]
            x[0, 0, 1, channels // 2:][:4] = [-0.0, -1e-3, 5.657, -5.657]
            out = tvm.runtime.tensor(np.full((1, 3, 5, channels // 2), np.nan, "float32"), device)
            kernel(tvm.runtime.tensor(x, device), out)
            first, second = x[..., :channels // 2].astype(np.float64), x[..., channels // 2:].astype(np.float64)
            scale = np.abs(first) if gated else 1.0
            want = second * (0.5 + 0.5 * erf(second / math.sqrt(2))) * (first if gated else 1)
            # the fast erf is within 4e-7 of erf, 1/2 + erf/2 within ~1e-7 where it cancels
            # (x << 0): a GELU within 2e-6 + 2e-7 |x| (1.4e-6 at x = -12), times the gate
            error = np.abs(out.numpy() - want)
            bound = (2e-6 + 2e-7 * np.abs(second)) * np.maximum(scale, 1) + 1e-6 * np.abs(want)
            assert (error <= bound).all(), (error / bound).max()


def test_neon_depthwise_loads_each_input_vector_once_per_kernel_row(fused_xt):
    """NEON (16 registers), widths our kernel does not take (XT at 64: 16, 8, 4, 2): a depth-wise
    conv's tile is one channel vector of at most 4 outputs, and its kernel row (7 taps) is
    unrolled, so the 4 + 6 input vectors are loaded once per row."""
    scheduled, used = schedule_kernels(fused_xt, named("neon").target)
    assert used["cpu_depthwise_conv"]
    for kernel in used["cpu_depthwise_conv"]:
        loops = [line.strip() for line in scheduled[kernel].script().splitlines() if line.strip().startswith("for ")]
        kernel_columns = [line for line in loops if re.match(r"for rx in T\.unroll\((T\.int64\()?7\)", line)]
        outputs = [int(n) for line in loops if line.startswith("for xx_1 in")
                   for n in re.findall(r"T\.unroll\((?:T\.int64\()?(\d+)\)", line)]
        assert kernel_columns and outputs and max(outputs) <= 4, (kernel, loops)
