"""Reaching an ARM board through TVM RPC: a tracker or a direct server, and the emulated board.

tune.py measures trials on the board and bench.py times whole libraries there; both open their
sessions here. The emulated board is our own RPC server (from the ARM bundle) under qemu-arm,
registered with a local tracker: a check that the whole path works, never a source of latency.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from .errors import ParcnetError

EMULATED_KEY = "emulated-cortex-a17"


def parse_host_port(text: str, flag: str) -> tuple[str, int]:
    host, _, port = (text or "").rpartition(":")
    if not host or not port.isdigit():
        raise ParcnetError(f"{flag} expects HOST:PORT (got {text!r})")
    return host, int(port)


def add_board_arguments(parser, emulate_help: str, pool: bool = False):
    """The board options tune.py and bench.py share (--rpc-tracker/--rpc-key, --rpc, --emulate),
    in an "ARM board" group, which is returned for a script's own additions. With `pool`,
    --emulate takes an optional number of emulated boards (tune.py measures on all at once)."""
    group = parser.add_argument_group("ARM board")
    group.add_argument("--rpc-tracker", metavar="HOST:PORT",
                       help="RPC tracker the boards registered with (every board under --rpc-key is used)")
    group.add_argument("--rpc-key", help="the boards' key at the tracker")
    group.add_argument("--rpc", metavar="HOST:PORT", help="the board's RPC server, without a tracker")
    if pool:
        group.add_argument("--emulate", nargs="?", type=int, const=1, default=0, metavar="N", help=emulate_help)
    else:
        group.add_argument("--emulate", action="store_true", help=emulate_help)
    return group


def check_board_args(rpc_tracker: str | None, rpc_key: str | None, rpc: str | None) -> None:
    """The one check of --rpc-tracker/--rpc-key/--rpc that tune.py and bench.py share."""
    if rpc and rpc_tracker:
        raise ParcnetError("give either --rpc HOST:PORT or --rpc-tracker HOST:PORT --rpc-key KEY, not both")
    if rpc_key and not rpc_tracker:
        raise ParcnetError("--rpc-key needs --rpc-tracker HOST:PORT")
    if rpc_tracker:
        parse_host_port(rpc_tracker, "--rpc-tracker")
        if not rpc_key:
            raise ParcnetError("--rpc-tracker needs --rpc-key (the key the board registered with)")
    if rpc:
        parse_host_port(rpc, "--rpc")


def connect(tracker: str | None = None, key: str | None = None, direct: str | None = None,
            session_timeout: int = 60, attempts: int = 3):
    """RPC session to the board, through the tracker or directly, retried a few times (boards drop
    connections); the last failure is raised with what was tried. The session's `board_address`
    says which board answered (HOST:PORT), so a pool of boards can count its trials."""
    from tvm import rpc

    error = None
    for attempt in range(attempts):
        try:
            if direct:
                host, port = parse_host_port(direct, "--rpc")
                session = rpc.connect(host, port, session_timeout=session_timeout)
                session.board_address = direct
                return session
            return _request_from_tracker(tracker, key, session_timeout)
        except ParcnetError:
            raise
        except Exception as exc:
            error = exc
            time.sleep(0.5 * (attempt + 1))
    where = direct or f"tracker {tracker} key {key}"
    raise RuntimeError(f"board unreachable through RPC ({where}) after {attempts} attempts: {error}")


def _request_from_tracker(tracker: str, key: str, session_timeout: int):
    """TrackerSession.request, keeping the address of the board the tracker hands out (TVM's
    own request does not return it). Protocol: REQUEST -> [SUCCESS, [host, port, matchkey]]."""
    from tvm import rpc
    from tvm.rpc import base

    host, port = parse_host_port(tracker, "--rpc-tracker")
    tracker_session = rpc.connect_tracker(host, port)
    try:
        base.sendjson(tracker_session._sock, [base.TrackerCode.REQUEST, key, "", 1])
        reply = base.recvjson(tracker_session._sock)
    finally:
        tracker_session.close()
    if reply[0] != base.TrackerCode.SUCCESS:
        raise RuntimeError(f"the tracker refused the request for {key}: {reply}")
    board_host, board_port, matchkey = reply[1]
    session = rpc.connect(board_host, board_port, matchkey, session_timeout=session_timeout)
    session.board_address = f"{board_host}:{board_port}"
    return session


def boards_under_key(tracker: str, key: str) -> int:
    """How many boards are registered under `key` at the tracker now (free or in a session)."""
    from tvm import rpc

    host, port = parse_host_port(tracker, "--rpc-tracker")
    summary = rpc.connect_tracker(host, port).summary()
    servers = [s for s in summary.get("server_info", []) if str(s.get("key", "")).split(":", 1)[-1] == key]
    free = summary.get("queue_info", {}).get(key, {}).get("free", 0)
    return max(len(servers), free, 1)


def check_reachable(rpc_tracker: str | None, rpc_key: str | None, rpc: str | None, timeout: float = 5) -> None:
    """One connection attempt to the board (or its tracker) before any expensive work: a wrong
    address is one clear error within seconds, not a tuning budget spent on failed trials."""
    from tvm import rpc as tvm_rpc

    host, port = parse_host_port(rpc or rpc_tracker, "--rpc" if rpc else "--rpc-tracker")
    what = f"the board's RPC server at {host}:{port}" if rpc else f"the RPC tracker at {host}:{port}"
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise ParcnetError(f"cannot reach {what} ({exc.strerror or exc}): check the address, and that "
                           + ("parcnet_rpc_server runs there" if rpc else "the tracker runs there")) from None
    try:
        if rpc:
            tvm_rpc.connect(host, port, session_timeout=int(timeout) + 5)
            return
        summary = tvm_rpc.connect_tracker(host, port).summary()
    except Exception as exc:  # TVM's RPC errors come as several types
        raise ParcnetError(f"{what} accepts connections but does not answer as TVM RPC ({last_words(exc)}): "
                           "check the address") from None
    keys = [str(k) for k in summary.get("queue_info", {})]
    if rpc_key not in keys:
        raise ParcnetError(f"no board is registered under key {rpc_key!r} at {what} (keys there: "
                           f"{', '.join(keys) or 'none'}): start parcnet_rpc_server --tracker {host}:{port} "
                           f"--key {rpc_key} on the board, or fix --rpc-key")


def last_words(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:200]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_tracker(port: int, timeout: float = 30) -> subprocess.Popen:
    """TVM's RPC tracker on 127.0.0.1:port, in its own process group: it serves from a worker
    process of its own, which killing the tracker alone would leave running. Stop it with stop().
    Returns once it accepts connections: a server started before that waits 5 s to retry."""
    tracker = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                                "--port", str(port), "--port-end", str(port + 1)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and tracker.poll() is None:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return tracker
        time.sleep(0.05)
    stop(tracker)
    raise ParcnetError(f"the local RPC tracker did not start on 127.0.0.1:{port} within {timeout:.0f} s")


def stop(process: subprocess.Popen) -> None:
    """Kill a process started in its own group (start_new_session=True), with its children."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def wait_for_servers(host: str, port: int, key: str, count: int = 1, timeout: float = 180) -> None:
    """Return once `count` servers with `key` are registered with the tracker host:port."""
    from tvm import rpc

    deadline = time.time() + timeout
    while True:
        try:
            summary = rpc.connect_tracker(host, port).summary()
            if summary.get("queue_info", {}).get(key, {}).get("free", 0) >= count:
                return
        except Exception:
            pass
        if time.time() > deadline:
            raise ParcnetError(f"{count} RPC server(s) with key {key} did not register with the tracker "
                               f"{host}:{port} within {timeout:.0f} s")
        time.sleep(1)


