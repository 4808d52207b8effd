"""outputs.py and cli.run_main: what a job writes appears whole or not at all; Ctrl-C, SIGTERM
and a full disk stop a job with one line and leave the previous outputs byte for byte."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from support import ROOT, SMALL

from parcnet_tvm import outputs


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_failed_block_leaves_the_old_outputs_and_no_partial(tmp_path):
    library, weights = tmp_path / "m.so", tmp_path / "m.params"
    library.write_bytes(b"old code")
    with pytest.raises(RuntimeError, match="check failed"):
        with outputs.replacing(library, weights) as (lib_part, weights_part):
            lib_part.write_bytes(b"new code")
            weights_part.write_bytes(b"new weights")
            raise RuntimeError("check failed")
    assert _snapshot(tmp_path) == {"m.so": b"old code"}
    with outputs.replacing(library, weights) as (lib_part, weights_part):
        lib_part.write_bytes(b"new code")
        weights_part.write_bytes(b"new weights")
    assert _snapshot(tmp_path) == {"m.params": b"new weights", "m.so": b"new code"}
    assert outputs.pending() == []


def test_a_folder_is_replaced_whole(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "old.txt").write_text("old")
    with outputs.replacing(bundle) as (part,):
        part.mkdir()
        (part / "new.txt").write_text("new")
        assert _snapshot(bundle) == {"old.txt": b"old"}  # nothing changes until the block ends
    assert _snapshot(bundle) == {"new.txt": b"new"} and [p.name for p in tmp_path.iterdir()] == ["bundle"]


def _previous_library(xt_small_x86, folder):
    """A library, its weights and manifest at folder/xt.*, as an earlier build left them."""
    library, _ = xt_small_x86
    for suffix in (".so", ".params", ".json"):
        shutil.copy2(library.with_suffix(suffix), folder / f"xt{suffix}")
    return folder / "xt.so"


def _build_until(output, marker, signum):
    """scripts/build.py of XT at 64 into `output`, sent `signum` once `marker` shows in its output:
    (exit status, seconds from the signal to the exit, stderr)."""
    build = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "build.py"), "--model", "xt", "--input-size",
                              str(SMALL), "-o", str(output)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in build.stdout:
        if marker in line:
            break
    time.sleep(1)  # inside TVM's import / compiler or the verification, not at a line boundary
    os.kill(build.pid, signum)
    sent = time.monotonic()
    status = build.wait(timeout=60)
    return status, time.monotonic() - sent, build.stderr.read()


def _no_process_writes_to(folder):
    """No process left (the linker, a compile worker) with `folder` on its command line."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert str(folder).encode() not in f.read(), pid
        except OSError:
            continue


def test_ctrl_c_stops_a_build_inside_tvms_compiler_and_keeps_the_previous_library(xt_small_x86, tmp_path):
    output = _previous_library(xt_small_x86, tmp_path)
    before = _snapshot(tmp_path)
    done, seconds, stderr = _build_until(output, "[2/4] imported", signal.SIGINT)
    assert done == 130 and seconds < 5, stderr
    assert stderr.strip() == "interrupted (Ctrl-C): stopped", stderr
    assert _snapshot(tmp_path) == before  # byte for byte, and no partial file beside it
    _no_process_writes_to(tmp_path)


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sigterm_stops_packaging_while_the_new_bundle_is_checked_and_keeps_the_old_one(xt_arm, tmp_path):
    """SIGTERM while the new bundle, assembled beside the old one, runs its check under qemu:
    the check's processes are stopped, the new bundle removed, the old one byte for byte."""
    from parcnet_tvm.arm_bundle import package

    library, _ = xt_arm
    bundle, _ = package(library, tmp_path / "bundle")
    before = _tree(tmp_path)
    run = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "package_arm.py"), str(library), "-o", str(bundle),
                            "--check"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob(".bundle.partial-*/parcnet_runner")) and run.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # the runner is starting under qemu now
    os.kill(run.pid, signal.SIGTERM)
    sent = time.monotonic()
    status = run.wait(timeout=60)
    stderr = run.stderr.read()
    assert status == 143 and time.monotonic() - sent < 5, stderr
    assert stderr.strip() == f"interrupted (SIGTERM): stopped; {bundle} left as it was", stderr
    assert _tree(tmp_path) == before  # the old bundle, and nothing beside it
    _no_process_writes_to(tmp_path)  # no runner left under qemu


def _can_mount_tmpfs():
    return shutil.which("unshare") and subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True).returncode == 0


FULL_DISK = """set -e
mount -t tmpfs -o size=2m tmpfs {disk}
set +e
"{python}" {root}/scripts/package_arm.py {library} -o {disk}/bundle
echo "status $?"
ls -A {disk}
"""


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unshare -rm and tmpfs mounts (user namespaces)")
def test_a_full_disk_is_one_line_naming_the_file_and_leaves_nothing_half_written(xt_arm, tmp_path):
    """A real full disk: a 2 MiB tmpfs, mounted in a namespace of the test's own, cannot hold
    the bundle (runtime and weights, several MB)."""
    library, _ = xt_arm
    disk = tmp_path / "disk"
    disk.mkdir()
    script = FULL_DISK.format(disk=disk, library=library, python=sys.executable, root=ROOT)
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert done.stdout.splitlines() == ["status 2"], done.stdout + done.stderr  # and nothing left on the disk
    error = done.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"error: no space left writing {disk}/bundle/"), done.stderr


def test_the_linkers_full_disk_text_becomes_the_line_naming_the_library(tmp_path):
    """TVM's linker reports a full disk as text in a RuntimeError: it becomes the OSError whose
    line names the library the user asked for, not its partial name."""
    from parcnet_tvm.build import _export
    from parcnet_tvm.cli import describe

    class LinkerOutOfSpace:
        def export_library(self, executable, path):
            raise RuntimeError(f"Compilation error:\n/usr/bin/ld: final link failed: No space left on device\n{path}")

    output = tmp_path / "xt.so"
    with pytest.raises(OSError) as caught:
        with outputs.replacing(output) as (part,):
            _export(LinkerOutOfSpace(), None, {}, part)
    assert describe(caught.value).startswith(f"no space left writing {output} (No space left on device)")
    assert list(tmp_path.iterdir()) == []
