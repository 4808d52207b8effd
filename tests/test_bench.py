"""scripts/bench.py: every backend side by side on XT at 64x64 on the threads asked for, JSON rows,
a PNG, skipped backends; the peer engines checked against PyTorch and timed in alternating rounds,
and MNN's converter run without the MNN.tools wrapper (which runs pip and sends usage data)."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from support import SMALL, needs_arm_toolchain, one_line, run_script, script_main

from parcnet_tvm import ParcnetError
from parcnet_tvm.targets import local_cuda_arch

KEYS = {"model", "target", "batch", "input_size", "backend", "median_ms", "p90_ms", "peak_mem_mb",
        "speedup_vs_pytorch"}
ORIGINAL = ("pytorch-eager", "torch-compile", "onnxruntime", "tvm-untuned", "tvm-ours", "tvm-tuned")
PEERS = ("openvino", "mnn", "ncnn")

# Loaded by every Python process started with its folder on PYTHONPATH (bench.py, its workers, the
# converter's child): refuses, and logs to $GUARD_LOG, importing MNN.tools or OpenVINO's telemetry
# (whatever the route: a meta path finder), starting pip, or opening a network connection.
GUARD = """
import os, re, sys

def _refuse(what):
    with open(os.environ["GUARD_LOG"], "a") as log:
        log.write(what + "\\n")
    raise RuntimeError("guard refused: " + what)

class _Refused:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] == "openvino_telemetry" or name == "MNN.tools" or name.startswith("MNN.tools."):
            _refuse("import " + name)

_PIP = re.compile(r"(?<![\\w.-])pip[\\d.]*(?![\\w.-])")
_STARTS = {"os.system": 1, "subprocess.Popen": 2, "os.exec": 2, "os.posix_spawn": 2, "os.spawn": 3}

def _hook(event, args):
    if event in _STARTS and _PIP.search(" ".join(map(str, args[:_STARTS[event]]))):
        _refuse("run " + " ".join(map(str, args[:_STARTS[event]])))
    if event == "urllib.Request" or (event == "socket.connect" and isinstance(args[1], tuple)):
        _refuse(event + " " + str(args[1] if event == "socket.connect" else args[0]))

