"""Benchmark one oversized H+W conv pair per stage shape: PyTorch vs TVM generic vs our op."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import tvm
from tvm import relax

from .model import VARIANTS, parse_input_size, stage_map_sizes, variant_key
from .pipeline import PipelineOptions, compile_relax
from .rewrite import rewrite_oversized_convs
from .schedules import op_passes
from .tables import markdown_table
from .targets import NamedTarget, host_cores, use_threads
from .timing import measure_ms
from .tuning.tasks import tune_oversized_ops
from .verify import load_vm

IMPLS = ("pytorch", "tvm-generic", "ours-direct", "ours-toeplitz", "ours-auto")
TUNED = "ours-tuned"


def stage_shapes(models, input_size=224) -> list[dict]:
    """One row per (model, stage): channels and map size of each stage."""
    size = parse_input_size(input_size)
    rows = []
    for name in models:
        variant = VARIANTS[variant_key(name)]
        for stage, (channels, (height, width)) in enumerate(zip(variant.dims, stage_map_sizes(size))):
            rows.append({"model": variant.name, "stage": stage + 1, "blocks": variant.depths[stage],
                         "channels": channels, "height": height, "width": width,
                         "taps_h": 2 * height - 1, "taps_w": 2 * width - 1})
    return rows


def conv_pair_module(weight_h: np.ndarray, weight_w: np.ndarray, shape) -> tvm.IRModule:
    """A Relax module computing the depth-wise Kx1 then 1xK' pair, each padded K//2 (the
    2H-1 kernels of a resized model, or the official fixed lengths), as imports produce it."""
    channels = shape[1]
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            y = builder.emit(relax.op.nn.conv2d(x, relax.const(weight_h), padding=[weight_h.shape[2] // 2, 0],
                                                groups=channels))
            z = builder.emit_output(relax.op.nn.conv2d(y, relax.const(weight_w), padding=[0, weight_w.shape[3] // 2],
                                                       groups=channels))
        builder.emit_func_output(z)
    return builder.get()


def tune_shape(shape_row: dict, named_target: NamedTarget, work_dir, trials: int, batch: int = 1) -> None:
    """Tune our op (auto algorithm) for one stage shape into the database in `work_dir`."""
    channels, height, width = shape_row["channels"], shape_row["height"], shape_row["width"]
    weight_h = np.zeros((channels, 1, 2 * height - 1, 1), np.float32)
    weight_w = np.zeros((channels, 1, 1, 2 * width - 1), np.float32)
    kind = named_target.target.kind.name
    mod, _, _ = rewrite_oversized_convs(conv_pair_module(weight_h, weight_w, (batch, channels, height, width)),
                                        target_kind=kind, passes_for=op_passes(kind))
    tune_oversized_ops(mod, named_target, work_dir, trials)


def _cuda_graph_replay(fn):
    """`fn`'s GPU work captured once in a CUDA graph; returns the replay (PyTorch's recipe:
    warm up on a side stream first)."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _time_pytorch(fn, gpu: bool, repeat: int, number: int) -> float:
    with torch.no_grad():
        run = _cuda_graph_replay(fn) if gpu else fn
        sync = torch.cuda.synchronize if gpu else None
        return measure_ms(run, repeat=repeat, warmup=3, sync=sync, number=number)["median_ms"]


def _time_tvm(vm, x_tvm, device, gpu: bool, repeat: int, number: int) -> float:
    main = vm["main"]
    if gpu:
        main(x_tvm)  # warm-up
        return vm.time_evaluator("main", device, number=number, repeat=repeat)(x_tvm).median * 1e3
    return measure_ms(lambda: main(x_tvm), repeat=repeat, warmup=3, sync=device.sync, number=number)["median_ms"]


