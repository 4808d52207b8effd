"""Tuning stage: MetaSchedule with the XGBoost cost model over our hand-schedule design spaces.

Our oversized op's PrimFuncs carry the block annotation `schedule_rule = "oversized_conv"`,
so MetaSchedule's ApplyCustomRule hands them to the rules in `schedules/` (registered on
import), whose sampled tile sizes are the knobs it searches.
"""

from __future__ import annotations

from pathlib import Path

import tvm
from tvm import relax
from tvm.s_tir import meta_schedule as ms

import schedules  # noqa: F401  (registers the MetaSchedule rules)

from .errors import ParcnetError
from .rewrite import PRIMFUNC_PREFIX
from .targets import NamedTarget

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"


def open_database(work_dir, create: bool = False) -> ms.database.JSONDatabase:
    """MetaSchedule's JSON database in `work_dir` (append-only line JSON)."""
    work_dir = Path(work_dir)
    if not create and not (work_dir / RECORD_FILE).is_file():
        raise ParcnetError(f"no tuning database in {work_dir} (expected {RECORD_FILE}): tune first")
    work_dir.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(str(work_dir / WORKLOAD_FILE), str(work_dir / RECORD_FILE),
                                    allow_missing=create)


def oversized_prim_funcs(mod: tvm.IRModule) -> tvm.IRModule:
    """The module's oversized-op PrimFuncs alone (one tuning task each)."""
    return tvm.IRModule({gv: func for gv, func in mod.functions_items()
                         if gv.name_hint.startswith(PRIMFUNC_PREFIX)})


def tune_oversized_ops(mod: tvm.IRModule, named_target: NamedTarget, work_dir, trials: int,
                       trials_per_iter: int = 8) -> ms.database.JSONDatabase:
    """Tune only our op's PrimFuncs of a rewritten module into `work_dir`."""
    funcs = oversized_prim_funcs(mod)
    if not len(funcs.functions_items()):
        raise ParcnetError("the module has no oversized-op PrimFuncs: rewrite it first")
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    return ms.tune_tir(funcs, named_target.target, str(work_dir), max_trials_global=trials,
                       num_trials_per_iter=trials_per_iter, cost_model="xgb", strategy="evolutionary",
                       task_scheduler="gradient", database=open_database(work_dir, create=True))


def apply_database(mod: tvm.IRModule, named_target: NamedTarget, work_dir) -> tvm.IRModule:
    """Replace every PrimFunc that has a tuning record in `work_dir` by its best schedule."""
    database = open_database(work_dir)
    with named_target.target, database:
        return relax.transform.MetaScheduleApplyDatabase()(mod)