sys.meta_path.insert(0, _Refused)
sys.addaudithook(_hook)
"""


def guarded_env(tmp_path) -> tuple[dict, object]:
    """Environment that loads GUARD in every Python process, and the log it writes refusals to."""
    folder = tmp_path / "guard"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(GUARD)
    log = tmp_path / "guard.log"
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "GUARD_LOG": str(log)}, log


def test_bench_runs_every_backend_and_writes_json_and_png(tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    with pytest.raises(ParcnetError, match="no tuning log") as caught:  # a log that is not there: one error
        script_main("bench.py")("--model", "xt", "--input-size", SMALL, "--repeat", 2, "--max-seconds", 5,
                                "--json", out, "--plot", png, "--tuning-log", tmp_path / "no-such-log")
    one_line(caught.value)
    done = run_script("bench.py", "--model", "xt", "--input-size", SMALL, "--repeat", 5, "--max-seconds", 5,
                      "--threads", 1, "--rounds", 1, "--json", out, "--plot", png, "--backends", *ORIGINAL)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())
    by_backend = {r["backend"]: r for r in rows}
    assert set(by_backend) == set(ORIGINAL)
    for name, row in by_backend.items():
        assert KEYS <= set(row)
        if name == "tvm-tuned":  # no log for XT at 64 here: reported, not faked
            assert row["median_ms"] is None and "no tuning log" in row["skipped"]
            continue
        assert row["median_ms"] > 0 and row["p90_ms"] >= row["median_ms"] and row["peak_mem_mb"] > 0
        # --threads 1 holds for every backend, TVM's included: one thread of the worker ran the
        # timed calls (with --threads 2, 2 for each but tvm-untuned, whose default kernels are serial)
        assert row["busy_threads"] == 1, (name, row["busy_threads"])
    assert by_backend["pytorch-eager"]["speedup_vs_pytorch"] == 1.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert done.stdout.startswith("[bench]") and "Machine: " in done.stdout and ", 1 threads;" in done.stdout
    assert re.search(r"\(family \d+ model \d+, [\w-]+\), \d+ cores", done.stdout)  # the CPU by cpuid
    assert "| parcnetv2_xt | 1 | tvm-ours |" in done.stdout


def test_missing_backend_is_listed_as_skipped(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "onnxruntime.py").write_text("raise ImportError('hidden for the test')\n")
    out = tmp_path / "bench.json"
    done = run_script("bench.py", "--model", "xt", "--input-size", SMALL, "--repeat", 2,
                      "--backends", "pytorch-eager", "onnxruntime", "--json", out, env={"PYTHONPATH": str(fake)})
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {r["backend"]: r for r in json.loads(out.read_text())}
    assert "onnxruntime is not installed" in rows["onnxruntime"]["skipped"]
    assert rows["pytorch-eager"]["median_ms"] > 0
    assert "| onnxruntime | skipped: onnxruntime is not installed" in done.stdout


def test_bench_arguments_are_checked_with_one_clear_error():
    cases = [
        (("--target", "arm"), "give --rpc-tracker HOST:PORT --rpc-key KEY or --rpc HOST:PORT"),
        (("--target", "x86", "--pytorch-ms", "50"), "are for --target arm"),
        (("--target", "arm", "--emulate", "--pytorch-ms", "50"), "drop --pytorch-ms"),
        (("--target", "arm", "--rpc", "127.0.0.1:9090", "--model", "xt", "t", "--pytorch-ms", "50"),
         "ambiguous with several models"),
        (("--target", "arm", "--rpc-tracker", "127.0.0.1:9190"), "--rpc-tracker needs --rpc-key"),
        (("--target", "riscv"), "unknown target 'riscv'"),
        (("--rounds", "0"), "--rounds >= 1"),
        (("--target", "arm", "--rpc", "127.0.0.1:1"), "cannot reach the board's RPC server at 127.0.0.1:1"),
    ]
    if local_cuda_arch() is None:
        cases.append((("--target", "cuda"), "needs an NVIDIA GPU, and none is visible"))
    for args, message in cases:
        with pytest.raises(ParcnetError) as caught:
            script_main("bench.py")(*args)
        assert message in one_line(caught.value), (args, caught.value)  # one line, no traceback


@needs_arm_toolchain
def test_arm_bench_on_the_emulated_board_checks_output_and_gives_the_rk3288_estimate(tmp_path):
    out = tmp_path / "arm.json"
    done = run_script("bench.py", "--target", "arm", "--emulate", "--model", "xt", "--input-size", SMALL,
                      "--backends", "pytorch-eager", "tvm-ours", "--json", out, "--plot", tmp_path / "arm.png")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {r["backend"]: r for r in json.loads(out.read_text())}
    ours = rows["tvm-ours"]
    assert ours["median_ms"] is None and ours["max_abs_error"] <= 1e-4  # emulated time is never latency
    assert 0 < ours["rk3288_estimate_ms"] < ours["rk3288_estimate_ms_1t"]
    assert "nothing is timed" in rows["pytorch-eager"]["skipped"]
    line = next(line for line in done.stdout.splitlines() if "RK3288 estimate:" in line)
    assert f"{ours['rk3288_estimate_ms']:.0f} ms at 4 threads" in line and "not a measurement" in line
    assert "correctness only" in done.stdout and "median" not in done.stdout
    assert "| parcnetv2_xt | 1 | tvm-ours | matches (" in done.stdout
    assert f"(estimate), needs {ours['rk3288_footprint_mib']:.0f} MiB |" in done.stdout
    assert 20 < ours["rk3288_footprint_mib"] < 60  # XT: 28 MiB of weights, once
    assert not (tmp_path / "arm.png").exists() and "plot: skipped" in done.stdout


@needs_arm_toolchain
def test_arm_bench_times_through_an_rpc_tracker_next_to_the_given_pytorch_time(tmp_path):
    # The board here is our RPC server under qemu, reached like a real board (tracker + key): this
    # checks the path (upload, check, time, table), not a latency.
    from parcnet_tvm import board

    out = tmp_path / "arm.json"
    with board.emulated_board(log=lambda *_: None) as tracker:
        done = run_script("bench.py", "--target", "arm", "--rpc-tracker", tracker, "--rpc-key", board.EMULATED_KEY,
                          "--model", "xt", "--input-size", SMALL, "--backends", "pytorch-eager", "tvm-ours",
                          "--repeat", 2, "--pytorch-ms", "xt=500", "--json", out)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {r["backend"]: r for r in json.loads(out.read_text())}
    ours, eager = rows["tvm-ours"], rows["pytorch-eager"]
    assert ours["median_ms"] > 0 and ours["max_abs_error"] <= 1e-4 and ours["peak_mem_mb"] is None
    assert eager["median_ms"] == 500 and eager["source"] == "given with --pytorch-ms"
    assert ours["speedup_vs_pytorch"] == round(500 / ours["median_ms"], 3)
    assert "board reached through RPC" in done.stdout and "500.00 (given with --pytorch-ms)" in done.stdout


def test_cached_library_is_reused_only_when_built_by_this_pipeline(xt_small_x86, tmp_path, monkeypatch):
    """The cache starts with the session's XT at 64 for x86 (what tvm-ours builds for the case,
    copied where bench keeps it): reused while current, rebuilt once stale, then reused."""
    from parcnet_tvm import manifest as manifest_io
    from parcnet_tvm.bench import cache
    from parcnet_tvm.bench.backends import BenchCase
    from parcnet_tvm.params import path_for as weights_path

    monkeypatch.setattr(cache, "BENCH_DIR", tmp_path)
    case = BenchCase(model="xt", batch=1, input_size=(SMALL, SMALL))
    built, built_manifest = xt_small_x86
    assert built_manifest["pipeline"] == manifest_io.pipeline_fingerprint()  # a build records its pipeline
    library = tmp_path / f"{manifest_io.artifact_name('xt', case.target, case.input_size, 1)}-ours.so"
    for source, copy in ((built, library), (built.with_suffix(".json"), library.with_suffix(".json")),
                         (weights_path(built), weights_path(library))):
        copy.write_bytes(source.read_bytes())
    builds = []
    assert cache.prepare_library(case, "tvm-ours", [], builds.append) == library and builds == []
    manifest = manifest_io.read(library)
    manifest["pipeline"] = "an older pipeline"
    manifest_io.write(library, manifest)
    assert cache.prepare_library(case, "tvm-ours", [], builds.append) == library
    assert len(builds) == 1  # rebuilt, not measured as if it were current
    assert manifest_io.read(library)["pipeline"] == manifest_io.pipeline_fingerprint()
    assert cache.prepare_library(case, "tvm-ours", [], builds.append) == library and len(builds) == 1


def test_gpu_precision_note_follows_pytorch_flags(monkeypatch):
    """The CUDA table says whether PyTorch used TF32 tensor cores (its default for convolutions)."""
    import torch

    from parcnet_tvm.bench.report import torch_gpu_precision

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    assert torch_gpu_precision() == "PyTorch convolutions TF32, matmuls fp32; TVM fp32"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert torch_gpu_precision().startswith("PyTorch convolutions fp32")


def _needs_peers():
    """Skip unless every peer is installed; find_spec, not import: importing openvino here would
    send its usage event, and MNN prints to stdout."""
    for module in ("openvino", "MNN", "ncnn", "pnnx"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[bench]')")


def test_peers_match_pytorch_and_are_timed_in_alternating_rounds(tmp_path):
    """OpenVINO, MNN and ncnn: output within 1e-4 of PyTorch's, one busy thread at --threads 1,
    the median of 2 rounds' medians; none of it imports MNN.tools, runs pip or goes online."""
    from parcnet_tvm.bench import DEFAULT_BACKENDS

    _needs_peers()
    x86 = DEFAULT_BACKENDS["x86"]
    assert x86[x86.index("onnxruntime") + 1:][:3] == PEERS and set(ORIGINAL) <= set(x86)
    env, guard_log = guarded_env(tmp_path)
    out = tmp_path / "peers.json"
    done = run_script("bench.py", "--model", "xt", "--input-size", SMALL, "--backends", *PEERS, "--threads", 1,
                      "--rounds", 2, "--repeat", 3, "--max-seconds", 5, "--json", out, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not guard_log.exists(), guard_log.read_text()
    rows = {r["backend"]: r for r in json.loads(out.read_text())}
    assert set(rows) == set(PEERS)
    for name, row in rows.items():
        assert not row.get("skipped"), (name, row.get("skipped"))
        assert row["max_abs_error"] <= 1e-4 and row["peak_mem_mb"] > 0, (name, row)
        assert row["busy_threads"] == 1, (name, row["busy_threads"])  # each honours --threads 1
        assert len(row["round_medians_ms"]) == 2
        assert row["median_ms"] == pytest.approx(float(np.median(row["round_medians_ms"])), rel=1e-3)
    assert "2 alternating rounds" in done.stdout and "| parcnetv2_xt | 1 | ncnn |" in done.stdout


def test_peers_are_x86_only_and_say_what_is_missing(monkeypatch):
    from parcnet_tvm.bench import missing_backend

    assert "bench reaches the board through TVM's RPC" in missing_backend("mnn", "arm")
    assert "x86 only" in missing_backend("openvino", "cuda")
    assert "time ncnn at --batch 1" in missing_backend("ncnn", "x86", batch=2)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pnnx" else find_spec(name, *a))
    assert missing_backend("ncnn") == "pnnx (converts the model for ncnn) is not installed (pip install -e '.[bench]', " \
        "which pins it)"


def test_mnn_conversion_never_imports_mnn_tools_or_runs_pip(tmp_path):
    """Importing parcnet_tvm.bench and converting to MNN's format (fresh, in an empty build/bench/)
    under GUARD: nothing refused, MNN.tools never loaded. The same guard does refuse
    `import MNN.tools` and a pip command, so this test would fail if bench did either."""
    _needs_peers()
    env, guard_log = guarded_env(tmp_path)
    env = {**os.environ, **env}
    code = ("import sys; import parcnet_tvm.bench; from parcnet_tvm.bench.backends import BenchCase\n"
            "from parcnet_tvm.bench.peers import prepare_mnn\n"
            f"path = prepare_mnn(BenchCase('xt', 1, ({SMALL}, {SMALL})), print)\n"
            "print(path.stat().st_size > 0, any(m.startswith('MNN.tools') for m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["True", "False"] and (tmp_path / "build" / "bench").is_dir()
    assert not guard_log.exists(), guard_log.read_text()
    for attempt in ("import MNN.tools", "import subprocess; subprocess.run(['pip', '--version'])"):
        done = subprocess.run([sys.executable, "-c", attempt], cwd=tmp_path, env=env, capture_output=True,
                              text=True, check=False)
        assert done.returncode != 0 and "guard refused" in done.stderr, (attempt, done.stderr)
    assert guard_log.read_text().splitlines() == ["import MNN.tools", "run pip ['pip', '--version']"]
