"""The RK3288 latency estimate: counted work turned into board milliseconds by a cost model
fitted to published RK3288 times. An estimate, never a measurement: a time measured on a board
(over RPC) always wins where there is one.

Counts (`counting.py`) give, per guest thread of one run: NEON instructions on q and on d
registers, SIMD&FP loads/stores, integer instructions, L1 misses that hit the L2, L2 misses,
and the futex calls that wake and put to sleep a thread pool. The model is linear in them, with
few coefficients, in cycles of the A17 at 1.8 GHz:

    cycles = c_q NEON_q + c_d (NEON_d + VFP) + c_m SIMD_mem + c_i integer + c_l1 L1_miss + c_l2 L2_miss
    1 thread:  ms = cycles(main thread) / 1.8e6
    4 threads: ms = [cycles(busiest thread) + c_sync sqrt(futex_calls(all)) + c_bw L2_miss(all)] / 1.8e6

The busiest thread is the one with the most cycles under the current coefficients (the fit
alternates: pick, solve, pick again). The 4-thread terms stand for synchronising the pool and
for four cores sharing one memory bus. Under qemu the pools are made to sleep rather than spin
(so that waiting is not counted), and every parallel region and every contended lock then
costs a futex call; on the board the engines spin and pay far less per region. The sync term
grows with the square root of those calls: linear in them, one model (ncnn's regnety_400m,
28,534 calls) alone set its coefficient and its leave-one-out error was 42%; with the square
root the worst row was 25% (a constant per run instead: 31%; no sync term: 28%; 44 rows).

Coefficients are fitted by non-negative least squares on relative error to ncnn's published
fp32 RK3288 table (`docs/arm-estimate.json` keeps the counts of
every row beside the published times, so the fit reruns without qemu). The stated uncertainty
(±Z%) is the root mean square of the leave-one-out errors over those rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ParcnetError

CLOCK_HZ = 1.8e9  # RK3288: 4x Cortex-A17 at 1.8 GHz
MS_PER_MILLION_CYCLES = 1e6 / CLOCK_HZ * 1e3  # terms are in millions of events, coefficients in cycles
REPORT = Path(__file__).resolve().parents[1] / "docs" / "arm-estimate.json"
CALIBRATION_ENGINE = "ncnn"
THREAD_TERMS = ("neon_q", "neon_d_vfp", "simd_mem", "integer", "l1_miss", "l2_miss")
POOL_TERMS = ("sync", "shared_l2_miss")
TERMS = THREAD_TERMS + POOL_TERMS
CAVEAT = "calibrated on ncnn's published RK3288 table; not a measurement"


def thread_terms(t: dict) -> np.ndarray:
    """One thread's counts grouped into the model's terms, in millions."""
    return np.array([
        t["neon_q_mac"] + t["neon_q"],
        t["neon_d_mac"] + t["neon_d"] + t["vfp"],
        t["simd_load"] + t["simd_store"],
        t["int_alu"] + t["int_load"] + t["int_store"] + t["branch"] + t["other"],
        t["l1_misses"] - t["l2_misses"],
        t["l2_misses"],
    ], dtype=float) / 1e6


def row_terms(threads: list[dict], n_threads: int, coef: np.ndarray | None = None) -> np.ndarray:
    """The model's terms for one counted run: the busiest thread's, plus the pool's at > 1 thread."""
    busy = [t for t in threads if t["insns"] > 0]
    if not busy:
        raise ParcnetError("the counted run executed nothing between its markers")
    per_thread = np.stack([thread_terms(t) for t in busy])
    weights = coef[:len(THREAD_TERMS)] if coef is not None else np.ones(len(THREAD_TERMS))
    busiest = per_thread[int(np.argmax(per_thread @ weights))]
    pool = np.zeros(len(POOL_TERMS))
    if n_threads > 1:
        futex, l2 = sum(t["futex_calls"] for t in busy), sum(t["l2_misses"] for t in busy)
        pool = np.array([np.sqrt(futex), l2], dtype=float) / 1e6
    return np.concatenate([busiest, pool])


@dataclass
class CostModel:
    coef: np.ndarray  # cycles per event, in TERMS order

    def estimate_ms(self, threads: list[dict], n_threads: int) -> float:
        return float(row_terms(threads, n_threads, self.coef) @ self.coef) * MS_PER_MILLION_CYCLES

    def thread_ms(self, counts: dict) -> float:
        """One thread's (or one kernel's) counts priced without the pool's terms."""
        return float(thread_terms(counts) @ self.coef[:len(THREAD_TERMS)]) * MS_PER_MILLION_CYCLES

    def as_dict(self) -> dict:
        return {name: round(float(c), 4) for name, c in zip(TERMS, self.coef)}


