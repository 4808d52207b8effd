"""Benchmark one oversized H+W conv pair per stage shape: PyTorch vs TVM generic vs our op."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import tvm
from tvm import relax

from .build import compile_relax
from .rewrite import rewrite_oversized_convs
from .tune import tune_oversized_ops
from .model import VARIANTS, parse_input_size, stage_map_sizes, variant_key
from .targets import NamedTarget, host_cores
from .timing import measure_ms
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
            rows.append({"model": variant.name, "stage": stage + 1, "channels": channels,
                         "height": height, "width": width, "taps_h": 2 * height - 1, "taps_w": 2 * width - 1})
    return rows


def conv_pair_module(weight_h: np.ndarray, weight_w: np.ndarray, shape) -> tvm.IRModule:
    """A Relax module computing the depth-wise (2H-1)x1 then 1x(2W-1) pair, as imports produce it."""
    _, channels, height, width = shape
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            y = builder.emit(relax.op.nn.conv2d(x, relax.const(weight_h), padding=[height - 1, 0], groups=channels))
            z = builder.emit_output(relax.op.nn.conv2d(y, relax.const(weight_w), padding=[0, width - 1],
                                                       groups=channels))
        builder.emit_func_output(z)
    return builder.get()


def tune_shape(shape_row: dict, named_target: NamedTarget, work_dir, trials: int, batch: int = 1) -> None:
    """Tune our op (auto algorithm) for one stage shape into the database in `work_dir`."""
    channels, height, width = shape_row["channels"], shape_row["height"], shape_row["width"]
    weight_h = np.zeros((channels, 1, 2 * height - 1, 1), np.float32)
    weight_w = np.zeros((channels, 1, 1, 2 * width - 1), np.float32)
    mod, _, _ = rewrite_oversized_convs(conv_pair_module(weight_h, weight_w, (batch, channels, height, width)),
                                        target_kind=named_target.target.kind.name)
    tune_oversized_ops(mod, named_target, work_dir, trials)


def bench_shape(shape_row: dict, named_target: NamedTarget, impls=IMPLS, batch: int = 1,
                repeat: int = 20, number: int = 10, check: bool = True, tuning_log=None) -> list[dict]:
    """Time every impl on one stage shape, same input and threads; checks each against PyTorch.

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
    torch_sync = None
    if named_target.name == "cuda":  # PyTorch's baseline on the GPU: cuDNN's depth-wise conv
        x_t, wh_t, ww_t = x_t.cuda(), wh_t.cuda(), ww_t.cuda()
        torch_sync = torch.cuda.synchronize
    torch.set_num_threads(host_cores())
    device = named_target.device()
    rows = []
    for impl in impls:
        if impl == "pytorch":
            run, sync = pytorch, torch_sync
        else:
            custom_op = impl != "tvm-generic"
            algo = impl.split("-", 1)[1] if custom_op and impl != TUNED else "auto"
            executable = compile_relax(conv_pair_module(weight_h, weight_w, shape), named_target, custom_op, algo,
                                       tuning_log=tuning_log if impl == TUNED else None,
                                       tvm_default=not custom_op)
            vm = load_vm(executable, device)
            x_tvm = tvm.runtime.tensor(x, device)
            main = vm["main"]
            if check:
                error = float(np.abs(main(x_tvm).numpy() - expected).max())
                if error > 1e-4:
                    raise AssertionError(f"{impl} differs from PyTorch by {error:.3g} on {shape}")

            def run(main=main, x_tvm=x_tvm):
                return main(x_tvm)

            sync = device.sync
        with torch.no_grad():
            timing = measure_ms(run, repeat=repeat, warmup=3, sync=sync, number=number)
        rows.append(dict(shape_row, impl=impl, median_ms=timing["median_ms"]))
    return rows


def format_table(rows: list[dict]) -> str:
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    lines = ["| model | stage | C | HxW | taps | " + " | ".join(f"{i} ms" for i in impls) + " | speedup vs pytorch |",
             "|---" * (6 + len(impls)) + "|"]
    keys = list(dict.fromkeys((r["model"], r["stage"]) for r in rows))
    for key in keys:
        group = {r["impl"]: r for r in rows if (r["model"], r["stage"]) == key}
        first = next(iter(group.values()))
        cells = [f"{group[i]['median_ms']:.4f}" if i in group else "-" for i in impls]
        # The default build's op (ours-auto), else the fastest of ours that was run.
        ours = group.get("ours-auto") or min((r for i, r in group.items() if i.startswith("ours")),
                                             key=lambda r: r["median_ms"], default=None)
        ratio = f"{group['pytorch']['median_ms'] / ours['median_ms']:.1f}x" if ours and "pytorch" in group else "-"
        lines.append(f"| {first['model']} | {first['stage']} | {first['channels']} | {first['height']}x{first['width']} "
                     f"| {first['taps_h']}+{first['taps_w']} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)
