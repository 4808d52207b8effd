"""What a job writes appears whole or not at all.

Every artifact (library, weights, manifest, bundle, bench conversion) is written under a
partial name beside its final path and renamed into place only once the whole set is checked
(`replacing`). The partials of this process are registered here, so that an interrupt
(`cli.run_main` sees Ctrl-C and SIGTERM at once, even while TVM's compiler holds the job's
thread) can stop the job's child processes and remove every partial (`abandon`): what was at
the final paths before stays byte for byte. A full disk is one line naming the path
(`cli.describe`), and the same clean-up runs on the way out.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import threading
from pathlib import Path

# A commit (the renames) and an interrupt's clean-up never interleave: the interrupt waits for
# a commit under way to finish, and no commit starts after it.
_COMMIT = threading.Lock()
# partial path -> final path, of this process's jobs, not yet renamed into place
_PENDING: dict[Path, Path] = {}
# every partial this process named, kept after it is gone: an error met while writing one is
# reported under the name the user gave
_NAMED: dict[Path, Path] = {}

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# TVM's linker step reports a full disk as text inside a RuntimeError
DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "File too large")


def partial(path) -> Path:
    """Where `path` is written before it is checked and renamed into place: same folder, same
    suffix (the linker and loaders go by it), the process id (two jobs never share one)."""
    path = Path(path)
    suffix = "" if path.is_dir() else path.suffix
    name = f".{path.name.removesuffix(suffix)}.partial-{os.getpid()}{suffix}"
    part = path.with_name(name)
    with _COMMIT:
        _PENDING[part] = _NAMED[part] = path
    return part


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def discard(*parts: Path) -> None:
    """Remove partials (files or folders) and forget them."""
    for part in parts:
        _remove(part)
        with _COMMIT:
            _PENDING.pop(part, None)


def commit(*parts: Path) -> None:
    """Rename partials into their final places, as one step an interrupt cannot split. A
    partial that was never written (an optional artifact) is skipped; a folder replaces the
    folder that was there."""
    with _COMMIT:
        for part in parts:
            final = _PENDING.pop(part)
            if not part.exists():
                continue
            if part.is_dir() and final.is_dir():  # a folder cannot replace one in a single rename
                old = final.with_name(f".{final.name}.old-{os.getpid()}")
                os.replace(final, old)
                os.replace(part, final)
                shutil.rmtree(old)
            else:
                os.replace(part, final)


@contextlib.contextmanager
def replacing(*finals):
    """Partials for `finals`, committed together when the block ends normally, removed when it
    raises (a failed check, a full disk, an interrupt inside Python): `finals` stay as they were."""
    parts = [partial(f) for f in finals]
    try:
        yield parts
    except BaseException:
        discard(*parts)
        raise
    commit(*parts)


def write_bytes(path, data: bytes) -> Path:
    """`path`'s new content, written whole or not at all."""
    with replacing(path) as (part,):
        Path(part).write_bytes(data)
    return Path(path)


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode())


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc) for t in DISK_FULL_TEXT)


def disk_full_error(exc: BaseException, path) -> OSError:
    """A full disk met while writing `path` (TVM's text error included), as the OSError the
    scripts print in one line."""
    code = exc.errno if isinstance(exc, OSError) and exc.errno in DISK_FULL else errno.ENOSPC
    return OSError(code, os.strerror(code), str(path))


def final(path) -> Path:
    """What a message should name for `path`: the final path of a partial, or of a file inside
    a partial folder (a bundle); `path` itself otherwise."""
    path = Path(path)
    with _COMMIT:
        for part, final_path in _NAMED.items():
            if path == part or path.is_relative_to(part):
                return final_path / path.relative_to(part)
    return path


def pending() -> list[Path]:
    """The final paths a job in this process is writing now."""
    with _COMMIT:
        return sorted(set(_PENDING.values()))


def abandon() -> list[Path]:
    """Stop this process's children and remove every partial, holding the commit lock so that
    no rename happens afterwards: called just before the process exits on an interrupt.
    Returns the final paths that were being written (left as they were)."""
    _COMMIT.acquire(timeout=30)  # a commit is a few renames; never wait forever
    _kill_descendants()
    finals = sorted(set(_PENDING.values()))
    for part in list(_PENDING):
        _remove(part)
    _PENDING.clear()
    return finals


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])  # after "(comm)": state, ppid
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def _kill_descendants() -> None:
    """SIGKILL every process below this one (the linker, MetaSchedule's builders and runners,
    emulated boards, bench's workers): each would go on writing after we are gone. Twice, for
    processes started while the first pass ran."""
    for _ in range(2):
        children, todo, found = _children_by_parent(), [os.getpid()], []
        while todo:
            kids = children.get(todo.pop(), [])
            found += kids
            todo += kids
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
