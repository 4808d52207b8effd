"""Where trials are built and timed: builders (pooled over the host's cores), runners (this
machine, one candidate at a time; boards through RPC), and the Measurement that pairs them."""

from __future__ import annotations

import functools
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.runner import (
    EvaluatorConfig,
    LocalRunner,
    PyRunner,
    PyRunnerFuture,
    RPCConfig,
    RPCRunner,
)
from tvm.s_tir.meta_schedule.runner.rpc_runner import default_run_evaluator
from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common

from .. import board
from ..errors import ParcnetError
from ..targets import ARM_CXX, NamedTarget, arm_linker, host_cores, use_threads
from .device import Device, device_for


@derived_object
class _FinishedFuture(PyRunnerFuture):
    def __init__(self, result):
        super().__init__()
        self._result = result

    def done(self) -> bool:
        return True

    def result(self):
        return self._result


@derived_object
class SerialRunner(PyRunner):
    """Waits for every measurement before MetaSchedule moves on (so nothing compiles while a
    candidate is timed on the same cores)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def run(self, runner_inputs):
        return [_FinishedFuture(future.result()) for future in self.inner.run(runner_inputs)]


def build_trial(mod, target, _params):
    """Compile one candidate. MetaSchedule's default builder first imports every GPU tensor
    intrinsic (21 s per build worker on this host, more than the builds themselves)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


@derived_object
class PooledBuilder(PyBuilder):
    """LocalBuilder's work in worker processes that live across batches (starting Python and
    TVM costs ~2 s per worker); recycled every `recycle` batches against worker memory growth."""

    def __init__(self, max_workers: int, timeout_sec: float = 120, f_export=None, recycle: int = 25):
        super().__init__()
        self.max_workers, self.timeout_sec, self.f_export, self.recycle = max_workers, timeout_sec, f_export, recycle
        self.pool, self.batches = None, 0

    def build(self, build_inputs):
        from tvm.s_tir.meta_schedule.builder import local_builder
        from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

        if self.pool is None or self.batches >= self.recycle:
            if self.pool is not None:
                self.pool.shutdown()
            self.pool, self.batches = PopenPoolExecutor(max_workers=self.max_workers, timeout=self.timeout_sec), 0
        self.batches += 1
        jobs = [(build_trial, self.f_export, b.mod, b.target, None) for b in build_inputs]
        results = []
        for done in self.pool.map_with_error_catching(lambda job: local_builder._worker_func(*job), jobs):
            if done.status == StatusKind.COMPLETE:
                results.append(BuilderResult(done.value, None))
            elif done.status == StatusKind.TIMEOUT:
                results.append(BuilderResult(None, f"build timed out after {self.timeout_sec} s"))
            else:
                results.append(BuilderResult(None, f"build failed: {done.value}"))
        return results


def export_arm_artifact(mod) -> str:
    """Builder export for ARM trials: a shared library linked by the cross compiler (the board's
    RPC server loads .so files; it has no compiler to link MetaSchedule's default .tar)."""
    path = str(Path(tempfile.mkdtemp(prefix="parcnet-trial-")) / "trial.so")
    mod.export_library(path, fcompile=arm_linker(ARM_CXX))
    return path


def _trial_session(rpc_config: RPCConfig, tracker=None, key=None, direct=None):
    """RPCRunner's session factory (a picklable partial): board.connect with its retries."""
    return board.connect(tracker, key, direct, session_timeout=rpc_config.session_timeout_sec)


def _timed_on_every_core(rt_mod, device, evaluator_config, repeated_args):
    """LocalRunner's evaluator (runs in its worker process): MetaSchedule's own, with TVM's
    thread pool on every core first (nothing sets TVM_NUM_THREADS for the worker, and TVM
    alone sizes its pool from the topology: 1 thread on a 2-vCPU VM)."""
    from tvm.s_tir.meta_schedule.runner.local_runner import default_run_evaluator as run_here

    use_threads()
    return run_here(rt_mod, device, evaluator_config, repeated_args)


def _fill_from_host(tensor) -> None:
    """Random inputs made here and copied to the board: our RPC server carries no
    tvm.contrib.random (MetaSchedule's default filler), and a trial's inputs are small."""
    import numpy as np

    shape, dtype = tuple(tensor.shape), str(tensor.dtype)
    data = np.random.uniform(-1, 1, size=shape) if "float" in dtype else np.random.randint(0, 2, size=shape)
    tensor.copyfrom(data.astype(dtype))


