"""tuning_log.py: MetaSchedule's JSON databases; damaged lines reported and set aside; where logs live and
which device's logs a build applies (tuning/device.py)."""

import json
import shutil

import pytest
from support import record_lines

from parcnet_tvm import ParcnetError
from parcnet_tvm.targets import get_target
from parcnet_tvm.tuning.device import check_build_log, cpu_device, device_for
from parcnet_tvm.tuning_log import (
    DEVICE_FILE,
    RECORD_FILE,
    WORKLOAD_FILE,
    cache_dir,
    default_work_dir,
    open_database,
    read_device,
)


def test_corrupt_and_truncated_lines_are_reported_and_set_aside(tiny_run, tmp_path):
    work = tmp_path / "log"
    shutil.copytree(tiny_run[0] / "log", work)
    records = record_lines(work)
    workloads = (work / WORKLOAD_FILE).read_text().splitlines()
    # a garbage line in the middle, a half-written record at the end (no newline), and the
    # first workload corrupt: its records go too, and the others are renumbered
    (work / WORKLOAD_FILE).write_text("".join(w + "\n" for w in ["{not json"] + workloads[1:]))
    damaged = records[:3] + ["garbage ]]"] + records[3:] + [records[0][: len(records[0]) // 2]]
    (work / RECORD_FILE).write_text("\n".join(damaged))
    messages = []
    database = open_database(work, log=messages.append)
    text = "\n".join(messages)
    assert f"{work / WORKLOAD_FILE}:1:" in text
    assert f"{work / RECORD_FILE}:4: not a tuning record" in text
    assert f"{work / RECORD_FILE}:{len(damaged)}: not a tuning record" in text
    on_first = sum(1 for r in records if json.loads(r)[0] == 0)
    assert len(database.get_all_tuning_records()) == len(records) - on_first
    rejected = (work / (RECORD_FILE + ".rejected")).read_text().splitlines()
    assert "garbage ]]" in rejected and len(rejected) == 2 + on_first
    assert (work / (WORKLOAD_FILE + ".rejected")).read_text() == "{not json\n"
    # valid JSON that MetaSchedule cannot load (a trace naming a block the workload lacks)
    lines = record_lines(work)
    (work / RECORD_FILE).write_text("".join(line + "\n" for line in lines[:-1])
                                    + lines[-1].replace('"main"]', '"no_such_func"]') + "\n")
    messages.clear()
    database = open_database(work, log=messages.append)
    assert f"{work / RECORD_FILE}:{len(lines)}: MetaSchedule cannot load this record" in "\n".join(messages)
    assert len(database.get_all_tuning_records()) == len(lines) - 1
    text = "\n".join(messages)
    # the repaired files stay valid for appends: a second open reports nothing
    assert open_database(work, log=messages.append) and len(messages) == len(text.splitlines())


def test_a_file_that_is_not_one_record_per_line_is_refused_and_left_as_it_is(tiny_run, tmp_path):
    """A pretty-printed array of records (valid JSON, wrong layout) is not a damaged log: no
    line-by-line repair, which would set every line aside and empty the file."""
    work = tmp_path / "log"
    shutil.copytree(tiny_run[0] / "log", work)
    records = [json.loads(line) for line in record_lines(work)]
    (work / RECORD_FILE).write_text(json.dumps(records, indent=2))
    before = (work / RECORD_FILE).read_bytes()
    with pytest.raises(ParcnetError, match="is not a MetaSchedule log: none of its .* lines is a record"):
        open_database(work)
    assert (work / RECORD_FILE).read_bytes() == before and not list(work.glob("*.rejected"))


def test_a_log_that_cannot_be_written_is_read_without_repairing_it(tiny_run, tmp_path, monkeypatch):
    from parcnet_tvm import tuning_log

    work = tmp_path / "log"
    shutil.copytree(tiny_run[0] / "log", work)
    lines = record_lines(work)
    (work / RECORD_FILE).write_text("".join(line + "\n" for line in lines) + "garbage ]]\n")
    before = (work / RECORD_FILE).read_bytes()
    monkeypatch.setattr(tuning_log, "_writable", lambda _dir: False)  # as for another user's log (we run as root)
    database = open_database(work, log=lambda *_: None)
    assert len(database.get_all_tuning_records()) == len(lines)
    assert (work / RECORD_FILE).read_bytes() == before and not list(work.glob("*.rejected"))


AMD = "vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
INTEL = "vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 106\nmodel name\t: Intel Xeon\n"
OTHER_CPU = "intel-f6-m106-icelake-server"


def _measured_on(log_dir, device_id):
    (log_dir / DEVICE_FILE).write_text(json.dumps({"device": device_id}))


def test_the_default_work_dir_is_in_the_cache_one_per_device(tmp_path, monkeypatch):
    from support import ROOT

    from parcnet_tvm.tune_job import logs_of_run

    amd, intel = cpu_device("znver4", AMD), cpu_device("icelake-server", INTEL)
    assert (amd.id, intel.id) == ("amd-f25-m17-znver4", OTHER_CPU)
    monkeypatch.setenv("PARCNET_TVM_CACHE", str(tmp_path / "cache"))
    work, _ = logs_of_run("xt", "x86", (224, 224), 1, amd)
    assert work == tmp_path / "cache" / "tuning" / "xt-x86-224" / amd.id
    assert logs_of_run("xt", "x86", (224, 224), 1, intel)[0] != work and not work.is_relative_to(ROOT)
    assert default_work_dir("t", "cuda", (224, 224), 32, "cuda-sm_90").parts[-2:] == ("t-cuda-224-b32", "cuda-sm_90")
    monkeypatch.delenv("PARCNET_TVM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "parcnet-tvm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "parcnet-tvm"
    # the shipped log names the device it was tuned on, which is this one's kind of CPU
    assert read_device(ROOT / "tuning_logs" / "xt-x86-224") == "amd-f25-m17-znver4"


def test_a_build_applies_only_logs_of_its_own_device_unless_told(tiny_run, tmp_path):
    from support import SMALL, run_script

    from parcnet_tvm.build import BuildRequest, build_library

    x86 = get_target("x86")
    check_build_log(tiny_run[0] / "log", x86, log=pytest.fail)  # its own device's log: not a word
    other = tmp_path / "other"
    shutil.copytree(tiny_run[0] / "log", other)
    _measured_on(other, OTHER_CPU)
    out = tmp_path / "xt.so"
    with pytest.raises(ParcnetError, match=f"measured on {OTHER_CPU}, not on .* pass --any-device"):
        build_library(BuildRequest(model="xt", input_size=SMALL, tuning_log=[other], output=str(out)),
                      log=lambda *_: None)
    messages = []
    check_build_log(other, x86, any_device=True, log=messages.append)  # the opt-in: applied, with a warning
    assert len(messages) == 1 and "applied as asked" in messages[0]
    (other / DEVICE_FILE).unlink()  # an older log: whose records they are is not known
    with pytest.raises(ParcnetError, match="does not say which device measured it"):
        check_build_log(other, x86)
    # ARM: the board is not known to a build: a real board's log, never an emulated one's
    _measured_on(other, "rpc-rk3288")
    check_build_log(other, get_target("arm"), log=pytest.fail)
    _measured_on(other, "qemu-emulated-cortex-a17")
    with pytest.raises(ParcnetError, match="not on a real board"):
        check_build_log(other, get_target("arm"))
    _measured_on(other, OTHER_CPU)
    done = run_script("build.py", "--model", "xt", "--input-size", SMALL, "--tuning-log", other, "-o", out)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1 and "--any-device" in done.stderr
    assert not out.exists() and "[1/4]" not in done.stdout


def test_bench_tvm_tuned_never_uses_a_log_of_another_device(tiny_run, tmp_path, monkeypatch):
    from support import SMALL

    from parcnet_tvm import tuning_log
    from parcnet_tvm.bench import BenchCase, bench_case
    from parcnet_tvm.bench.cache import default_tuning_logs

    monkeypatch.setattr(tuning_log, "REPO_LOGS", tmp_path / "tuning_logs")
    monkeypatch.setenv("PARCNET_TVM_CACHE", str(tmp_path / "cache"))
    case, device = BenchCase("xt", 1, (SMALL, SMALL)), device_for(get_target("x86"))
    shipped = tmp_path / "tuning_logs" / f"xt-x86-{SMALL}"
    shutil.copytree(tiny_run[0] / "log", shipped)
    assert default_tuning_logs(case, device) == [shipped]
    _measured_on(shipped, OTHER_CPU)
    assert default_tuning_logs(case, device) == []
    row, = bench_case(case, ["tvm-tuned"], 2, 1, 1, log=lambda *_: None)
    assert "no tuning log of this device" in row["skipped"] and row["median_ms"] is None
    row, = bench_case(case, ["tvm-tuned"], 2, 1, 1, tuning_logs=[shipped], log=lambda *_: None)
    assert f"measured on {OTHER_CPU}" in row["skipped"] and row["median_ms"] is None
    # tune.py's work dir of this device comes first
    work = default_work_dir("xt", "x86", (SMALL, SMALL), 1, device.id)
    shutil.copytree(tiny_run[0] / "log", work)
    assert default_tuning_logs(case, device) == [work]


HOLD_LOG = """
import sys, time
from parcnet_tvm.log_lock import writing
with writing(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def log_being_written(tiny_run, tmp_path):
    """A copy of a tuning log that another process holds as a running tune does (its writer
    lock), with half a record at the end, as a write in flight leaves it."""
    import subprocess
    import sys

    work = tmp_path / "log"
    shutil.copytree(tiny_run[0] / "log", work)
    with open(work / RECORD_FILE, "a") as records:
        records.write(record_lines(work)[-1][:40])
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOG, str(work)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    yield work, holder
    holder.kill()
    holder.wait()


def test_a_second_run_on_a_work_dir_refuses_at_once_naming_the_first(log_being_written):
    import time

    from parcnet_tvm.log_lock import writing

    work, holder = log_being_written
    started = time.monotonic()
    with pytest.raises(ParcnetError, match=rf"{work} is being written by another run \(tune pid {holder.pid} since"):
        with writing(work):
            pass
    assert time.monotonic() - started < 5  # refused at once, not after the wait for readers


def test_a_reader_never_repairs_a_log_being_written_but_reads_a_snapshot(log_being_written):
    work, _ = log_being_written
    before = {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()}
    messages = []
    database = open_database(work, log=messages.append)
    whole = len(record_lines(work)) - 1  # all but the line still being written
    assert len(database.get_all_tuning_records()) == whole
    assert {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()} == before  # nothing rewritten or set aside
    assert messages == []  # a write in flight is not damage


def test_a_log_with_our_arm_micro_kernel_loads_in_a_fresh_process(tmp_path):
    """MetaSchedule replays every record's trace when it loads a log; an ARM GEMM's trace
    tensorizes into our micro-kernel's intrinsic, which a new process has not registered yet
    (it used to set such records aside as unloadable)."""
    import subprocess
    import sys

    import tvm
    from tvm import s_tir, te
    from tvm.s_tir import meta_schedule as ms

    from parcnet_tvm.schedules.cpu_gemm import GemmCpu

    a, b = te.placeholder((49, 148), name="A"), te.placeholder((148, 64), name="B")
    k = te.reduce_axis((0, 148), name="k")
    gemm = te.compute((49, 64), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="matmul")
    unscheduled = te.create_prim_func([a, b, gemm])
    sch = s_tir.Schedule(unscheduled)
    assert GemmCpu().schedule(sch, get_target("arm").target, False)
    assert any(inst.kind.name == "Tensorize" for inst in sch.trace.insts)
    database = ms.database.JSONDatabase(str(tmp_path / "database_workload.json"),
                                        str(tmp_path / "database_tuning_record.json"), allow_missing=True)
    workload = database.commit_workload(tvm.IRModule({"main": unscheduled}))
    database.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, [0.001], get_target("arm").target))
    load = ("from parcnet_tvm.tuning_log import open_database; "
            f"print(len(open_database({str(tmp_path)!r}).get_all_tuning_records()))")
    done = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "1", done.stdout + done.stderr
    assert "set aside" not in done.stdout + done.stderr