@contextlib.contextmanager
def emulated_board(log=print, count: int = 1):
    """Start a local tracker and `count` of our board RPC servers under qemu-arm, all under one
    key; yields the tracker's HOST:PORT (key EMULATED_KEY) and stops everything afterwards."""
    from . import runtime

    reason = runtime.why_not_emulated()
    if reason:
        raise ParcnetError(f"--emulate needs the emulated board: {reason}")
    if count < 1:
        raise ParcnetError(f"--emulate {count}: give the number of emulated boards, at least 1")
    port = free_port()
    tracker = start_tracker(port)
    servers, addresses = [], []
    try:
        for _ in range(count):
            server_port = free_port()
            servers.append(runtime.start_rpc_server(port=server_port, tracker=f"127.0.0.1:{port}",
                                                    key=EMULATED_KEY))
            addresses.append(f"127.0.0.1:{server_port}")
        boards = f"{count} emulated boards" if count > 1 else "emulated board"
        log(f"      {boards}: parcnet_rpc_server under qemu-arm at {', '.join(addresses)}, tracker "
            f"127.0.0.1:{port} (a pipeline check: their times are not latency)")
        wait_for_servers("127.0.0.1", port, EMULATED_KEY, count)
        yield f"127.0.0.1:{port}"
    finally:
        for process in [*servers, tracker]:
            stop(process)


@dataclass(frozen=True)
class ChosenBoard:
    """The board a command was pointed at: through a tracker (`tracker` + `key`) or directly."""

    tracker: str | None
    key: str | None
    direct: str | None
    emulated: bool
    where: str
    boards: int = 1  # registered under the key when the run started: trials measured at once


@contextlib.contextmanager
def chosen_board(emulate: int, rpc: str | None, rpc_tracker: str | None, rpc_key: str | None, log=print):
    """The board(s) given by --emulate [N] / --rpc / --rpc-tracker --rpc-key, or None: emulated
    boards are started before the block and stopped after it."""
    if emulate:
        with emulated_board(log, count=int(emulate)) as tracker:
            yield ChosenBoard(tracker, EMULATED_KEY, None, True, "local tracker " + tracker, boards=int(emulate))
    elif rpc_tracker:
        yield ChosenBoard(rpc_tracker, rpc_key, None, False, f"tracker {rpc_tracker}, key {rpc_key}",
                          boards=boards_under_key(rpc_tracker, rpc_key))
    elif rpc:
        yield ChosenBoard(None, None, rpc, False, f"RPC server {rpc}")
    else:
        yield None
