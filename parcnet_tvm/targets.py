"""Named deployment targets: x86 (this host), arm (Cortex-A17 / RK3288) and cuda.

Each knows its TVM target, how to export a library for it, and whether a library for it
can run on this machine. TVM 0.27 rejects target strings, so targets are dicts.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import tvm

from . import neon_kernels
from .errors import ParcnetError

TARGET_NAMES = ("x86", "arm", "cuda")
DEFAULT_CUDA_ARCH = "sm_90"  # H100

# Cortex-A17 (RK3288): armv7-a, NEON + VFPv4, hard-float ABI. Without "mfloat-abi": "hard"
# the link fails with "uses VFP register arguments" (shared notes).
ARM_CORTEX_A17 = {
    "kind": "llvm",
    "mtriple": "armv7a-linux-gnueabihf",
    "mcpu": "cortex-a17",
    "mattr": ["+neon", "+vfp4"],
    "mfloat-abi": "hard",
    "num-cores": 4,
}
ARM_CXX = "arm-linux-gnueabihf-g++"

# x86: the LLVM CPU name from the CPU's identity (vendor, family, model as /proc/cpuinfo shows
# cpuid's display values), then checked against the kernel's flags: under a hypervisor a guest
# may lack features its model implies (AVX-512, AMX masked off). TVM ignores "mcpu": "native".
# Models as LLVM's own host detection (TargetParser/Host.cpp) has them, except that a CPU it
# reports by an older name with the same features (Emerald Rapids as sapphirerapids, Raptor and
# Meteor Lake as alderlake, Lunar Lake as arrowlake-s) gets its own name, which LLVM also knows.
def _models(*pairs) -> dict:
    return {model: name for models, name in pairs for model in models}


INTEL_FAMILY6 = _models(
    ((0x3c, 0x3f, 0x45, 0x46), "haswell"), ((0x3d, 0x47, 0x4f, 0x56), "broadwell"),
    ((0x4e, 0x5e, 0x8e, 0x9e, 0xa5, 0xa6), "skylake"), ((0x66,), "cannonlake"),
    ((0x7d, 0x7e), "icelake-client"), ((0x8c, 0x8d), "tigerlake"), ((0xa7,), "rocketlake"),
    ((0x97, 0x9a, 0xbe), "alderlake"), ((0xb7, 0xba, 0xbf), "raptorlake"), ((0xaa, 0xac), "meteorlake"),
    ((0xc5,), "arrowlake"), ((0xc6,), "arrowlake-s"), ((0xbd,), "lunarlake"), ((0xcc,), "pantherlake"),
    ((0x6a, 0x6c), "icelake-server"), ((0x8f,), "sapphirerapids"), ((0xcf,), "emeraldrapids"),
    ((0xad,), "graniterapids"), ((0xae,), "graniterapids-d"),
    ((0xaf,), "sierraforest"), ((0xb6,), "grandridge"), ((0xdd,), "clearwaterforest"))
ZEN2 = (*range(0x30, 0x40), 0x47, *range(0x60, 0x80), *range(0x84, 0x88), *range(0x90, 0xb0))
ZEN4 = (*range(0x10, 0x20), *range(0x60, 0x80), *range(0xa0, 0xb0))
# What an older LLVM calls a CPU it does not know yet (the nearest predecessor).
OLDER = {"emeraldrapids": "sapphirerapids", "graniterapids-d": "graniterapids", "graniterapids": "sapphirerapids",
         "clearwaterforest": "sierraforest", "grandridge": "sierraforest", "sierraforest": "alderlake",
         "pantherlake": "arrowlake-s", "lunarlake": "arrowlake-s", "arrowlake-s": "arrowlake",
         "arrowlake": "alderlake", "meteorlake": "alderlake", "raptorlake": "alderlake",
         "znver5": "znver4", "znver4": "znver3"}
# When the guest lacks what its CPU's name needs: the first of these whose features it has.
STEP_DOWN = {"GenuineIntel": ("graniterapids", "sapphirerapids", "icelake-server", "cascadelake",
                              "skylake-avx512", "alderlake", "skylake", "haswell"),
             "AuthenticAMD": ("znver5", "znver4", "znver3", "znver2", "znver1")}
GENERIC_X86 = ("x86-64-v4", "x86-64-v3", "x86-64-v2", "x86-64")
X86_TRIPLE = "x86_64-unknown-linux-gnu"
# The instruction-set features LLVM may emit on its own, checked against the kernel's flags
# (spelled as cpuinfo spells them once "_", "." and "-" are dropped, but for these).
CHECKED_FEATURES = ("sse", "ssse", "avx", "amx", "fma", "f16c", "bmi", "lzcnt", "popcnt", "movbe",
                    "pclmul", "gfni", "vaes", "vpclmulqdq")
CPUINFO_SPELLING = {"sse3": "pni", "bmi": "bmi1", "lzcnt": "abm", "pclmul": "pclmulqdq"}


def identify_x86(vendor: str, family: int, model: int, stepping: int) -> str | None:
    """LLVM's name for this CPU, or None for one we do not know."""
    if vendor == "GenuineIntel" and family == 6:
        if model == 0x55:  # Skylake-SP, Cascade Lake and Cooper Lake share the model
            return "cooperlake" if stepping >= 10 else "cascadelake" if stepping >= 5 else "skylake-avx512"
        return INTEL_FAMILY6.get(model)
    if vendor == "AuthenticAMD":
        return {23: "znver2" if model in ZEN2 else "znver1", 25: "znver4" if model in ZEN4 else "znver3",
                26: "znver5"}.get(family)
    return None


