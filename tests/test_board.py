"""board.py: measuring trials on a board through RPC (a tracker, or a direct address)."""

import subprocess
import sys

import pytest
from support import ONLY, record_lines

from parcnet_tvm.board import free_port, start_tracker, stop, wait_for_server
from parcnet_tvm.targets import get_target
from parcnet_tvm.tuning.budget import TuneBudget
from parcnet_tvm.tuning.measurement import rpc_measurement
from parcnet_tvm.tuning.tasks import tune_fused_module
from parcnet_tvm.tuning_log import open_database


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
    assert summary.trials_new == 2 and not summary.best_ms
    assert any("failed to run" in m and "board unreachable" in m for m in messages)
    assert len(record_lines(tmp_path)) == 2  # recorded as failed trials, never lost