def bench_shape(shape_row: dict, named_target: NamedTarget, impls=IMPLS, batch: int = 1,
                repeat: int = 20, number: int = 10, check: bool = True, tuning_log=None) -> list[dict]:
    """Time every impl on one stage shape, same input and threads; checks each against PyTorch.

    On CPUs each call is timed from Python. On a GPU a call from Python costs ~10 us, more
    than the kernels of the smaller stages, so both sides are timed without it: PyTorch's two
    cuDNN calls replayed from a CUDA graph, TVM's op by the VM's own timer (a C++ loop).
    'ours-tuned' uses the schedules recorded in `tuning_log` (hand schedules where it has none)."""
    channels, height, width = shape_row["channels"], shape_row["height"], shape_row["width"]
    shape = (batch, channels, height, width)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    weight_h = (0.05 * rng.standard_normal((channels, 1, 2 * height - 1, 1))).astype(np.float32)
    weight_w = (0.05 * rng.standard_normal((channels, 1, 1, 2 * width - 1))).astype(np.float32)
    x_t, wh_t, ww_t = map(torch.from_numpy, (x, weight_h, weight_w))

    def pytorch():
        return F.conv2d(F.conv2d(x_t, wh_t, padding=(height - 1, 0), groups=channels),
                        ww_t, padding=(0, width - 1), groups=channels)

    with torch.no_grad():
        expected = pytorch().numpy()
    gpu = named_target.name == "cuda"
    if gpu:  # PyTorch's baseline on the GPU: cuDNN's depth-wise conv
        x_t, wh_t, ww_t = x_t.cuda(), wh_t.cuda(), ww_t.cuda()
    use_threads(host_cores())  # PyTorch and TVM alike (load_vm keeps it)
    device = named_target.device()
    rows = []
    for impl in impls:
        if impl == "pytorch":
            median = _time_pytorch(pytorch, gpu, repeat, number)
        else:
            custom_op = impl != "tvm-generic"
            algo = impl.split("-", 1)[1] if custom_op and impl != TUNED else "auto"
            options = PipelineOptions(custom_op=custom_op, oversized_algo=algo, tvm_default=not custom_op,
                                      tuning_logs=(tuning_log,) if impl == TUNED else ())
            executable = compile_relax(conv_pair_module(weight_h, weight_w, shape), named_target, options)
            vm = load_vm(executable, device)
            x_tvm = tvm.runtime.tensor(x, device)
            if check:
                error = float(np.abs(vm["main"](x_tvm).numpy() - expected).max())
                if error > 1e-4:
                    raise AssertionError(f"{impl} differs from PyTorch by {error:.3g} on {shape}")
            median = _time_tvm(vm, x_tvm, device, gpu, repeat, number)
        rows.append(dict(shape_row, impl=impl, median_ms=median))
    return rows


def _ratio(group: dict) -> str:
    """PyTorch's time over ours: the default build's op (ours-auto), else the fastest of ours run."""
    ours = group.get("ours-auto") or min((ms for impl, ms in group.items() if impl.startswith("ours")), default=None)
    return f"{group['pytorch'] / ours:.1f}x" if ours and "pytorch" in group else "-"


def format_table(rows: list[dict]) -> str:
    """One line per stage shape, and per model a line for a whole forward pass: each stage's
    time times its number of blocks (the stages' shares of the op's time in the model)."""
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    table = []
    for model in dict.fromkeys(r["model"] for r in rows):
        stages = list(dict.fromkeys(r["stage"] for r in rows if r["model"] == model))
        totals: dict = {}
        for stage in stages:
            group = {r["impl"]: r for r in rows if (r["model"], r["stage"]) == (model, stage)}
            first = next(iter(group.values()))
            times = {impl: r["median_ms"] for impl, r in group.items()}
            for impl, ms in times.items():
                totals[impl] = totals.get(impl, 0.0) + first["blocks"] * ms
            table.append([model, stage, first["channels"], f"{first['height']}x{first['width']}",
                          f"{first['taps_h']}+{first['taps_w']}",
                          *(f"{times[i]:.4f}" if i in times else "-" for i in impls), _ratio(times)])
        if len(stages) == 4:
            blocks = "+".join(str(next(r["blocks"] for r in rows if (r["model"], r["stage"]) == (model, s)))
                              for s in stages)
            table.append([model, f"all ({blocks} blocks)", "", "", "",
                          *(f"{totals[i]:.4f}" if i in totals else "-" for i in impls), _ratio(totals)])
    return "\n".join(markdown_table(["model", "stage", "C", "HxW", "taps", *(f"{i} ms" for i in impls),
                                      "speedup vs pytorch"], table))