def fit(rows: list[dict], rounds: int = 4) -> CostModel:
    """Non-negative least squares on relative error over rows with published times."""
    from scipy.optimize import nnls

    if len(rows) < len(TERMS):
        raise ParcnetError(f"the fit needs at least {len(TERMS)} calibration rows, got {len(rows)}")
    coef = None
    for _ in range(rounds):
        a = np.stack([row_terms(r["counts"], r["threads"], coef) * MS_PER_MILLION_CYCLES / r["published_ms"]
                      for r in rows])
        coef, _ = nnls(a, np.ones(len(rows)))
    return CostModel(coef)


def calibration_rows(rows: list[dict]) -> list[dict]:
    """ncnn's rows with a published board time: the fit's data (every other row is only estimated)."""
    return [r for r in rows if r["engine"] == CALIBRATION_ENGINE and r.get("published_ms")]


def row_key(row: dict) -> tuple:
    return row["engine"], row["model"], row["threads"]


def refit(rows: list[dict]) -> tuple[CostModel, list[dict]]:
    """Fit on the calibration rows; every row gets estimate_ms, and loo_estimate_ms (the estimate
    with that row left out of the fit; for rows never in the fit, the same as estimate_ms)."""
    calib = calibration_rows(rows)
    in_fit = {row_key(c) for c in calib}
    model = fit(calib)
    out = []
    for row in rows:
        row = dict(row)
        row["estimate_ms"] = round(model.estimate_ms(row["counts"], row["threads"]), 2)
        row["loo_estimate_ms"] = row["estimate_ms"]
        if row_key(row) in in_fit:
            others = [c for c in calib if row_key(c) != row_key(row)]
            row["loo_estimate_ms"] = round(fit(others).estimate_ms(row["counts"], row["threads"]), 2)
        out.append(row)
    return model, out


def summary(model: CostModel, rows: list[dict]) -> dict:
    """The fit's coefficients and its leave-one-out errors over the calibration rows."""
    errors = np.abs(loo_errors(rows))
    return {"coefficients_cycles": model.as_dict(), "calibration_rows": int(len(errors)),
            "loo_abs_error_pct": {"median": round(100 * float(np.median(errors)), 1),
                                  "max": round(100 * float(np.max(errors)), 1),
                                  "rms": round(100 * float(np.sqrt(np.mean(errors ** 2))), 1)}}


def write_report(rows: list[dict], path=None) -> dict:
    """Refit, then write every row (counts included) with its estimates to the report. While
    there are too few calibration rows to fit, the rows are kept without estimates."""
    path = Path(path or REPORT)
    report = {"description": __doc__.strip().split("\n\n")[0].replace("\n", " "), "clock_hz": CLOCK_HZ,
              "terms": list(TERMS)}
    if len(calibration_rows(rows)) > len(TERMS):  # each leave-one-out fit needs len(TERMS) rows
        model, rows = refit(rows)
        report.update(summary(model, rows))
    else:
        report["fit"] = f"not yet: {len(calibration_rows(rows))} calibration rows, {len(TERMS) + 1} needed"
    report["rows"] = rows
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(path)
    return report


def merge_rows(rows: list[dict], new: list[dict]) -> list[dict]:
    """`rows` with `new` added, a row of the same engine, model and threads replaced."""
    keys = {row_key(r) for r in new}
    return [r for r in rows if row_key(r) not in keys] + new


def loo_errors(rows: list[dict]) -> np.ndarray:
    """Relative leave-one-out errors of the calibration rows (estimate / published - 1)."""
    calib = calibration_rows(rows)
    return np.array([r["loo_estimate_ms"] / r["published_ms"] - 1 for r in calib])


def read_report(path=None) -> dict:
    path = Path(path or REPORT)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ParcnetError(f"cannot read the RK3288 calibration {path} ({err}): restore it from git") from None


@dataclass
class Calibrated:
    """The fitted model and its uncertainty, from the stored counts."""

    model: CostModel
    uncertainty: float  # RMS of the leave-one-out relative errors

    @classmethod
    def load(cls, path=None) -> Calibrated:
        rows = read_report(path)["rows"]
        return cls(fit(calibration_rows(rows)), float(np.sqrt(np.mean(loo_errors(rows) ** 2))))

    def line(self, ms_4t: float, ms_1t: float) -> str:
        return (f"RK3288 estimate: {ms_4t:.0f} ms at 4 threads, {ms_1t:.0f} ms at 1 thread "
                f"(±{100 * self.uncertainty:.0f}%; {CAVEAT})")