def _squash(flag: str) -> str:
    return flag.replace("_", "").replace(".", "").replace("-", "")


@functools.cache
def llvm_knows(mcpu: str) -> bool:
    return bool(tvm.target.codegen.llvm_is_valid_cpu(mcpu, X86_TRIPLE))


@functools.cache
def required_features(mcpu: str) -> dict[str, str]:
    """{cpuinfo flag (squashed): LLVM feature} of the instruction sets LLVM assumes for `mcpu`."""
    target = tvm.target.Target({"kind": "llvm", "mtriple": X86_TRIPLE, "mcpu": mcpu})
    features = map(str, tvm.target.codegen.llvm_get_cpu_features(target))
    return {_squash(CPUINFO_SPELLING.get(f, f)): f for f in features if f.startswith(CHECKED_FEATURES)}


def choose_x86_mcpu(vendor: str, identified: str | None, flags: set[str]) -> tuple[str, tuple[str, ...]]:
    """(the mcpu to compile for, the LLVM features `identified` needs that the kernel does not
    list). A flag the kernel does not show counts as missing: stepping down is the safe error."""
    have = {_squash(flag) for flag in flags}
    name, missing = identified, ()
    while name in OLDER and not llvm_knows(name):
        name = OLDER[name]
    if name and llvm_knows(name):
        needs = required_features(name)
        missing = tuple(sorted(needs[flag] for flag in needs.keys() - have))
        if not missing:
            return name, ()
    for candidate in STEP_DOWN.get(vendor, ()) + GENERIC_X86:
        if llvm_knows(candidate) and required_features(candidate).keys() <= have:
            return candidate, missing
    return "x86-64", missing


@dataclass(frozen=True)
class HostCpu:
    """This machine's x86 CPU: its identity, the LLVM name compiled for, caches and cores."""

    vendor: str
    family: int
    model: int
    stepping: int
    model_name: str
    identified: str | None             # LLVM's name for vendor/family/model (None: not known)
    mcpu: str                          # the name used: identified, or older (LLVM, guest flags)
    missing_features: tuple[str, ...]  # LLVM features `identified` needs that the guest lacks
    l1d_bytes: int | None              # one cache of each level; None without sysfs
    l2_bytes: int | None
    l3_bytes: int | None
    l2_shared_by_cores: int            # physical cores sharing one L2 (one, or a cluster)
    l3_shared_by_cores: int
    cores: int                         # CPUs this process may run on (TVM's threads)
    physical_cores: int                # of those, distinct cores (SMT siblings count once)

    @property
    def l2_per_core(self) -> int | None:
        return self.l2_bytes // self.l2_shared_by_cores if self.l2_bytes else None