def _alloc_on_board(session, device, args_info, alloc_repeat):
    """RPCRunner's argument allocator (runs in its worker process)."""
    return alloc_argument_common(_fill_from_host, device, args_info, alloc_repeat)


def _timed_on_board(session, rt_mod, device, evaluator_config, repeated_args, ledger: str):
    """RPCRunner's evaluator (runs in its worker process): MetaSchedule's own, then one line in
    the ledger naming the board that measured the trial (appends of one short line are atomic,
    so the workers of a pool of boards can share the file)."""
    costs = default_run_evaluator(session, rt_mod, device, evaluator_config, repeated_args)
    with open(ledger, "a") as out:
        out.write(getattr(session, "board_address", "board") + "\n")
    return costs


def trials_by_board(ledger: Path | None) -> dict[str, int]:
    """Measured trials per board (HOST:PORT) so far, from a measurement's ledger."""
    if ledger is None or not ledger.exists():
        return {}
    return dict(sorted(Counter(line for line in ledger.read_text().splitlines() if line).items()))


@dataclass
class Measurement:
    """Where trials are built and timed."""

    kind: str  # local | rpc | emulated
    builder: object
    runner: object
    where: str
    ledger: Path | None = None  # board measurements: one line per measured trial naming its board
    device: Device | None = None  # whose timings the records are (the work dir must be this device's)

    @property
    def emulated(self) -> bool:
        return self.kind == "emulated"


def local_measurement(named: NamedTarget) -> Measurement:
    # A GPU kernel takes microseconds: 10 ms of repeats time it well, and a short GPU loan
    # then measures several times as many candidates as with the CPUs' 50 ms.
    min_repeat_ms = 10 if named.name == "cuda" else 50
    runner = LocalRunner(timeout_sec=60, evaluator_config=EvaluatorConfig(number=3, repeat=1,
                                                                          min_repeat_ms=min_repeat_ms),
                         f_run_evaluator=_timed_on_every_core)
    return Measurement("local", PooledBuilder(host_cores()), SerialRunner(runner),
                       f"this machine ({named.description})", device=device_for(named))


def rpc_measurement(named: NamedTarget, tracker: str | None = None, key: str | None = None,
                    direct: str | None = None, session_timeout: int = 60, emulated: bool = False,
                    boards: int = 1) -> Measurement:
    """Builder and runner for boards reached through an RPC tracker (`tracker` + `key`; `boards`
    of them registered under the key, each measuring one trial at a time, all at once) or one
    board directly (`direct` = HOST:PORT). ARM trials are cross-compiled to .so files."""
    board.check_board_args(tracker, key, direct)
    if not (direct or tracker):
        raise ParcnetError("an RPC measurement needs --rpc HOST:PORT or --rpc-tracker HOST:PORT --rpc-key KEY")
    host, port = board.parse_host_port(direct or tracker, "--rpc" if direct else "--rpc-tracker")
    config = RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key or "direct",
                       session_timeout_sec=session_timeout)
    create = functools.partial(_trial_session, tracker=tracker, key=key, direct=direct)
    where = f"RPC server {direct}" if direct else f"RPC tracker {tracker}, key {key}"
    evaluator = EvaluatorConfig(number=1, repeat=1, min_repeat_ms=0) if emulated else \
        EvaluatorConfig(number=3, repeat=1, min_repeat_ms=100)
    ledger = Path(tempfile.mkdtemp(prefix="parcnet-boards-")) / "trials_by_board.txt"
    # one worker per board: a board measures one trial at a time (two at once would disturb both)
    runner = RPCRunner(config, evaluator, f_create_session=create, f_alloc_argument=_alloc_on_board,
                       max_workers=1 if direct else boards,
                       f_run_evaluator=functools.partial(_timed_on_board, ledger=str(ledger)))
    export = export_arm_artifact if named.name == "arm" else None
    builder = PooledBuilder(host_cores(), f_export=export)
    return Measurement("emulated" if emulated else "rpc", builder,
                       SerialRunner(runner) if emulated else runner, where, ledger,
                       device_for(named, tracker, key, direct, emulated))