def footprint(library, runtime: Path | None = None) -> dict:
    """The memory a board needs to run `library`, MiB: its code (the .so, mapped whole), its
    weights (read once), the activations its memory plan allocates, and the runtime's
    libraries (mapped whole: an upper bound). From the manifest and the files: an estimate of
    what the process holds, not a measurement of it."""
    from . import manifest as manifest_io
    from .runtime import LIBRARIES, runtime_dir

    memory = manifest_io.read(library).get("memory")
    if not memory:
        raise ParcnetError(f"{library}'s manifest has no memory entry: rebuild it with scripts/build.py")
    runtime = runtime or runtime_dir()
    parts = {"library": memory["library_bytes"], "weights": memory["weights_bytes"],
             "activations": memory["planned_activation_bytes"],
             "runtime": sum((runtime / name).stat().st_size for name in LIBRARIES)}
    mib = {name: round(size / 2**20, 1) for name, size in parts.items()}
    return {**mib, "total": round(sum(parts.values()) / 2**20, 1)}


def estimate_library(library, input_shape, calibrated: Calibrated | None = None) -> dict:
    """{"ms_4t", "ms_1t", "footprint_mib", "line"}: the RK3288 estimate of one ARM library,
    counted under qemu, and the memory it needs there."""
    from .counting import count_library

    calibrated = calibrated or Calibrated.load()
    ms = {n: calibrated.model.estimate_ms(count_library(library, input_shape, n).threads, n) for n in (4, 1)}
    needs = footprint(library)
    return {"ms_4t": round(ms[4], 2), "ms_1t": round(ms[1], 2), "footprint_mib": needs,
            "line": calibrated.line(ms[4], ms[1]) + f"; needs about {needs['total']:.0f} MiB "
                    f"(weights {needs['weights']:.0f}, activations {needs['activations']:.0f}, "
                    f"code and runtime {needs['library'] + needs['runtime']:.0f})"}


def _published(values: list[str]) -> dict[int, float]:
    published = {}
    for value in values:
        threads, _, ms = value.partition("=")
        try:
            published[int(threads)] = float(ms)
        except ValueError:
            raise ParcnetError(f"--published {value!r}: expected THREADS=MS, e.g. 4=404.01") from None
    return published


def run_estimate_job(args, log=print) -> dict:
    """Count a library or program at each thread count (when given), then refit and rewrite the
    report: read, merged and written under a lock, so runs side by side keep each other's rows."""
    import fcntl

    from . import manifest as manifest_io
    from .counting import count_library, count_program

    path = Path(args.report)
    new = []
    if args.library or args.program:
        if not (args.engine and args.model):
            raise ParcnetError("--library and --program need --engine and --model: name the rows they add")
        published = _published(args.published)
        shape = manifest_io.read(args.library)["input_shape"] if args.library else None
        for n in args.threads:
            log(f"[estimate] counting {args.engine} {args.model} at {n} thread(s) under qemu")
            counts = count_library(args.library, shape, n) if args.library else \
                count_program([a.replace("{threads}", str(n)) for a in args.program], n)
            row = {"engine": args.engine, "model": args.model, "threads": n, "published_ms": published.get(n),
                   "counts": counts.busy_threads()}
            if args.library:
                row["footprint_mib"] = footprint(args.library)
            if args.note:
                row["note"] = args.note
            new.append(row)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = read_report(path)["rows"] if path.is_file() else []
        return write_report(merge_rows(rows, new), path)


def report_rows(report: dict) -> str:
    from .tables import markdown_table

    if "fit" in report:
        return f"{len(report['rows'])} rows counted; fit {report['fit']}"
    cells = []
    for r in report["rows"]:
        error = f"{100 * (r['loo_estimate_ms'] / r['published_ms'] - 1):+.0f}%" if r.get("published_ms") else ""
        cells.append([r["engine"], r["model"], r["threads"], r.get("published_ms") or "", f"{r['estimate_ms']:.1f}",
                      f"{r['loo_estimate_ms']:.1f}", error])
    loo = report["loo_abs_error_pct"]
    return "\n".join([*markdown_table(["engine", "model", "threads", "published ms", "estimate ms",
                                       "leave-one-out ms", "leave-one-out error"], cells),
                      f"leave-one-out |error| over {report['calibration_rows']} calibration rows: median "
                      f"{loo['median']}%, max {loo['max']}%, rms {loo['rms']}% (estimates, not measurements)"])
