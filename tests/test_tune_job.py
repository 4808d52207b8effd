"""scripts/tune.py and the tuning stage: tiny real tuning runs on XT at 64x64 (our op's tasks)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from support import (
    ONLY,
    ROOT,
    SMALL,
    needs_arm_toolchain,
    one_line,
    record_lines,
    run_script,
    script_main,
    slow,
)

from parcnet_tvm import ParcnetError, tuning_log
from parcnet_tvm import manifest as manifest_io
from parcnet_tvm.targets import get_target, local_cuda_arch
from parcnet_tvm.tune_job import logs_of_run
from parcnet_tvm.tuning.budget import TuneBudget
from parcnet_tvm.tuning.measurement import local_measurement
from parcnet_tvm.tuning.tasks import extract_tasks, tune_fused_module
from parcnet_tvm.tuning_log import (
    DEVICE_FILE,
    open_database,
    record_counts,
)

OTHER_CPU = "intel-f6-m106-icelake-server"


def _measured_on(log_dir, device_id):
    """Say in the log's device.json that `device_id` measured it."""
    (log_dir / DEVICE_FILE).write_text(json.dumps({"device": device_id}))


def test_tiny_tuning_run_builds_a_verified_tuned_library(tiny_run):
    out, done = tiny_run
    lines = record_lines(out / "log")
    # 8 trials asked; the budget is checked before each batch of 2, and a tiny task may offer 1
    assert 4 <= len(lines) <= 9 and all(json.loads(line) for line in lines)
    assert "[tune] tasks measured" in done.stdout and "ETA" in done.stdout
    budget = json.loads((out / "log" / "budget.json").read_text())["runs"][-1]  # the allowance is recorded
    assert budget["rule"].startswith("by FLOP share") and len(budget["tasks"]) == 4
    assert all(t["task"].startswith("oversized_conv") and t["max_trials"] >= 2 for t in budget["tasks"])
    # each trial is our op's hand schedule (its rule's annotation, its accumulator tile), not a
    # generic tiling, with our tile sizes as the knobs (the 2x2 map's task has one choice: none)
    assert all('"schedule_rule"' in line and '"CacheWrite"' in line for line in lines)
    assert sum('"SampleCategorical"' in line for line in lines) >= len(lines) - 2
    manifest = manifest_io.read(out / "xt.so")
    assert manifest["verification"]["status"] == "passed"
    assert manifest["verification"]["max_abs_error"] <= 1e-4
    database = manifest["tuning_database"]
    assert database["kernels_from_database"] >= 1 and database["kernels_from_hand_rules"] >= 1
    assert len(manifest["kernel_schedules"]["tuning_database"]) == database["kernels_from_database"]
    assert not [rule for rule in manifest["kernel_schedules"] if "fallback" in rule]
    assert database["logs"][0]["records"] == len(lines)
    # the table: untuned, ours, tuned and PyTorch measured side by side
    for backend in ("pytorch-eager", "tvm-tuned", "tvm-ours", "tvm-untuned"):
        assert f"| {backend} |" in done.stdout


def test_task_allowance_follows_flop_share_unless_one_is_given():
    from parcnet_tvm.tuning.budget import default_budget, task_trial_caps

    flops = [70.0, 20.0, 9.0, 0.9, 0.1]
    budget = default_budget(len(flops), trials=200)
    caps = task_trial_caps(flops, budget)
    # 2x share of 200 trials in whole rounds of 8, at least one round, at most 32 rounds
    assert caps == [256, 80, 40, 8, 8]
    assert caps == sorted(caps, reverse=True)
    given = default_budget(len(flops), trials=200, trials_per_task=24)
    assert not given.by_flops and task_trial_caps(flops, given) == [24] * 5


