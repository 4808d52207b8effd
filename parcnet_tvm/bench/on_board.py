"""Timing on the ARM board through RPC (the emulated board checks outputs only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ParcnetError
from .backends import BenchCase


@dataclass
class Board:
    """How bench reaches the ARM board: a session factory, and whether it is the emulated one
    (then libraries are checked, never timed)."""

    connect: object
    where: str
    emulated: bool = False


def time_on_board(board: Board, library: Path, x, repeat: int) -> tuple:
    """Upload `library`, run it once on `x` (output back here) and, on a real board, time
    `repeat` calls; returns (output, timing dict or None)."""
    import tvm

    from ..params import LibraryVM
    from ..params import load as load_weights
    from ..timing import summarize_ms

    remote = board.connect()
    remote.upload(str(library))
    device = remote.cpu()
    # the weights travel as tensors (read here, copied into the board's memory once)
    weights = [tvm.runtime.tensor(w.numpy(), device) for w in load_weights(library)]
    vm = LibraryVM(remote.load_module(library.name), device, weights)
    vm.set_input("main", tvm.runtime.tensor(x, device))
    vm.invoke_stateful("main")
    output = vm.get_outputs("main").numpy()
    if board.emulated:
        return output, None
    # one call per sample, after the call above warmed up the board's memory pools
    timer = vm.time_evaluator("invoke_stateful", device, number=1, repeat=repeat)
    return output, summarize_ms([seconds * 1e3 for seconds in timer("main").results])


def _board_reference(case: BenchCase):
    from ..verify import pytorch_output, reference_input
    from ..weights import prepare_model

    x = reference_input((case.batch, 3, *case.input_size))
    return x, pytorch_output(prepare_model(case.model, case.input_size), x)


def _bench_on_board(backend: str, library, board: Board, reference, repeat: int, pytorch_ms) -> dict:
    from ..verify import compare

    if backend == "pytorch-eager":
        if board.emulated:
            raise ParcnetError("nothing is timed on the emulated board")
        if pytorch_ms is None:
            raise ParcnetError("PyTorch does not run through RPC: time it on the board and pass --pytorch-ms")
        return {"median_ms": pytorch_ms, "p90_ms": pytorch_ms, "source": "given with --pytorch-ms"}
    x, expected = reference
    output, timing = time_on_board(board, library, x, repeat)
    check = compare(output, expected)
    if check["status"] != "passed":
        raise ParcnetError(f"output on the board differs from PyTorch: "
                           f"{check.get('reason') or 'max abs error %.2e' % check['max_abs_error']}")
    return {**(timing or {"median_ms": None, "p90_ms": None}), "max_abs_error": check["max_abs_error"]}
