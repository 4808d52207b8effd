"""Our oversized depth-wise conv op: numerics of both algorithms, hand schedules per target."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
from support import cuda_kernel_limits
from tvm import te

from parcnet_tvm import ParcnetError
from parcnet_tvm.bench_op import conv_pair_module, stage_shapes
from parcnet_tvm.oversized import (
    TOEPLITZ_MAX_BYTES,
    choose_algo,
    kernel_over_map,
    oversized_conv,
    reference,
    weight_constants,
)
from parcnet_tvm.pipeline import PipelineOptions, compile_relax
from parcnet_tvm.rewrite import count_oversized_convs, rewrite_oversized_convs
from parcnet_tvm.schedules.cpu_oversized import OversizedConvArm, OversizedConvX86
from parcnet_tvm.schedules.cuda_oversized import SHARED_BYTES, OversizedConvCuda, cuda_passes
from parcnet_tvm.targets import get_target
from parcnet_tvm.verify import load_vm

X86 = get_target("x86")


def _case(channels, height, width, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, channels, height, width), dtype=np.float32)
    wh = (0.1 * rng.standard_normal((channels, 1, 2 * height - 1, 1))).astype(np.float32)
    ww = (0.1 * rng.standard_normal((channels, 1, 1, 2 * width - 1))).astype(np.float32)
    return x, wh, ww


def _pytorch_pair(x, wh, ww):
    _, channels, height, width = x.shape
    with torch.no_grad():
        y = F.conv2d(torch.from_numpy(x), torch.from_numpy(wh), padding=(height - 1, 0), groups=channels)
        return F.conv2d(y, torch.from_numpy(ww), padding=(0, width - 1), groups=channels).numpy()


def _run_pair(x, wh, ww, algo):
    executable = compile_relax(conv_pair_module(wh, ww, x.shape), X86, PipelineOptions(oversized_algo=algo))
    vm = load_vm(executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


SHAPES = [(r["channels"], r["height"], r["width"]) for size in (224, 160)
          for r in stage_shapes(["xt", "t"], size)]


@pytest.mark.parametrize("algo", ["direct", "toeplitz"])
@pytest.mark.parametrize("channels, height, width", SHAPES)
def test_stage_shapes_match_pytorch(channels, height, width, algo):
    x, wh, ww = _case(channels, height, width)
    assert np.abs(_run_pair(x, wh, ww, algo) - _pytorch_pair(x, wh, ww)).max() <= 1e-4


@pytest.mark.parametrize("algo", ["direct", "toeplitz"])
@pytest.mark.parametrize("channels, height, width", [
    (5, 7, 12),   # H != W, channels not a multiple of any vector width
    (3, 1, 8),    # a 1-row map: the H kernel has a single tap
    (6, 9, 1),    # a 1-column map
    (17, 13, 29), # primes everywhere
])
def test_odd_shapes_match_pytorch(channels, height, width, algo):
    x, wh, ww = _case(channels, height, width, seed=1)
    assert np.abs(_run_pair(x, wh, ww, algo) - _pytorch_pair(x, wh, ww)).max() <= 1e-4


@pytest.mark.parametrize("algo", ["direct", "toeplitz"])
@pytest.mark.parametrize("channels, height, width, length_h, length_w", [
    (8, 14, 10, 27, 27),     # kernels longer than 2H-1 (the official 27 on a smaller map)
    (6, 20, 30, 13, 13),     # shorter than 2H-1 (the official 13 on a larger map)
    (5, 7, 12, 111, 55),     # far longer, and different per axis
    (4, 9, 9, 17, 17),       # exactly 2H-1
])
def test_any_odd_kernel_length_runs_on_our_op_with_the_official_padding(channels, height, width,
                                                                         length_h, length_w, algo):
    """Reference: F.conv2d with padding K//2, as the official OversizeConv2d runs it."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, channels, height, width), dtype=np.float32)
    wh = (0.1 * rng.standard_normal((channels, 1, length_h, 1))).astype(np.float32)
    ww = (0.1 * rng.standard_normal((channels, 1, 1, length_w))).astype(np.float32)
    mod, replaced, _ = rewrite_oversized_convs(conv_pair_module(wh, ww, x.shape), algo)
    assert replaced == 1
    with torch.no_grad():
        y = F.conv2d(torch.from_numpy(x), torch.from_numpy(wh), padding=(length_h // 2, 0), groups=channels)
        expected = F.conv2d(y, torch.from_numpy(ww), padding=(0, length_w // 2), groups=channels).numpy()
    assert np.abs(_run_pair(x, wh, ww, algo) - expected).max() <= 1e-4


def test_kernel_over_map_places_taps_around_the_centre():
    kernel = np.arange(1, 8, dtype=np.float32).reshape(1, 7)  # 7 taps, centre 4
    assert kernel_over_map(kernel, 2).tolist() == [[3, 4, 5]]  # 2H-1 = 3: the centre three
    assert kernel_over_map(kernel, 4).tolist() == [[1, 2, 3, 4, 5, 6, 7]]
    assert kernel_over_map(kernel, 5).tolist() == [[0, 1, 2, 3, 4, 5, 6, 7, 0]]
    with pytest.raises(ParcnetError, match="even length 6"):
        kernel_over_map(kernel[:, :6], 4)


def _te_func(channels, height, width, algo, passes):
    x, wh, ww = _case(channels, height, width, seed=2)
    constants = weight_constants(algo, passes, wh, ww, height, width)
    x_te = te.placeholder(x.shape, name="x")
    taps = [te.placeholder(c.shape, name=f"taps{i}") for i, c in enumerate(constants)]
    func = te.create_prim_func([x_te, *taps, oversized_conv(x_te, *taps, algo=algo, passes=passes)])
    return func, x, constants, reference(x, wh, ww, passes)


@pytest.mark.parametrize("algo", ["direct", "toeplitz"])
@pytest.mark.parametrize("passes", ["h", "w"])
def test_single_passes_match_reference(algo, passes):
    func, x, constants, expected = _te_func(24, 28, 20, algo, passes)
    executable = tvm.compile(OversizedConvX86().apply(func, X86.target, False).mod, target=X86.target)
    args = [tvm.runtime.tensor(a) for a in (x, *constants, np.zeros_like(x))]
    executable.mod["main"](*args)
    assert np.abs(args[-1].numpy() - expected).max() <= 1e-4


def test_auto_rule_prefers_toeplitz_until_constants_get_large():
    assert choose_algo("auto", 64, 56, 56) == "toeplitz"
    assert choose_algo("auto", 512, 7, 7) == "toeplitz"
    big = int((TOEPLITZ_MAX_BYTES / 4 / 2) ** 0.5) + 8  # H = W such that C=1 already exceeds the budget
    assert choose_algo("auto", 1, big, big) == "direct"
    assert choose_algo("direct", 64, 56, 56) == "direct"
    assert choose_algo("auto", 64, 56, 56, "cuda") == "direct"  # the register-tiled CUDA schedule
    assert choose_algo("auto", 64, 56, 56, "arm") == "direct"  # the board's memory
    assert choose_algo("toeplitz", 64, 56, 56, "arm") == "toeplitz"
    assert choose_algo("toeplitz", 64, 56, 56, "cuda") == "toeplitz"
    with pytest.raises(ParcnetError, match="auto, direct, toeplitz"):
        choose_algo("fft", 64, 56, 56)


@pytest.mark.parametrize("algo", ["direct", "toeplitz"])
def test_arm_schedule_compiles_to_neon(algo):
    arm = get_target("arm")
    func, *_ = _te_func(64, 56, 56, algo, "hw")
    sch = OversizedConvArm().apply(func, arm.target, False)
    assert sch is not None and OversizedConvX86().apply(func, arm.target, False) is None
    assert "T.vectorized(4)" in sch.mod.script()  # 4-lane fp32 NEON vectors
    asm = tvm.compile(sch.mod, target=arm.target).mod.inspect_source("asm")
    assert "vfma.f32\tq" in asm or "vmla.f32\tq" in asm  # quad-register multiply-accumulates


def _cuda_source(func) -> str:
    cuda = get_target("cuda", cuda_arch="sm_86")
    sch = OversizedConvCuda().apply(func, cuda.target, False)
    source = _compiled_cuda_source(sch.mod)
    assert "blockIdx.x" in source and "threadIdx.x" in source
    assert "__shared__" in source and "__syncthreads" in source
    return source


def _compiled_cuda_source(mod) -> str:
    executable = tvm.compile(mod, target=get_target("cuda", cuda_arch="sm_86").target)
    kernels = [m for m in executable.mod.imports if m.kind == "cuda"]
    return kernels[0].inspect_source()


def test_cuda_toeplitz_schedule_binds_blocks_threads_and_shared_memory():
    func, *_ = _te_func(64, 56, 56, "toeplitz", "hw")
    source = _cuda_source(func)
    assert "blockIdx.y" in source
    assert "__launch_bounds__(224)" in source  # 4 rows x 56 columns: not a single-thread fallback


@pytest.mark.parametrize("passes", ["hw", "h", "w"])
def test_cuda_direct_schedule_keeps_register_tiles(passes):
    """56x56 maps: a block per channel map, 8 outputs per thread accumulated in registers along
    the sliding window, and the rows the W pass reads down their columns padded to an odd stride."""
    func, *_ = _te_func(64, 56, 56, "direct", passes)
    source = _cuda_source(func)
    assert "__launch_bounds__(392)" in source  # 56 x 56 outputs / 8 per thread
    accumulators = re.findall(r"float (\w+_local_ptr)\[(\d+)\];", source)
    assert len(accumulators) == len(passes) and all(size == "8" for _, size in accumulators)
    assert "for (int r" not in source  # the reduction is unrolled: taps are reused from registers
    if "w" in passes:
        assert "* 57)" in source  # 56-float rows stored with a stride of 57


@pytest.mark.parametrize("height, width, passes", [
    (56, 56, ("hw",)), (80, 80, ("hw",)), (56, 80, ("hw",)),  # stage 1 at 224, 320, 224x320
    (112, 112, ("h", "w")), (128, 128, ("h", "w")),  # stage 1 at 448 and 512: a map exceeds 48 KB
    (13, 29, ("hw",)), (1, 8, ("hw",)), (9, 1, ("hw",)),
])
def test_cuda_op_fits_a_thread_block_at_every_map_size(height, width, passes):
    """Where a block cannot stage a channel's whole map, our op runs on CUDA as two ops, one per
    pass (H: strips of columns, W: strips of rows). Every kernel stays within the static shared
    memory and threads a block may have, and computes its pass (run thread by thread here)."""
    from gpu_emulation import run_on_cpu

    assert cuda_passes("direct", height, width) == passes
    for one in passes:
        func, x, constants, expected = _te_func(3, height, width, "direct", one)
        sch = OversizedConvCuda().apply(func, get_target("cuda", cuda_arch="sm_86").target, False)
        for shared, threads in cuda_kernel_limits(_compiled_cuda_source(sch.mod)):
            assert 0 < shared <= SHARED_BYTES and 1 < threads <= 1024 or threads == 1 == height * width
        assert np.abs(run_on_cpu(sch.mod, [x, *constants, np.zeros_like(x)])[-1] - expected).max() <= 1e-4


def test_cuda_rewrite_runs_large_maps_as_two_ops_and_refuses_what_cannot_fit():
    x, wh, ww = _case(2, 112, 112)
    pair = conv_pair_module(wh, ww, x.shape)
    split, replaced, _ = rewrite_oversized_convs(pair, "auto", target_kind="cuda", passes_for=cuda_passes)
    assert replaced == 1 and count_oversized_convs(split) == 2  # the H pass, then the W pass
    assert count_oversized_convs(rewrite_oversized_convs(pair, "auto", target_kind="llvm")[0]) == 1
    vm = load_vm(tvm.compile(split, target="llvm"), tvm.cpu())  # the two ops wired in order, on the CPU
    assert np.abs(vm["main"](tvm.runtime.tensor(x)).numpy() - _pytorch_pair(x, wh, ww)).max() <= 1e-4
    with pytest.raises(ParcnetError, match="does not fit a CUDA thread block's shared memory.*--oversized-algo direct"):
        rewrite_oversized_convs(pair, "toeplitz", target_kind="cuda", passes_for=cuda_passes)
