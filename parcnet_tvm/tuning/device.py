"""Which device measures a tuning run's trials, and which logs may be used on which device.

A record is a timing, and a timing holds for the device that measured it: the schedule that
was fastest on another CPU (board, GPU) is not the fastest here, and a trial measured there is
not a trial done here. So every log folder names its device in `device.json` (written when a
run first makes it; `tuning_log.DEVICE_FILE`), and:
- a tuning run appends only to a log of its own device, and warm-starts only from logs of its
  own device: those of another device are not used at all, not even as seeds;
- a build applies only logs of the device it is for (`check_build_log`), unless told
  `any_device` (`--any-device`): the engineer who asked for a tuned library gets an error, not
  a library quietly built from another machine's schedules.

Device ids (also the work dir's last folder): x86 `<vendor>-f<family>-m<model>-<mcpu>` from
/proc/cpuinfo and the LLVM CPU the target uses (e.g. amd-f25-m17-znver4), boards
`rpc-<tracker key>` or `rpc-<host>-<port>`, emulated boards `qemu-<key>`, CUDA `cuda-<arch>`.
An ARM build is not told its board: it takes logs of real boards (rpc-*), never of qemu.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..board import EMULATED_KEY
from ..errors import ParcnetError
from ..targets import NamedTarget
from ..tuning_log import has_log, read_device, write_device

VENDORS = {"AuthenticAMD": "amd", "GenuineIntel": "intel", "HygonGenuine": "hygon", "CentaurHauls": "centaur"}


@dataclass(frozen=True)
class Device:
    id: str
    description: str


def _safe(text: str) -> str:
    """A folder-name-safe piece of an id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "unknown"


def cpu_device(mcpu: str, cpuinfo: str | None = None) -> Device:
    """This CPU (or the one `cpuinfo` describes) running code for LLVM CPU `mcpu`."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first CPU's
    vendor = fields.get("vendor_id", "")
    family, model = fields.get("cpu family", "x"), fields.get("model", "x")
    short = (VENDORS.get(vendor) or _safe(vendor.lower())) if vendor else "cpu"
    return Device(f"{short}-f{_safe(family)}-m{_safe(model)}-{_safe(mcpu)}",
                  f"{fields.get('model name', 'unknown CPU')} ({vendor or 'unknown vendor'} family {family} "
                  f"model {model}), code for LLVM CPU {mcpu}")


def device_for(named: NamedTarget, tracker: str | None = None, key: str | None = None, direct: str | None = None,
               emulated: bool = False) -> Device | None:
    """The device that measures trials for `named`: the board given, else this CPU (x86) or the
    target's GPU (CUDA); None for ARM without a board (nothing here can measure it)."""
    if emulated:
        return Device(f"qemu-{_safe(key or EMULATED_KEY)}", f"emulated board (qemu-arm), key {key or EMULATED_KEY}")
    if tracker:
        return Device(f"rpc-{_safe(key)}", f"the boards under RPC key {key} (tracker {tracker})")
    if direct:
        return Device(f"rpc-{_safe(direct)}", f"the board at {direct}")
    if named.name == "x86":
        return cpu_device(named.as_dict().get("mcpu", "x86-64"))
    if named.name == "cuda":
        arch = named.as_dict().get("arch", "unknown")
        return Device(f"cuda-{_safe(arch)}", f"NVIDIA GPU, {arch}")
    return None


def _measured_on(log_dir, recorded: str | None) -> str:
    return f"tuning log {log_dir} was measured on {recorded}" if recorded else \
        f"tuning log {log_dir} does not say which device measured it (no device.json)"


def check_tuning_into(work_dir, device: Device) -> None:
    """Refuse to append to a log another device measured (its trials would count as done here)."""
    recorded = read_device(work_dir)
    if recorded == device.id or (recorded is None and not has_log(work_dir)):
        return
    raise ParcnetError(f"{_measured_on(work_dir, recorded)}, and this run measures on {device.id}: tune into a "
                       "folder of this device (drop --work-dir for the default, or give a new one)")


def claim_work_dir(work_dir, device: Device) -> None:
    """Check, then name the device in a work dir that has no device.json yet."""
    check_tuning_into(work_dir, device)
    if read_device(work_dir) is None:
        write_device(work_dir, device.id, device.description)


def other_device_problem(log_dir, device: Device) -> str | None:
    """Why the log is not `device`'s, so may neither warm-start its runs nor be its default log (None: it is)."""
    recorded = read_device(log_dir)
    return None if recorded == device.id else f"{_measured_on(log_dir, recorded)}, not on this device ({device.id})"


def check_build_log(log_dir, named: NamedTarget, device_id: str | None = None, any_device: bool = False,
                    log=print) -> None:
    """A build for `device_id` (default: this CPU for x86, the target's GPU for CUDA, a real board
    for ARM) applies only logs that device measured; `any_device` applies others with a warning."""
    wanted = device_id or getattr(device_for(named), "id", None)
    recorded = read_device(log_dir)
    if recorded is not None and (recorded == wanted or (wanted is None and recorded.startswith("rpc-"))):
        return
    problem = f"{_measured_on(log_dir, recorded)}, not on {wanted or 'a real board (rpc-*)'}, which this build is for"
    if any_device:
        log(f"warning: {problem}: applied as asked (any device); expect less speed than a log tuned there")
        return
    raise ParcnetError(f"{problem}: tune there (scripts/tune.py), or pass --any-device to apply it anyway")
