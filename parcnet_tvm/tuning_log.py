"""Tuning logs: MetaSchedule's JSON database in a work dir, checked before TVM reads it.

The database is two append-only line-JSON files. Records name their workload by its line
number in the workload file, and TVM aborts on the first line it cannot parse, so before
opening a log we check every line ourselves: a corrupt or truncated line (a run killed in
the middle of a write) is reported with file and line, moved to `<file>.rejected` (nothing
is deleted) and the files are rewritten without it, renumbering the records' workload index.

Where logs live: a tuning run writes to a work dir in the user's cache, outside the checkout
(`<cache>/tuning/<model>-<target>-<size>[-b<batch>]/<device>/`, cache = $PARCNET_TVM_CACHE,
else $XDG_CACHE_HOME/parcnet-tvm, else ~/.cache/parcnet-tvm), one per device, because records
are timings of the device that measured them. The logs shipped in the checkout's
`tuning_logs/<model>-<target>-<size>/` are only ever read (a warm start, or a build's log): never
appended to or repaired in place. Each log folder names its device in `device.json`
(`parcnet_tvm.tuning.device` says when a log may be used).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from tvm.s_tir import meta_schedule as ms

from . import outputs
from .errors import ParcnetError
from .log_lock import held_by_this_process, locked
from .manifest import artifact_name
from .schedules import register_intrinsics_named_in

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
DEVICE_FILE = "device.json"  # {"device": "<id>", "description": ..., "created": ...}
REPO_LOGS = Path(__file__).resolve().parents[1] / "tuning_logs"


def log_name(model_key: str, target: str, input_size, batch: int = 1) -> str:
    """<model>-<target>-<size>[-b<batch>] (size 224 or 224x320)."""
    return artifact_name(model_key, target, input_size, batch).removeprefix("parcnetv2_")


def cache_dir() -> Path:
    """$PARCNET_TVM_CACHE, else $XDG_CACHE_HOME/parcnet-tvm, else ~/.cache/parcnet-tvm."""
    if os.environ.get("PARCNET_TVM_CACHE"):
        return Path(os.environ["PARCNET_TVM_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "parcnet-tvm"  # XDG: relative = unset


def default_work_dir(model_key: str, target: str, input_size, batch: int, device_id: str) -> Path:
    """Where a tuning run on `device_id` writes by default: in the cache, never in the checkout."""
    return cache_dir() / "tuning" / log_name(model_key, target, input_size, batch) / device_id


def shipped_log(model_key: str, target: str, input_size, batch: int = 1) -> Path:
    """The log shipped in the checkout for this model, target, size and batch (may not exist)."""
    return REPO_LOGS / log_name(model_key, target, input_size, batch)


def is_shipped(work_dir) -> bool:
    """Whether `work_dir` is (inside) the checkout's tuning_logs/: read-only."""
    return Path(work_dir).resolve().is_relative_to(REPO_LOGS.resolve())


def read_device(work_dir) -> str | None:
    """The id of the device that measured the log's records, from its device.json (None: none there)."""
    path = Path(work_dir) / DEVICE_FILE
    if not path.is_file():
        return None
    obj = _parse(path.read_text())
    if not (isinstance(obj, dict) and isinstance(obj.get("device"), str) and obj["device"]):
        raise ParcnetError(f"{path} does not name a device (expected {{\"device\": \"<id>\", ...}}): restore it, "
                           "or move the log away and tune again")
    return obj["device"]


