"""Named deployment targets: x86 (this host), arm (Cortex-A17 / RK3288) and cuda.

Each knows its TVM target, how to export a library for it, and whether a library for it
can run on this machine. TVM 0.27 rejects target strings, so targets are dicts.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import tvm

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

# x86 CPUs by the /proc/cpuinfo flags their LLVM name needs, best first. LLVM's own host
# detection is not used: under a hypervisor it reports a CPU name from the model number
# whose features the guest may lack, and TVM ignores "mcpu": "native".
AVX512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "fma"}
X86_CPUS = (
    ("znver4", "AuthenticAMD", AVX512 | {"avx512_bf16", "avx512vbmi", "avx512_vnni", "avx512_vbmi2", "gfni", "vaes"}),
    ("icelake-server", "GenuineIntel", AVX512 | {"avx512_vnni", "avx512vbmi", "avx512_vbmi2", "gfni", "vaes"}),
    ("skylake-avx512", None, AVX512),
    ("znver3", "AuthenticAMD", {"avx2", "fma", "bmi2", "vaes"}),
    ("znver2", "AuthenticAMD", {"avx2", "fma", "bmi2"}),
    ("haswell", None, {"avx2", "fma", "bmi2", "f16c"}),
    ("x86-64", None, set()),
)


def _cpuinfo() -> tuple[str, set[str], str]:
    """(vendor, flags, model name) of the first CPU in /proc/cpuinfo."""
    vendor, flags, model = "", set(), "unknown CPU"
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return vendor, flags, model
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "vendor_id" and not vendor:
            vendor = value
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key == "model name" and model == "unknown CPU":
            model = value
    return vendor, flags, model


def detect_x86_mcpu() -> str:
    """The best LLVM CPU name whose required features this host's CPU reports."""
    vendor, flags, _ = _cpuinfo()
    for name, needs_vendor, needs_flags in X86_CPUS:
        if (needs_vendor is None or needs_vendor == vendor) and needs_flags <= flags:
            return name
    return "x86-64"


def cpu_model_name() -> str:
    return _cpuinfo()[2]


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
            executable.export_library(str(path), fcompile=tvm.support.cc.cross_compiler(cxx))
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
        cpu = mcpu or detect_x86_mcpu()
        cores = num_cores or host_cores()
        target = tvm.target.Target({"kind": "llvm", "mcpu": cpu, "num-cores": cores})
        return NamedTarget("x86", target, f"x86-64 host, {cpu}, {cores} cores ({cpu_model_name()})")
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