def test_rerun_continues_in_the_cache_work_dir_and_never_repeats_recorded_trials(tiny_run, fused_xt, tmp_path,
                                                                                 monkeypatch):
    """The same command again: the first run (tiny_run, default work dir) is resumed in the cache."""
    fused, named = fused_xt, get_target("x86")
    shutil.copytree(tiny_run[0] / "cache", tmp_path / "cache")  # a copy: the fixture's log stays as it was
    monkeypatch.setenv("PARCNET_TVM_CACHE", str(tmp_path / "cache"))
    work, warm = logs_of_run("xt", "x86", (SMALL, SMALL), 1, local_measurement(named).device)
    assert work.is_relative_to(tmp_path / "cache") and warm == []
    before = len(record_lines(work))
    assert before >= 4
    again = tune_fused_module(fused, named, work, TuneBudget(8, 64, 2), local_measurement(named), only=ONLY,
                              log=lambda *_: None)
    assert again.stopped == "nothing to do" and again.trials_new == 0
    assert len(record_lines(work)) == before
    more = tune_fused_module(fused, named, work, TuneBudget(12, 64, 2), local_measurement(named), only=ONLY,
                             log=lambda *_: None)
    assert more.trials_before == before and 0 < more.trials_new <= 5  # 4 asked, batches of <= 2
    assert len(record_lines(work)) == before + more.trials_new


def test_the_shipped_log_is_a_read_only_warm_start_of_its_own_device_only(tiny_run, fused_xt, tmp_path, monkeypatch):
    """A checkout whose tuning_logs/ ships this model's log: the run writes to the cache, never
    there; a shipped log of another device is neither copied nor counted as done."""
    fused, named = fused_xt, get_target("x86")
    device = local_measurement(named).device
    monkeypatch.setattr(tuning_log, "REPO_LOGS", tmp_path / "checkout" / "tuning_logs")
    monkeypatch.setenv("PARCNET_TVM_CACHE", str(tmp_path / "cache"))
    shipped = tmp_path / "checkout" / "tuning_logs" / f"xt-x86-{SMALL}"
    shutil.copytree(tiny_run[0] / "log", shipped, ignore=shutil.ignore_patterns("logs"))  # this device's records
    def files():
        return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(shipped.rglob("*"))}
    shipped_before = files()

    work, warm = logs_of_run("xt", "x86", (SMALL, SMALL), 1, device)
    assert work == tmp_path / "cache" / "tuning" / f"xt-x86-{SMALL}" / device.id and warm == [shipped]
    summary = tune_fused_module(fused, named, work, TuneBudget(8, 64, 2), local_measurement(named), warm_start=warm,
                                only=ONLY, log=lambda *_: None)
    assert summary.from_warm_start >= 2 and len(record_lines(work)) >= summary.records_copied > 0
    assert json.loads((work / DEVICE_FILE).read_text())["device"] == device.id
    assert files() == shipped_before
    with pytest.raises(ParcnetError, match="shipped with the checkout, which tuning never writes to"):
        logs_of_run("xt", "x86", (SMALL, SMALL), 1, device, work_dir=shipped)

    _measured_on(shipped, OTHER_CPU)
    shipped_before = files()
    messages = []
    fresh = tune_fused_module(fused, named, tmp_path / "fresh", TuneBudget(2, 64, 2), local_measurement(named),
                              warm_start=[shipped], only=ONLY, log=messages.append)
    assert fresh.from_warm_start == fresh.records_copied == fresh.trials_before == 0 and fresh.trials_new >= 1
    assert any(f"was measured on {OTHER_CPU}, not on this device ({device.id}): not used" in m for m in messages)
    assert files() == shipped_before