def write_device(work_dir, device_id: str, description: str) -> None:
    path = Path(work_dir) / DEVICE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    _rewrite(path, [json.dumps({"device": device_id, "description": description,
                                "created": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1)])


def has_log(work_dir) -> bool:
    return (Path(work_dir) / RECORD_FILE).is_file() and (Path(work_dir) / WORKLOAD_FILE).is_file()


def require_log(work_dir) -> None:
    """A log named to be applied must be there (checked before any import or compile)."""
    if not has_log(work_dir):
        raise ParcnetError(f"no tuning log in {work_dir} (expected {WORKLOAD_FILE} and {RECORD_FILE}): "
                           "give a folder scripts/tune.py wrote, or tune first")


def _read_lines(path: Path) -> tuple[list[str], bool]:
    """The file's lines and whether it ends with a newline (a killed write may leave none)."""
    if not path.is_file():
        return [], True
    text = path.read_bytes().decode("utf-8", errors="replace")
    return text.splitlines(), text.endswith("\n") or not text


def _parse(line: str):
    try:
        return json.loads(line)
    except ValueError:
        return None


def check_and_repair(work_dir, log=print) -> list[str]:
    """Check both files line by line; report, set aside and drop bad lines. Returns the problems."""
    work_dir = Path(work_dir)
    wl_path, rec_path = work_dir / WORKLOAD_FILE, work_dir / RECORD_FILE
    wl_lines, wl_newline = _read_lines(wl_path)
    rec_lines, rec_newline = _read_lines(rec_path)
    problems, rejected_wl, rejected_rec = [], [], []

    new_index, kept_wl = {}, []
    for number, line in enumerate(wl_lines, 1):
        obj = _parse(line)
        if not (isinstance(obj, list) and len(obj) == 2 and all(isinstance(x, str) for x in obj)):
            problems.append(f"{wl_path}:{number}: not a workload (corrupt or truncated line); skipped")
            rejected_wl.append(line)
            continue
        new_index[number - 1] = len(kept_wl)
        kept_wl.append(line)

    kept_rec = []
    for number, line in enumerate(rec_lines, 1):
        obj = _parse(line)
        if not (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], int)
                and isinstance(obj[1], list) and len(obj[1]) >= 2):
            problems.append(f"{rec_path}:{number}: not a tuning record (corrupt or truncated line); skipped")
            rejected_rec.append(line)
            continue
        if obj[0] not in new_index:
            problems.append(f"{rec_path}:{number}: refers to workload line {obj[0] + 1}, which is "
                            "missing or corrupt; skipped")
            rejected_rec.append(line)
            continue
        if new_index[obj[0]] != obj[0]:
            line = json.dumps([new_index[obj[0]], obj[1]], separators=(",", ":"))
        kept_rec.append(line)

    for path, lines, kept in ((wl_path, wl_lines, kept_wl), (rec_path, rec_lines, kept_rec)):
        if lines and not kept:  # not a damaged log but another kind of file: leave it as it is
            raise ParcnetError(f"{path} is not a MetaSchedule log: none of its {len(lines)} lines is a record "
                               "(MetaSchedule reads one JSON record per line; a pretty-printed or foreign "
                               f"file cannot be read): restore the files tune.py wrote, or move {work_dir} away "
                               "and tune again")
    if problems or not wl_newline or not rec_newline:
        for path, kept, rejected in ((wl_path, kept_wl, rejected_wl), (rec_path, kept_rec, rejected_rec)):
            if rejected:
                with open(f"{path}.rejected", "a") as out:
                    out.write("".join(line + "\n" for line in rejected))
            if path.is_file():
                _rewrite(path, kept)
        for problem in problems:
            log(f"warning: {problem}")
        if problems:
            log(f"warning: {len(problems)} bad line(s) set aside in {work_dir}/*.rejected")
    return problems


def _rewrite(path: Path, lines: list[str]) -> None:
    outputs.write_text(path, "".join(line + "\n" for line in lines))  # a kill leaves the old file or the new


