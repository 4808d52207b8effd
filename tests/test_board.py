"""board.py: measuring trials on a board through RPC (a tracker, or a direct address)."""

import contextlib
import dataclasses
import subprocess
import sys
import threading
import time

import pytest
from support import ONLY, record_lines

from parcnet_tvm import ParcnetError
from parcnet_tvm.board import (
    boards_under_key,
    check_reachable,
    free_port,
    start_tracker,
    stop,
    wait_for_servers,
)
from parcnet_tvm.targets import get_target
from parcnet_tvm.tuning.budget import TuneBudget
from parcnet_tvm.tuning.measurement import local_measurement, rpc_measurement
from parcnet_tvm.tuning.tasks import extract_tasks, tune_fused_module
from parcnet_tvm.tuning_log import open_database, record_counts


def x86_server(tracker_port: int) -> tuple[subprocess.Popen, str]:
    """TVM's Python RPC server (an x86 "board") registered under test-board; and its HOST:PORT."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
                               "--port", str(port), "--port-end", str(port + 1),
                               "--tracker", f"127.0.0.1:{tracker_port}", "--key", "test-board"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return server, f"127.0.0.1:{port}"


@contextlib.contextmanager
def board_pool(count: int):
    """A Python RPC tracker with `count` x86 RPC servers under one key, on 127.0.0.1:
    yields (tracker HOST:PORT, [(server process, its HOST:PORT)])."""
    port = free_port()
    tracker = start_tracker(port)  # listening when it returns
    servers = [x86_server(port) for _ in range(count)]
    try:
        wait_for_servers("127.0.0.1", port, "test-board", count)
        yield f"127.0.0.1:{port}", servers
    finally:
        for server, _ in servers:
            stop(server)
        stop(tracker)


@pytest.fixture(scope="module")
def two_boards():
    """Two boards under test-board, shared by the tests that leave them as they were (each
    server is a Python process importing TVM: ~20 s to start a pool)."""
    with board_pool(2) as pool:
        yield pool


def test_rpc_runner_measures_on_a_server_through_the_tracker(fused_xt, two_boards, tmp_path):
    fused, named = fused_xt, get_target("x86")
    measurement = rpc_measurement(named, tracker=two_boards[0], key="test-board")  # one board of the two
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
    back = dataclasses.replace(local_measurement(named), device=measurement.device)  # the board back (here, by name)
    again = tune_fused_module(fused, named, tmp_path, TuneBudget(2, 64, 2), back, only=ONLY, log=lambda *_: None)
    assert again.trials_new == 2 and again.trials_failed == 0 and again.best_ms


def test_a_board_that_cannot_be_reached_is_one_error_within_seconds():
    started = time.time()
    with pytest.raises(ParcnetError, match="cannot reach the board's RPC server at 127.0.0.1:.*parcnet_rpc_server"):
        check_reachable(None, None, f"127.0.0.1:{free_port()}")
    with pytest.raises(ParcnetError, match="cannot reach the RPC tracker at 127.0.0.1:"):
        check_reachable(f"127.0.0.1:{free_port()}", "rk3288", None)
    assert time.time() - started < 30


def test_a_tracker_without_the_key_names_the_keys_it_has(two_boards):
    check_reachable(two_boards[0], "test-board", None)  # the right key: no error
    with pytest.raises(ParcnetError, match="no board is registered under key 'rk3288'.*keys there: test-board"):
        check_reachable(two_boards[0], "rk3288", None)


def test_a_pool_of_boards_measures_trials_on_every_board(fused_xt, two_boards, tmp_path):
    tracker, servers = two_boards
    fused, named = fused_xt, get_target("x86")
    assert boards_under_key(tracker, "test-board") == 2
    messages = []
    measurement = rpc_measurement(named, tracker=tracker, key="test-board", boards=2)
    summary = tune_fused_module(fused, named, tmp_path, TuneBudget(8, 64, 4), measurement, only=ONLY,
                                log=messages.append)
    assert summary.trials_new == 8 and summary.trials_failed == 0
    assert set(summary.trials_by_board) == {address for _, address in servers}  # both boards measured
    assert sum(summary.trials_by_board.values()) == 8 and min(summary.trials_by_board.values()) >= 1
    assert any("| measured on 2 boards: 127.0.0.1:" in m and " trials, 127.0.0.1:" in m for m in messages)
    assert len(record_lines(tmp_path)) == 8


def test_a_board_lost_mid_run_costs_only_its_trials_in_flight(fused_xt, tmp_path):
    with board_pool(2) as pool:  # a pool of its own: one of its boards is stopped
        _lost_mid_run(fused_xt, pool, tmp_path)


def _lost_mid_run(fused_xt, pool, tmp_path):
    tracker, servers = pool
    (_, kept), (lost, lost_address) = servers
    fused, named = fused_xt, get_target("x86")
    measurement = rpc_measurement(named, tracker=tracker, key="test-board", boards=2)
    killer = []

    def log(message):  # after the first measured batch, the second board goes away during the next one
        if message.startswith("[tune]") and not killer:
            killer.append(threading.Timer(0.5, stop, [lost]))
            killer[0].start()

    summary = tune_fused_module(fused, named, tmp_path, TuneBudget(8, 64, 4), measurement, only=ONLY, log=log)
    killer[0].join()
    assert lost.poll() is not None  # the board really went away mid-run
    assert summary.trials_new - summary.trials_failed >= 8  # the run finished its budget on the other board
    assert summary.trials_failed <= 1  # at most the one trial the lost board had in flight
    assert summary.trials_by_board.get(lost_address, 0) <= 4 + 1  # the lost board: its first batch at most
    assert summary.trials_by_board[kept] >= summary.trials_new - summary.trials_failed - 5
    assert len(record_lines(tmp_path)) == summary.trials_new  # every trial recorded, failed ones as failed