def test_a_work_dir_another_device_measured_is_refused(tiny_run, fused_xt, tmp_path):
    fused, named = fused_xt, get_target("x86")
    device = local_measurement(named).device
    work = tmp_path / "log"
    shutil.copytree(tiny_run[0] / "log", work)
    _measured_on(work, OTHER_CPU)
    before = (work / "database_tuning_record.json").read_bytes()
    with pytest.raises(ParcnetError, match=f"was measured on {OTHER_CPU}, and this run measures on {device.id}"):
        tune_fused_module(fused, named, work, TuneBudget(8, 64, 2), local_measurement(named), only=ONLY)
    (work / DEVICE_FILE).unlink()  # records of an older tune.py: whose they are is not known
    with pytest.raises(ParcnetError, match="does not say which device measured it"):
        tune_fused_module(fused, named, work, TuneBudget(8, 64, 2), local_measurement(named), only=ONLY)
    assert (work / "database_tuning_record.json").read_bytes() == before
    _measured_on(work, OTHER_CPU)
    done = run_script("tune.py", "--model", "xt", "--input-size", SMALL, "--work-dir", work, "--compare", 0)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1
    assert f"measured on {OTHER_CPU}" in done.stderr and "drop --work-dir" in done.stderr
    assert (work / "database_tuning_record.json").read_bytes() == before


def test_killed_run_keeps_every_committed_record(fused_xt, tmp_path):
    work = tmp_path / "log"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "tune.py"), "--target", "x86", "--model", "xt",
         "--input-size", str(SMALL), "--only", *ONLY, "--trials", "200", "--trials-per-iter", "2",
         "--work-dir", str(work), "--compare", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while len(record_lines(work)) < 2:  # the first batch committed
            assert process.poll() is None, "tune.py ended before it was killed"
            assert time.time() < deadline, "no records after 300 s"
            time.sleep(0.5)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # tune.py and its build/measure workers
        process.wait()
    kept = record_lines(work)
    valid = [line for line in kept if _is_json(line)]
    assert len(valid) >= 2 and len(valid) >= len(kept) - 1  # at most a half-written last line
    fused, named = fused_xt, get_target("x86")
    resumed = tune_fused_module(fused, named, work, TuneBudget(len(valid) + 2, 64, 2), local_measurement(named),
                                only=ONLY, log=lambda *_: None)
    assert resumed.trials_before == len(valid) and resumed.trials_new <= 3


def _is_json(line):
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


@slow  # logs are applied by test_tune's other cases in the default run
def test_build_script_applies_an_existing_log(tiny_run, tmp_path):
    out = tmp_path / "xt.so"
    done = run_script("build.py", "--model", "xt", "--input-size", SMALL, "--tuning-log", tiny_run[0] / "log",
                      "-o", out)
    assert done.returncode == 0, done.stderr
    assert "kernels from the database" in done.stdout
    manifest = manifest_io.read(out)
    assert manifest["tuning_database"]["kernels_from_database"] >= 1
    assert manifest["verification"]["status"] == "passed"


def test_warm_start_reuses_tuned_tasks_without_new_trials(tiny_run, fused_xt, tmp_path):
    fused, named = fused_xt, get_target("x86")
    source = tiny_run[0] / "log"
    tuned_there = sum(1 for n in record_counts(open_database(source), extract_tasks(fused, named, ONLY)) if n)
    summary = tune_fused_module(fused, named, tmp_path / "log", TuneBudget(8, 64, 2), local_measurement(named),
                                warm_start=[source], only=ONLY, log=lambda *_: None)
    assert summary.from_warm_start == tuned_there >= 2
    assert summary.trials_new <= 2 * (summary.tasks - tuned_there)  # only untuned tasks cost trials
    assert len(record_lines(tmp_path / "log")) >= summary.records_copied > 0