def open_database(work_dir, create: bool = False, log=print) -> ms.database.JSONDatabase:
    """The checked JSON database in `work_dir`; `create` makes an empty one if none exists
    (a tuning run, inside `writing(work_dir)`)."""
    work_dir = Path(work_dir)
    if not has_log(work_dir):
        if not create:
            raise ParcnetError(f"no tuning log in {work_dir} (expected {WORKLOAD_FILE} and {RECORD_FILE}): "
                               "tune first (scripts/tune.py) or pass the folder tune.py wrote")
        work_dir.mkdir(parents=True, exist_ok=True)
    if create or held_by_this_process(work_dir):
        return _load(work_dir, create, log)
    if not _writable(work_dir) or is_shipped(work_dir):
        return _load(_scratch_copy(work_dir), False, log)  # a log we only read (or ship) is never repaired in place
    with locked(work_dir, "read", wait=0) as held:
        if held:
            return _load(work_dir, False, log)
    return _load(_scratch_copy(work_dir), False, log)  # a run is writing it: a snapshot


def _load(work_dir: Path, create: bool, log) -> ms.database.JSONDatabase:
    check_and_repair(work_dir, log)
    if (work_dir / RECORD_FILE).exists():  # loading replays every trace: its intrinsics first
        register_intrinsics_named_in((work_dir / RECORD_FILE).read_text(errors="replace"))
    for attempt in range(2):
        try:
            return ms.database.JSONDatabase(str(work_dir / WORKLOAD_FILE), str(work_dir / RECORD_FILE),
                                            allow_missing=create)
        except Exception as err:  # valid JSON that MetaSchedule cannot load
            if attempt or not _set_aside_unloadable(work_dir, log):
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ParcnetError(f"tuning log {work_dir} cannot be read by MetaSchedule ({first}); "
                                   f"move it away and tune again") from None


def _writable(work_dir: Path) -> bool:
    return all(os.access(p, os.W_OK) for p in (work_dir, work_dir / WORKLOAD_FILE, work_dir / RECORD_FILE))


