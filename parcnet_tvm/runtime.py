"""Where a library runs besides this machine: the emulated ARM board (qemu-arm running our
runner and RPC server), and the cross-built ARM runtime (TVM runtime, runner, RPC server)
that the board bundle ships and the emulated board runs.

The runtime is built from the C++ sources inside the installed apache-tvm-ffi and
apache-tvm wheels plus our own support headers (parcnet_tvm/arm_runtime/support: the
apache-tvm wheel lacks them), with cmake + ninja and zig's clang (the `ziglang` wheel) for
arm-linux-gnueabihf against glibc 2.17's symbol versions, libc++ linked statically: the
bundle runs on any armhf Linux from glibc 2.17 on (TinkerOS, Firefly's Ubuntu 16.04,
Buildroot), not only on Debian 12. Builds are cached under build/arm-runtime/<key>, the key covering the wheel
versions and our sources, so a rerun takes seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

from .errors import ParcnetError
from .targets import NamedTarget, local_cuda_arch

SOURCE_DIR = Path(__file__).resolve().parent / "arm_runtime"
# Beside the package (the checkout's build/ for the usual editable install), whatever the cwd.
DEFAULT_CACHE = Path(__file__).resolve().parents[1] / "build" / "arm-runtime"
LIBRARIES = ("libtvm_ffi.so", "libtvm_runtime.so", "libparcnet.so")  # libparcnet: the C API (parcnet.h)
PROGRAMS = ("parcnet_runner", "parcnet_rpc_server")
CROSS_PREFIX = "arm-linux-gnueabihf-"
SYSROOT = "/usr/arm-linux-gnueabihf"
# qemu's cortex-a15 has the A17's ISA (ARMv7-A, NEON, VFPv4); cortex-a9 lacks VFPv4 and
# dies with SIGILL on our code, which shows the NEON/VFPv4 instructions are really used.
QEMU_CPU = "cortex-a15"
MIN_CMAKE = (3, 26)
DEBIAN_TOOLS = {
    "arm-linux-gnueabihf-g++": "g++-arm-linux-gnueabihf",
    "ninja": "ninja-build",
    "qemu-arm": "qemu-user",
}


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ParcnetError(f"{tool} not found: install it with apt-get install {DEBIAN_TOOLS[tool]}")
    return path


def _require_cmake() -> str:
    cmake = shutil.which("cmake")
    version = None
    if cmake:
        out = subprocess.run([cmake, "--version"], capture_output=True, text=True).stdout
        match = re.search(r"(\d+)\.(\d+)", out)
        version = tuple(int(v) for v in match.groups()) if match else None
    if version is None or version < MIN_CMAKE:
        have = f"cmake {'.'.join(map(str, version))}" if version else "no cmake"
        raise ParcnetError(f"the ARM runtime build needs cmake >= 3.26 ({have} found; Debian 12's is 3.25): "
                           f"pip install 'cmake>=3.26'")
    return cmake


def wheel_dirs() -> tuple[Path, Path]:
    """(apache-tvm package dir, apache-tvm-ffi package dir) of the installed wheels."""
    import tvm
    import tvm_ffi

    return Path(tvm.__file__).resolve().parent, Path(tvm_ffi.__file__).resolve().parent


def _our_sources() -> list[Path]:
    """What the build compiles (example/ is built by the user, against a bundle)."""
    return sorted(p for p in SOURCE_DIR.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and "example" not in p.relative_to(SOURCE_DIR).parts)


def cache_key() -> str:
    """Wheel versions + our sources: a change to any of them means a fresh build."""
    digest = hashlib.sha256()
    for dist in ("apache-tvm", "apache-tvm-ffi"):
        digest.update(f"{dist}=={metadata.version(dist)}\n".encode())
    for path in _our_sources():
        digest.update(str(path.relative_to(SOURCE_DIR)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def runtime_dir(cache=None) -> Path:
    """Where the built runtime (libraries + programs) for the current sources lives."""
    return Path(cache or os.environ.get("PARCNET_ARM_RUNTIME_CACHE", DEFAULT_CACHE)) / cache_key() / "out"


def runtime_is_built(cache=None) -> bool:
    out = runtime_dir(cache)
    return all((out / name).is_file() for name in LIBRARIES + PROGRAMS)


def _stage(stage: Path) -> None:
    """Copy the wheels' sources and our support headers into one tree CMake can build."""
    tvm_dir, ffi_dir = wheel_dirs()
    skip = shutil.ignore_patterns("*.so", "*.pyc", "__pycache__", "lib", "cython", "*.py", "*.pyi")
    shutil.copytree(ffi_dir, stage / "tvm_ffi", ignore=skip)
    # The ffi CMakeLists includes cmake/Utils, which the wheel installs as share/cmake/tvm_ffi/Utils.
    shutil.copytree(ffi_dir / "share" / "cmake" / "tvm_ffi" / "Utils", stage / "tvm_ffi" / "cmake" / "Utils")
    shutil.copytree(tvm_dir / "src" / "runtime", stage / "tvm" / "src" / "runtime")
    shutil.copytree(tvm_dir / "include", stage / "tvm" / "include")
    support = SOURCE_DIR / "support"
    shutil.copytree(support / "include", stage / "tvm" / "include", dirs_exist_ok=True)
    shutil.copytree(support / "src", stage / "tvm" / "src", dirs_exist_ok=True)
    shutil.copytree(support / "3rdparty", stage / "tvm" / "3rdparty", dirs_exist_ok=True)