@slow  # ONNX builds stay in the default run (test_frontend)
def test_onnx_export_tunes_the_same_tasks_and_builds_against_onnxruntime(tiny_run, tmp_path):
    """tune.py --onnx on the official repo's kind of export: its tasks are the torch import's
    (warm-started from the torch run's log, the tuned ones cost no trials), and the library
    is verified against onnxruntime on the file."""
    from official_reference import export_like_official, official_xt

    from parcnet_tvm.weights import prepare_model

    onnx_file = tmp_path / "official_xt.onnx"
    export_like_official(official_xt(prepare_model("xt", SMALL).state_dict()), (SMALL, SMALL), onnx_file)
    done = run_script("tune.py", "--target", "x86", "--onnx", onnx_file, "--only", *ONLY, "--trials", 8,
                      "--trials-per-iter", 2, "--warm-start", tiny_run[0] / "log", "--work-dir", tmp_path / "log",
                      "-o", tmp_path / "xt.so")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "compares with PyTorch eager, which an --onnx build does not have" in done.stdout
    manifest = manifest_io.read(tmp_path / "xt.so")
    assert manifest["verification"]["status"] == "passed"
    assert manifest["verification"]["reference"].startswith("onnxruntime")
    assert manifest["tuning_database"]["kernels_from_database"] >= 2


@slow  # warm starts stay in the default run (test_warm_start_reuses_tuned_tasks_without_new_trials)
def test_s_warm_started_from_t_needs_no_trials_and_its_library_verifies(tmp_path):
    """T's records name T's blocks: copied to S's log they must keep T's workload, or
    MetaSchedule cannot load them (found on the way: S after T at 224)."""
    from parcnet_tvm.build import BuildRequest, build_library
    from parcnet_tvm.frontend import import_model
    from parcnet_tvm.pipeline import fused_module
    from parcnet_tvm.targets import get_target
    from parcnet_tvm.weights import prepare_model

    named = get_target("x86")
    only = ("layer_norm_general",)  # the norms' reductions: legalized blocks named after graph vars
    def fused(name):
        return fused_module(import_model(prepare_model(name, SMALL), (1, 3, SMALL, SMALL), "torch"), named)
    t_log, s_log = tmp_path / "t", tmp_path / "s"
    tuned = tune_fused_module(fused("t"), named, t_log, TuneBudget(8, 2, 2), local_measurement(named),
                              only=only, log=lambda *_: None)
    assert tuned.trials_new >= tuned.tasks >= 2
    warm = tune_fused_module(fused("s"), named, s_log, TuneBudget(8, 2, 2), local_measurement(named),
                             warm_start=[t_log], only=only, log=lambda *_: None)
    assert warm.trials_new == 0 and warm.from_warm_start == warm.tasks == tuned.tasks
    manifest = build_library(BuildRequest(model="s", input_size=SMALL, tuning_log=[s_log],
                                          output=str(tmp_path / "s.so")), log=lambda *_: None)
    assert manifest["tuning_database"]["kernels_from_database"] >= warm.tasks
    assert manifest["verification"]["status"] == "passed"


@slow
def test_s_shares_every_task_shape_with_t():
    """Why warm-starting S from T's log needs (almost) no new trials."""
    from tvm.s_tir import meta_schedule as ms

    from parcnet_tvm.frontend import import_model
    from parcnet_tvm.pipeline import fused_module
    from parcnet_tvm.targets import get_target
    from parcnet_tvm.weights import prepare_model

    named = get_target("x86")
    def tasks(name):
        model = prepare_model(name, SMALL)
        return extract_tasks(fused_module(import_model(model, (1, 3, SMALL, SMALL), "torch"), named), named)
    seen = ms.database.MemoryDatabase()
    for task in tasks("t"):
        seen.commit_workload(task.dispatched[0])
    s_tasks = tasks("s")
    assert s_tasks and all(seen.has_workload(task.dispatched[0]) for task in s_tasks)


