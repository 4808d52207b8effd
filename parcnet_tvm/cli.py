"""What every script shares: one error style, `error: <what is wrong>: <how to fix it>`, exit 2;
Ctrl-C / SIGTERM stop the job at once with one line, exit 130 / 143.

The job runs on a thread of its own while the main thread only waits, because Python sees a
signal on the main thread alone, and only between bytecodes: a job in TVM's compiler (minutes
of C++) would otherwise go on to the end. On a signal the main thread stops the job's child
processes, removes its partial files (`outputs.abandon`: what was at the outputs stays as it
was) and exits; it does not wait for the job's thread.

`--debug` (any script) shows the traceback instead; it is taken off the arguments before the
script parses them.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
import traceback

from . import outputs
from .errors import ParcnetError

SIGNAL_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal's number, as shells report


class Interrupted(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum, _frame):
    raise Interrupted(signum)


def run_main(main) -> None:
    """Run a script's main() on the job's thread: a ParcnetError, or a file the system refused
    (permissions, a full disk), prints one line and exits with status 2; a signal, one line
    and 130 / 143."""
    debug = "--debug" in sys.argv[1:]
    if debug:
        sys.argv = [sys.argv[0], *(a for a in sys.argv[1:] if a != "--debug")]
    for signum in SIGNAL_STATUS:
        signal.signal(signum, _raise_interrupted)
    # the job's temporary files (TVM's object files, scratch copies of logs) in one folder of
    # its own, removed on the way out whatever happens
    tempfile.tempdir = tempfile.mkdtemp(prefix="parcnet-job-")
    result: dict = {}

    def job():
        try:
            result["status"] = main()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread as it is
            result["error"] = exc

    worker = threading.Thread(target=job, name="job", daemon=True)
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.5)  # wakes for signals at once; the timeout only bounds a missed one
    except Interrupted as stop:
        _stop(stop.signum)
    shutil.rmtree(tempfile.tempdir, ignore_errors=True)
    error = result.get("error")
    if isinstance(error, KeyboardInterrupt):  # raised inside the job (Python API code): same answer
        _stop(signal.SIGINT)
    if error is None:
        sys.exit(result.get("status") or 0)
    if isinstance(error, SystemExit):
        raise error
    if isinstance(error, (ParcnetError, OSError)):
        if debug:
            traceback.print_exception(error)
        print(f"error: {describe(error)}", file=sys.stderr)
        sys.exit(2)
    raise error


def _stop(signum: int) -> None:
    for sig in SIGNAL_STATUS:  # a second Ctrl-C does not cut the clean-up short
        signal.signal(sig, signal.SIG_IGN)
    left = outputs.abandon()
    shutil.rmtree(tempfile.gettempdir(), ignore_errors=True)
    kept = f"; {', '.join(map(str, left))} left as {'they were' if len(left) > 1 else 'it was'}" if left else ""
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    print(f"interrupted ({name}): stopped{kept}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(SIGNAL_STATUS[signum])


def describe(exc: Exception) -> str:
    # a copy names its source in `filename` and what it was writing in `filename2`
    written = getattr(exc, "filename2", None) or getattr(exc, "filename", None)
    if outputs.is_disk_full(exc) and written:
        return (f"no space left writing {outputs.final(written)} ({exc.strerror}): free space on that disk "
                "or write elsewhere (-o); nothing half-written was left")
    if isinstance(exc, OSError) and exc.filename:
        return f"cannot use {exc.filename}: {exc.strerror}: check the path and its permissions"
    return str(exc)