def _cpuinfo(root: Path = Path("/")) -> dict[str, str]:
    """The first CPU's fields in /proc/cpuinfo (empty where there is none)."""
    try:
        text = (root / "proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cpu_list(text: str) -> set[int]:
    """'0-3,8' -> {0, 1, 2, 3, 8}"""
    cpus = set()
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def _size(text: str) -> int:
    """sysfs cache size ('32K', '1024K', '2M') in bytes."""
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
    return int(text.rstrip("KMGkmg")) * scale


def _core_of(cpu_dir: Path, cpu: int) -> str:
    """One name for all SMT siblings of `cpu`'s core."""
    return _read(cpu_dir / f"cpu{cpu}/topology/thread_siblings_list") or str(cpu)


def _sysfs_caches(cpu_dir: Path, cpu: int) -> dict[int, tuple[int, int]]:
    """{level: (bytes, physical cores sharing it)} of `cpu`'s data and unified caches."""
    caches = {}
    for index in sorted((cpu_dir / f"cpu{cpu}/cache").glob("index*")):
        level, kind, size = (_read(index / name) for name in ("level", "type", "size"))
        if level and size and kind in ("Data", "Unified"):
            shared = _cpu_list(_read(index / "shared_cpu_list") or str(cpu))
            caches[int(level)] = (_size(size), len({_core_of(cpu_dir, c) for c in shared}))
    return caches


def read_host_cpu(root: str | Path = "/", cpus: list[int] | None = None) -> HostCpu:
    """Describe the CPU from `root`'s /proc/cpuinfo and /sys (tests pass a fake tree), for the
    CPUs in `cpus` (default: those this process may run on)."""
    root, cpus = Path(root), sorted(cpus if cpus is not None else _allowed_cpus())
    info = _cpuinfo(root)
    vendor = info.get("vendor_id", "")
    family, model, stepping = (int(info.get(key) or 0) for key in ("cpu family", "model", "stepping"))
    identified = identify_x86(vendor, family, model, stepping)
    mcpu, missing = choose_x86_mcpu(vendor, identified, set(info.get("flags", "").split())) if vendor \
        else ("x86-64", ())  # no x86 /proc/cpuinfo: nothing to check the features against
    cpu_dir = root / "sys/devices/system/cpu"
    caches = _sysfs_caches(cpu_dir, cpus[0])
    (l1, _), (l2, l2_cores), (l3, l3_cores) = (caches.get(level, (None, 1)) for level in (1, 2, 3))
    return HostCpu(vendor, family, model, stepping, info.get("model name", "unknown CPU"), identified, mcpu,
                   missing, l1, l2, l3, l2_cores, l3_cores, len(cpus), len({_core_of(cpu_dir, c) for c in cpus}))


@functools.cache
def host_cpu() -> HostCpu:
    """This machine's CPU, read once."""
    return read_host_cpu()


def host_cpu_description() -> dict:
    """What was detected, as JSON data (for the build manifest's "cpu")."""
    host = host_cpu()
    return {**dataclasses.asdict(host), "missing_features": list(host.missing_features),
            "source": "cpuid+sysfs" if host.l1d_bytes else "cpuid"}


def detect_x86_mcpu() -> str:
    """The LLVM CPU name to compile for this machine."""
    return host_cpu().mcpu


def cpu_model_name() -> str:
    return host_cpu().model_name


def host_cores() -> int:
    return len(_allowed_cpus())


def _allowed_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def use_threads(threads: int | None = None) -> int:
    """Run TVM's CPU kernels (called from this thread) and PyTorch's ops on `threads` threads
    (default: every core this process may use); returns the count TVM's pool now uses.

    TVM sizes its pool from the topology (hardware threads / 2 on x86: 1 on a 2-vCPU VM)
    unless it is given a CPU list, one per thread: mode -3 lets the threads share the listed
    cores unpinned (cores repeat when `threads` exceeds them). A thread's pool is made by its
    first call and keeps its size: later calls can lower the count, not raise it past that."""
    import torch

    threads = threads or host_cores()
    cpus = _allowed_cpus()
    cpus = [str(cpus[i % len(cpus)]) for i in range(threads)]
    tvm.get_global_func("runtime.config_threadpool")(-3, threads, cpus)
    torch.set_num_threads(threads)
    return tvm.get_global_func("runtime.NumThreads")()


def local_cuda_arch() -> str | None:
    """sm_XY of GPU 0, or None when no CUDA device is visible."""
    try:
        dev = tvm.cuda(0)
        if dev.exist:
            return "sm_" + dev.compute_version.replace(".", "")
    except Exception:  # no driver / no CUDA runtime in this TVM build
        pass
    return None


def _require_tool(tool: str, debian_package: str, purpose: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ParcnetError(
            f"{tool} not found: it is needed to {purpose}. "
            f"Install it with: apt-get install {debian_package}"
        )
    return path


def arm_linker(cxx: str = ARM_CXX):
    """export_library's compile function for ARM libraries: the cross compiler, linking our
    hand-written NEON kernels (neon_kernels) beside TVM's objects."""
    return tvm.support.cc.cross_compiler(cxx, add_files=neon_kernels.objects(cxx))


@dataclass(frozen=True)
class NamedTarget:
    """A deployment target by name, with the TVM target and how to export for it."""

    name: str
    target: tvm.target.Target
    description: str

    def export_library(self, executable, path) -> Path:
        """Write the compiled executable as a shared library loadable on the target."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.name == "arm":
            cxx = _require_tool(ARM_CXX, "g++-arm-linux-gnueabihf", "link ARM libraries")
            executable.export_library(str(path), fcompile=arm_linker(cxx))
        else:  # x86 and the CUDA host code are linked with the host compiler
            _require_tool("g++", "g++", "link host libraries")
            executable.export_library(str(path))
        return path

    def check_toolchain(self) -> None:
        """Fail early, before a long compile, when the linker is missing."""
        if self.name == "arm":
            _require_tool(ARM_CXX, "g++-arm-linux-gnueabihf", "link ARM libraries")
        else:
            _require_tool("g++", "g++", "link host libraries")

    @property
    def emulated(self) -> bool:
        """Libraries for this target run here only under emulation: their time is not latency."""
        return self.name == "arm"

    def device(self):
        return tvm.cuda(0) if self.name == "cuda" else tvm.cpu(0)

    def as_dict(self) -> dict:
        """The full target as plain JSON data (for manifests)."""
        return json.loads(str(self.target))


def get_target(name: str, cuda_arch: str | None = None, mcpu: str | None = None,
               num_cores: int | None = None) -> NamedTarget:
    """Resolve a target name ('x86', 'arm', 'cuda') to a NamedTarget."""
    key = name.lower().strip()
    if key in ("x86", "x86_64", "host", "cpu"):
        host = host_cpu()
        cpu = mcpu or host.mcpu
        cores = num_cores or host_cores()
        target = tvm.target.Target({"kind": "llvm", "mcpu": cpu, "num-cores": cores})
        seen = f"{host.model_name}, {host.vendor} family {host.family} model {host.model} stepping {host.stepping}"
        if host.identified and host.identified != cpu:
            seen += f", identified as {host.identified}"
        return NamedTarget("x86", target, f"x86-64 host, {cpu}, {cores} cores ({seen})")
    if key in ("arm", "armv7", "cortex-a17", "rk3288"):
        spec = dict(ARM_CORTEX_A17)
        if num_cores:
            spec["num-cores"] = num_cores
        return NamedTarget("arm", tvm.target.Target(spec), "ARM Cortex-A17 (armv7-a NEON/VFPv4, hard-float Linux)")
    if key in ("cuda", "gpu", "nvidia"):
        arch = cuda_arch or local_cuda_arch() or DEFAULT_CUDA_ARCH
        if not arch.startswith("sm_"):
            raise ParcnetError(f"CUDA arch {arch!r} should look like sm_90 (H100) or sm_86")
        # The limits MetaSchedule's GPU rules read (a bare {"kind": "cuda"} has none of them):
        # the same on every NVIDIA GPU since sm_50 (48 KiB is the static shared-memory limit).
        target = tvm.target.Target({"kind": "cuda", "arch": arch, "max_threads_per_block": 1024,
                                    "max_num_threads": 1024, "thread_warp_size": 32,
                                    "max_shared_memory_per_block": 49152, "registers_per_block": 65536},
                                   host={"kind": "llvm"})
        return NamedTarget("cuda", target, f"NVIDIA GPU, {arch}")
    raise ParcnetError(f"unknown target {name!r}: choose one of {', '.join(TARGET_NAMES)}")
