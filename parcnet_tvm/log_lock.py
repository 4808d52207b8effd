"""One writer per tuning log, by design (tuning_log.py's readers and tune's runs use it).

A tuning run holds an exclusive flock on the work dir's `.lock` for as long as it writes
(`writing`); a second run on the same work dir refuses at once and names the first. A reader
takes the same lock for a moment (`locked(..., wait=0)`) to repair and load the log in place,
and reads a snapshot when it cannot. The lock file says who holds it, for the refusal.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from .errors import ParcnetError

LOCK_FILE = ".lock"  # flock'ed; says who holds it: "tune pid <pid> since <time>" or "read ..."
READER_WAIT_SECONDS = 30  # a run waits this long for a reader's moment with the lock

# work dirs this process is writing now (their lock held by `writing`): read in place
_WRITING: set[str] = set()


def _key(work_dir) -> str:
    return str(Path(work_dir).resolve())


@contextlib.contextmanager
def writing(work_dir):
    """Hold the work dir's lock while a tuning run writes its log. Another run on it refuses at
    once, naming the first; a reader's moment with the lock is waited for."""
    work_dir = Path(work_dir)
    if _key(work_dir) in _WRITING:  # this process holds it already (the tune job around its tuning)
        yield work_dir
        return
    work_dir.mkdir(parents=True, exist_ok=True)
    with locked(work_dir, "tune", wait=READER_WAIT_SECONDS) as held:
        if not held:
            raise ParcnetError(f"tuning log {work_dir} is being written by another run ({_holder(work_dir)}): "
                               "wait for it to finish (it resumes from the same log), or give another --work-dir")
        _WRITING.add(_key(work_dir))
        try:
            yield work_dir
        finally:
            _WRITING.discard(_key(work_dir))


@contextlib.contextmanager
def locked(work_dir: Path, role: str, wait: float):
    """Try the exclusive lock (retrying up to `wait` seconds while a reader holds it); yields
    whether it is held. The lock file says who holds it, for the refusal's message."""
    fd = os.open(work_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline or _holder(work_dir).startswith("tune"):
                    yield False
                    return
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{role} pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        yield True
    finally:
        os.close(fd)  # releases the lock


def _holder(work_dir: Path) -> str:
    try:
        return (work_dir / LOCK_FILE).read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def held_by_this_process(work_dir) -> bool:
    """Whether this process is the run writing `work_dir` (its reads are safe in place)."""
    return _key(work_dir) in _WRITING