@slow  # RPC tuning stays in the default run (test_board.py, an x86 server through a tracker)
@needs_arm_toolchain
def test_two_emulated_boards_run_the_whole_rpc_tuning_loop(tmp_path):
    done = run_script("tune.py", "--target", "arm", "--emulate", 2, "--model", "xt", "--input-size", SMALL,
                      "--only", *ONLY, "--trials", 4, "--trials-per-iter", 4, "--work-dir", tmp_path / "log",
                      "-o", tmp_path / "xt-arm.so")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "emulated board: times are not latency" in done.stdout
    summary = next(line for line in done.stdout.splitlines() if line.startswith("[tune] 4 new trials"))
    assert "measured on 2 boards: 127.0.0.1:" in summary and summary.count(" trials") == 3  # both boards named
    assert "of them failed" not in summary  # our RPC server measures every trial
    assert "est." not in done.stdout and "| tvm-tuned |" not in done.stdout  # no emulated latency anywhere
    assert "latency: not measured here" in done.stdout
    assert len(record_lines(tmp_path / "log")) == 4
    manifest = manifest_io.read(tmp_path / "xt-arm.so")
    assert manifest["verification"]["status"] == "passed" and manifest["tuning_database"]


@slow  # ARM builds stay in the default run (test_build)
@needs_arm_toolchain
def test_arm_without_a_board_builds_verifies_and_explains(tmp_path):
    done = run_script("tune.py", "--target", "arm", "--model", "xt", "--input-size", SMALL,
                      "--work-dir", tmp_path / "log", "-o", tmp_path / "xt-arm.so")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no board given, so nothing was tuned" in done.stdout and "--rpc-tracker" in done.stdout
    assert "RK3288 estimate:" in done.stdout and "not a measurement" in done.stdout
    assert not (tmp_path / "log").exists()  # nothing pretended
    assert manifest_io.read(tmp_path / "xt-arm.so")["verification"]["status"] == "passed"


@pytest.mark.skipif(local_cuda_arch() is not None, reason="a GPU is present")
def test_cuda_without_gpu_says_so_and_foreign_logs_are_refused(tiny_run):
    with pytest.raises(ParcnetError, match="no CUDA GPU is visible") as caught:
        script_main("tune.py")("--target", "cuda", "--model", "xt", "--input-size", SMALL)
    assert "--tuning-log" in one_line(caught.value)
    with pytest.raises(ParcnetError, match="was tuned for kind=llvm") as caught:
        script_main("build.py")("--target", "cuda", "--model", "xt", "--input-size", SMALL,
                                "--tuning-log", tiny_run[0] / "log", "--no-verify")
    one_line(caught.value)


@pytest.mark.parametrize("args, message", [
    (["--target", "fpga"], "unknown target 'fpga'"),
    (["--rpc-key", "k"], "--rpc-key needs --rpc-tracker"),
    (["--rpc-tracker", "nohost"], "--rpc-tracker expects HOST:PORT"),
    (["--emulate"], "--emulate runs the emulated ARM board"),
    (["--target", "arm", "--emulate", "-1"], "--emulate -1: give the number of emulated boards"),
    (["--warm-start", "/nonexistent/log"], "--warm-start /nonexistent/log: no such folder"),
    (["--trials", "0"], "--trials must be >= 1"),
    (["--input-size", "2"], "too small"),
])
def test_bad_arguments_get_one_clear_error(args, message):
    with pytest.raises(ParcnetError, match=re.escape(message)) as caught:
        script_main("tune.py")("--model", "xt", "--compare", "0", *args)
    one_line(caught.value)


@needs_arm_toolchain
def test_tuning_against_an_unreachable_board_stops_before_any_trial(tmp_path):
    """A mistyped board address: one error within seconds, no trial, no log, no library."""
    from parcnet_tvm.board import free_port

    started = time.time()
    with pytest.raises(ParcnetError, match="cannot reach the board's RPC server at 127.0.0.1:") as caught:
        script_main("tune.py")("--target", "arm", "--rpc", f"127.0.0.1:{free_port()}", "--model", "xt",
                               "--input-size", SMALL, "--trials", 8, "--work-dir", tmp_path / "log",
                               "-o", tmp_path / "x.so")
    one_line(caught.value)
    assert not (tmp_path / "log").exists() and not (tmp_path / "x.so").exists()
    assert time.time() - started < 60