def _run_logged(cmd: list[str], log, cwd=None) -> None:
    """Run a build step, streaming its progress lines; on failure show the tail of its output."""
    env = dict(os.environ, PARCNET_PYTHON=sys.executable)  # the interpreter with ziglang (zig/cc, zig/c++)
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    tail: list[str] = []
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-40:]
        if line.startswith("[") and ("Building" in line or "Linking" in line):
            log("      " + line.strip()[:150])
    if proc.wait() != 0:
        raise ParcnetError(f"ARM runtime build step failed: {' '.join(cmd[:3])} ...\n" + "\n".join(tail))


def build_runtime(cache=None, jobs: int | None = None, log=print) -> Path:
    """Cross-build (or find in the cache) libtvm_ffi, libtvm_runtime, the runner and the RPC server."""
    out = runtime_dir(cache)
    if runtime_is_built(cache):
        log(f"ARM runtime: cached in {out}")
        return out
    _require(CROSS_PREFIX + "g++")  # its binutils strip the runtime; its sysroot runs it under qemu
    _require("ninja")
    if importlib.util.find_spec("ziglang") is None:
        raise ParcnetError("the ARM runtime is built with zig's clang: pip install ziglang==0.17.1 "
                           "(or pip install -e '.[arm]')")
    cmake = _require_cmake()
    root = out.parent
    if root.exists():
        shutil.rmtree(root)  # a half-finished earlier build
    stage, build = root / "stage", root / "build"
    log(f"ARM runtime: staging wheel sources in {stage}")
    _stage(stage)
    jobs = jobs or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
    log("ARM runtime: configuring (cmake + ninja, zig c++ for arm-linux-gnueabihf with glibc 2.17, cortex-a17)")
    _run_logged([cmake, "-S", str(SOURCE_DIR), "-B", str(build), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_TOOLCHAIN_FILE={SOURCE_DIR / 'zig-toolchain.cmake'}", f"-DSTAGE_DIR={stage}"], log)
    log(f"ARM runtime: compiling with {jobs} jobs (a few minutes on 2 cores)")
    _run_logged([cmake, "--build", str(build), "-j", str(jobs)], log)
    tmp = root / "out.tmp"
    tmp.mkdir()
    for name in LIBRARIES + PROGRAMS:
        found = next(build.rglob(name), None)
        if found is None:
            raise ParcnetError(f"ARM runtime build finished without {name}")
        shutil.copy2(found, tmp / name)
        subprocess.run([CROSS_PREFIX + "strip", "--strip-unneeded", str(tmp / name)], check=True)
    tmp.rename(out)  # only a complete build is ever found in the cache
    shutil.rmtree(stage)
    log(f"ARM runtime: built in {out}")
    return out


def qemu_prefix(runtime: Path | None) -> list[str]:
    """The command prefix that runs an ARM program (of the bundle: its libraries in `runtime`)
    under qemu-arm here."""
    qemu = _require("qemu-arm")
    return [qemu, "-cpu", QEMU_CPU, "-L", SYSROOT] + (["-E", f"LD_LIBRARY_PATH={runtime}"] if runtime else [])


def run_runner(library, args: list[str], runtime: Path | None = None,
               timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run parcnet_runner on `library` with `args` under qemu here."""
    runtime = runtime or runtime_dir()
    cmd = qemu_prefix(runtime) + [str(runtime / "parcnet_runner"), str(library), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def run_emulated(library, x: np.ndarray, output_shape, runtime: Path | None = None) -> np.ndarray:
    """The library's output (of `output_shape`) for input `x`, computed by the runner under qemu.
    The runner reads shapes from a manifest: one is written for it (the library being verified
    has none yet)."""
    with tempfile.TemporaryDirectory() as tmp:
        inp, out, manifest = Path(tmp) / "input.raw", Path(tmp) / "output.raw", Path(tmp) / "shapes.json"
        np.ascontiguousarray(x, dtype=np.float32).tofile(inp)
        manifest.write_text(json.dumps({"input_shape": list(x.shape), "output": {"shape": list(output_shape)}}))
        done = run_runner(library, ["--input", str(inp), "--manifest", str(manifest), "--output", str(out)], runtime)
        if done.returncode != 0:
            raise ParcnetError(f"the ARM runner failed under qemu: {done.stderr.strip()[-2000:]}")
        return np.fromfile(out, dtype=np.float32).reshape(output_shape)


def why_not_emulated() -> str | None:
    """None when ARM libraries can run here under qemu, else what is missing."""
    if shutil.which("qemu-arm") is None:
        return "qemu-arm is not installed (apt-get install qemu-user)"
    if not runtime_is_built():
        return "the ARM runtime is not built (python scripts/build_arm_runtime.py)"
    return None


def start_rpc_server(port: int | None = None, tracker: str | None = None, key: str | None = None,
                     runtime: Path | None = None, allow: list[str] | None = None) -> subprocess.Popen:
    """Start the board's RPC server under qemu (the emulated board) in its own process group;
    the caller stops it (board.stop). It listens on loopback (the emulated board is this
    host); `allow`: the only client addresses it serves."""
    runtime = runtime or runtime_dir()
    cmd = qemu_prefix(runtime) + [str(runtime / "parcnet_rpc_server"), "--bind", "127.0.0.1"]
    if port:
        cmd += ["--port", str(port)]
    if tracker:
        cmd += ["--tracker", tracker, "--key", key or "rk3288"]
    if allow:
        cmd += ["--allow", ",".join(allow)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def why_not_runnable(named: NamedTarget) -> str | None:
    """None when a library for `named` runs on this machine, else the reason."""
    if named.name == "x86":
        return None
    if named.name == "cuda":
        return None if local_cuda_arch() else "no CUDA GPU is visible on this machine"
    reason = why_not_emulated()  # ARM libraries run here on the emulated board (qemu-arm)
    return None if reason is None else f"ARM libraries run on the board, or here under qemu: {reason}"