def _scratch_copy(work_dir: Path) -> Path:
    """A private copy of a log we only read, removed when the process ends. Records are copied
    before workloads: a record is appended after its workload, so each copied record finds it."""
    scratch = Path(tempfile.mkdtemp(prefix="parcnet-log-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    for name in (RECORD_FILE, WORKLOAD_FILE):
        data = (work_dir / name).read_bytes()
        (scratch / name).write_bytes(data[:data.rfind(b"\n") + 1])  # a line still being written: not yet
    return scratch


def _set_aside_unloadable(work_dir: Path, log) -> int:
    """Find the record lines MetaSchedule cannot load (parse them one by one, slow but only
    after a failed load), report and set them aside; returns how many there were."""
    wl_lines = _read_lines(work_dir / WORKLOAD_FILE)[0]
    rec_path = work_dir / RECORD_FILE
    rec_lines = _read_lines(rec_path)[0]
    try:
        workloads = [ms.database.Workload.from_json(json.loads(line)) for line in wl_lines]
    except Exception:
        return 0
    kept, rejected = [], []
    for number, line in enumerate(rec_lines, 1):
        obj = json.loads(line)
        try:
            ms.database.TuningRecord.from_json(obj[1], workloads[obj[0]])
            kept.append(line)
        except Exception:
            log(f"warning: {rec_path}:{number}: MetaSchedule cannot load this record (its trace does not "
                "apply to its workload); skipped")
            rejected.append(line)
    if rejected:
        with open(f"{rec_path}.rejected", "a") as out:
            out.write("".join(line + "\n" for line in rejected))
        _rewrite(rec_path, kept)
        log(f"warning: {len(rejected)} record(s) set aside in {rec_path}.rejected")
    return len(rejected)


FAILED_RUN_SECONDS = 1e9  # MetaSchedule records a candidate that failed to build or run as 1e10 s


def measured(record) -> bool:
    """Whether a record holds a real measurement (not a failed build or run)."""
    secs = [float(getattr(s, "value", s)) for s in (record.run_secs or [])]
    return bool(secs) and max(secs) < FAILED_RUN_SECONDS


def record_counts(database, tasks) -> list[int]:
    """Trials measured for each task. Failed trials are kept in the log but do not count: a task
    whose candidates all failed (a board that went away) is tuned again by the rerun."""
    by_workload: dict[int, int] = {}  # records hold the database's own Workload objects
    for record in database.get_all_tuning_records():
        if not measured(record):
            continue
        key = record.workload.__chandle__()
        by_workload[key] = by_workload.get(key, 0) + 1
    counts = []
    for task in tasks:
        mod = task.dispatched[0]
        if not database.has_workload(mod):
            counts.append(0)
            continue
        workload = database.commit_workload(mod)  # already there: no new line is written
        counts.append(by_workload.get(workload.__chandle__(), 0))
    return counts


def copy_records(source, target_db, mod) -> int:
    """Copy the valid records of `mod`'s workload from `source` into `target_db`.

    A record's trace names the blocks of its own workload's PrimFunc, and structurally equal
    PrimFuncs of another model (S vs T) name them differently; so the workload committed
    here is the source's module, and nothing is copied onto a workload `target_db` already
    holds in its own naming."""
    if not source.has_workload(mod) or target_db.has_workload(mod):
        return 0
    records = source.get_top_k(source.commit_workload(mod), 1 << 20)
    if not records:
        return 0
    workload = target_db.commit_workload(records[0].workload.mod)
    for record in records:
        target_db.commit_tuning_record(ms.database.TuningRecord(
            record.trace, workload, record.run_secs, record.target, record.args_info))
    return len(records)


def database_summary(work_dir) -> dict:
    work_dir = Path(work_dir)
    return {"path": str(work_dir.resolve()),
            "workloads": len(_read_lines(work_dir / WORKLOAD_FILE)[0]),
            "records": len(_read_lines(work_dir / RECORD_FILE)[0]),
            "device": read_device(work_dir)}


def log_target(work_dir) -> dict | None:
    """The target the log's first readable record was tuned for (a plain dict), or None."""
    for line in _read_lines(Path(work_dir) / RECORD_FILE)[0]:
        obj = _parse(line)
        if isinstance(obj, list) and len(obj) == 2 and isinstance(obj[1], list) and len(obj[1]) > 2 \
                and isinstance(obj[1][2], dict):
            return obj[1][2]
    return None


def check_log_target(work_dir, named_target, log=print) -> None:
    """A log tuned for another kind of device would put its schedules on the wrong code
    (x86 vector code in an ARM library, CPU loops in CUDA kernels): refuse it. Another CPU
    of the same kind only loses speed: warn."""
    recorded = log_target(work_dir)
    if recorded is None:
        return
    wanted = named_target.as_dict()
    def what(t):
        return " ".join(f"{k}={t[k]}" for k in ("kind", "mtriple", "mcpu", "arch") if t.get(k))
    if (recorded.get("kind"), recorded.get("mtriple")) != (wanted.get("kind"), wanted.get("mtriple")):
        raise ParcnetError(f"tuning log {work_dir} was tuned for {what(recorded)}, not for this target "
                           f"({what(wanted)}): use a log tuned for --target {named_target.name}")
    if (recorded.get("mcpu"), recorded.get("arch")) != (wanted.get("mcpu"), wanted.get("arch")):
        log(f"warning: tuning log {work_dir} was tuned for {what(recorded)}; this build targets "
            f"{what(wanted)}: expect less speed than tuning here")


def apply_database(mod, named_target, work_dirs, log=print):
    """Replace every PrimFunc that has a record in the log(s) by its best schedule."""
    from tvm import relax

    dirs = [work_dirs] if isinstance(work_dirs, (str, Path)) else list(work_dirs)
    for work_dir in dirs:
        check_log_target(work_dir, named_target, log)
    databases = [open_database(d, log=log) for d in dirs]
    database = databases[0] if len(databases) == 1 else ms.database.UnionDatabase(*databases)
    with named_target.target, database:
        return relax.transform.MetaScheduleApplyDatabase()(mod)
