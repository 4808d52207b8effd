"""board.py: measuring trials on a board through RPC (a tracker, or a direct address)."""

import subprocess
import sys
import time

import pytest
from support import ONLY, record_lines

from parcnet_tvm import ParcnetError
from parcnet_tvm.board import (
    check_reachable,
    free_port,
    start_tracker,
    stop,
    wait_for_server,
)
from parcnet_tvm.targets import get_target
from parcnet_tvm.tuning.budget import TuneBudget
from parcnet_tvm.tuning.measurement import local_measurement, rpc_measurement
from parcnet_tvm.tuning.tasks import extract_tasks, tune_fused_module
from parcnet_tvm.tuning_log import open_database, record_counts


@pytest.fixture
def rpc_tracker_with_server():
    """A Python RPC tracker and an x86 RPC server registered with it, on 127.0.0.1."""
    port = free_port()
    tracker = start_tracker(port)
    server_port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
                               "--port", str(server_port), "--port-end", str(server_port + 1),
                               "--tracker", f"127.0.0.1:{port}", "--key", "test-board"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_server("127.0.0.1", port, "test-board")
        yield f"127.0.0.1:{port}"
    finally:
        stop(server)
        stop(tracker)


def test_rpc_runner_measures_on_a_server_through_the_tracker(fused_xt, rpc_tracker_with_server, tmp_path):
    fused, named = fused_xt, get_target("x86")
    measurement = rpc_measurement(named, tracker=rpc_tracker_with_server, key="test-board")
    summary = tune_fused_module(fused, named, tmp_path, TuneBudget(2, 64, 2), measurement, only=ONLY,
                                log=lambda *_: None)
    assert summary.trials_new == 2 and summary.best_ms  # measured through RPC
    records = open_database(tmp_path).get_all_tuning_records()
    assert len(records) == 2 and any(r.run_secs for r in records)


def test_board_that_vanishes_gives_failed_trials_and_a_message(fused_xt, tmp_path):
    fused, named = fused_xt, get_target("x86")
    messages = []
    measurement = rpc_measurement(named, direct=f"127.0.0.1:{free_port()}", session_timeout=5)  # nobody there
    summary = tune_fused_module(fused, named, tmp_path, TuneBudget(2, 64, 2), measurement, only=ONLY,
                                log=messages.append)
    assert summary.trials_new == summary.trials_failed == 2 and not summary.best_ms
    assert "board unreachable" in summary.failure
    assert any("failed to run" in m and "board unreachable" in m for m in messages)
    assert len(record_lines(tmp_path)) == 2  # recorded as failed trials, never lost
    # failed trials do not count as tuned: the rerun (board back) tunes the same tasks again
    assert record_counts(open_database(tmp_path), extract_tasks(fused, named, ONLY)) == [0] * summary.tasks
    again = tune_fused_module(fused, named, tmp_path, TuneBudget(2, 64, 2), local_measurement(named), only=ONLY,
                              log=lambda *_: None)
    assert again.trials_new == 2 and again.trials_failed == 0 and again.best_ms


def test_a_board_that_cannot_be_reached_is_one_error_within_seconds():
    started = time.time()
    with pytest.raises(ParcnetError, match="cannot reach the board's RPC server at 127.0.0.1:.*parcnet_rpc_server"):
        check_reachable(None, None, f"127.0.0.1:{free_port()}")
    with pytest.raises(ParcnetError, match="cannot reach the RPC tracker at 127.0.0.1:"):
        check_reachable(f"127.0.0.1:{free_port()}", "rk3288", None)
    assert time.time() - started < 30


def test_a_tracker_without_the_key_names_the_keys_it_has(rpc_tracker_with_server):
    check_reachable(rpc_tracker_with_server, "test-board", None)  # the right key: no error
    with pytest.raises(ParcnetError, match="no board is registered under key 'rk3288'.*keys there: test-board"):
        check_reachable(rpc_tracker_with_server, "rk3288", None)
