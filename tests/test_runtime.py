"""runtime.py: where an ARM library runs here, the emulated board (qemu): the cross-built
runtime, the runner, the RPC server."""

import time

import numpy as np
import pytest
from support import needs_arm_toolchain, run_script

from parcnet_tvm import ParcnetError
from parcnet_tvm import runtime as arm_runtime
from parcnet_tvm.board import free_port, start_tracker, stop
from parcnet_tvm.verify import reference_input

pytestmark = needs_arm_toolchain


def test_runtime_build_is_cached(runtime):
    start = time.perf_counter()
    assert arm_runtime.build_runtime(log=lambda *_: None) == runtime
    assert time.perf_counter() - start < 5


def test_arm_library_matches_pytorch_under_qemu(xt_arm):
    _, manifest = xt_arm
    check = manifest["verification"]
    assert check["status"] == "passed", check
    assert check["max_abs_error"] <= 1e-4 and "qemu-arm" in check["ran_on"]
    library, _ = xt_arm
    done = run_script("verify.py", library)
    assert done.returncode == 0, done.stderr


def test_runner_reports_bad_inputs(xt_arm, runtime, tmp_path, xt_small_x86):
    library, manifest = xt_arm
    missing = arm_runtime.run_runner(library, ["--input", str(tmp_path / "nope.raw")], runtime)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    short = tmp_path / "short.raw"
    np.zeros(10, np.float32).tofile(short)
    wrong = arm_runtime.run_runner(library, ["--input", str(short)], runtime)
    assert wrong.returncode == 1 and "has 40 bytes; the model takes 49152" in wrong.stderr
    x86_library, _ = xt_small_x86
    good = tmp_path / "x.raw"
    reference_input(manifest["input_shape"]).tofile(good)
    foreign = arm_runtime.run_runner(x86_library, ["--input", str(good)], runtime)
    assert foreign.returncode == 1 and "cannot load" in foreign.stderr
    no_lib = arm_runtime.run_runner(tmp_path / "none.so", ["--input", str(good)], runtime)
    assert no_lib.returncode == 1 and "does not exist" in no_lib.stderr
    lonely = tmp_path / "lonely.so"  # a library without the manifest that says its contract
    lonely.write_bytes(library.read_bytes())
    no_manifest = arm_runtime.run_runner(lonely, ["--input", str(good)], runtime)
    assert no_manifest.returncode == 1 and f"no manifest {tmp_path / 'lonely.json'}" in no_manifest.stderr
    lonely.with_suffix(".json").write_bytes(library.with_suffix(".json").read_bytes())  # but no weights file
    no_weights = arm_runtime.run_runner(lonely, ["--input", str(good)], runtime)
    assert no_weights.returncode == 1 and f"no weights file {tmp_path / 'lonely.params'}" in no_weights.stderr
    bad_count = arm_runtime.run_runner(library, ["--input", str(good), "--threads", "four"], runtime)
    assert bad_count.returncode == 1 and "--threads takes a count" in bad_count.stderr
    for done in (missing, wrong, foreign, no_lib, no_manifest, no_weights, bad_count):
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_runner_repeat_prints_latency_stats(xt_arm, runtime, tmp_path):
    library, manifest = xt_arm
    raw = tmp_path / "x.raw"
    reference_input(manifest["input_shape"]).tofile(raw)
    out = tmp_path / "y.raw"
    done = arm_runtime.run_runner(library, ["--input", str(raw), "--output", str(out), "--repeat", "2"], runtime)
    assert done.returncode == 0, done.stderr
    assert "median" in done.stdout and "p90" in done.stdout
    assert np.fromfile(out, np.float32).shape == (1000,)


def test_emulated_libraries_are_never_timed(xt_arm):
    from parcnet_tvm.bench.compare import compare_with_pytorch

    library, manifest = xt_arm
    with pytest.raises(ParcnetError, match="emulated time is not latency"):
        compare_with_pytorch(library, manifest)


def test_rpc_server_under_qemu_through_tracker(xt_arm, runtime):
    import tvm
    from tvm import rpc

    from parcnet_tvm.params import LibraryVM
    from parcnet_tvm.params import load as load_weights

    library, manifest = xt_arm
    tracker_port = free_port()
    tracker = start_tracker(tracker_port)
    server = arm_runtime.start_rpc_server(port=free_port(), tracker=f"127.0.0.1:{tracker_port}", key="qemu-board")
    try:
        deadline = time.time() + 120
        while True:
            try:
                remote = rpc.connect_tracker("127.0.0.1", tracker_port).request("qemu-board", session_timeout=300)
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(2)
        remote.upload(str(library))
        lib = remote.load_module(library.name)
        device = remote.cpu()
        # the weights travel as tensors, as bench's time_on_board sends them
        weights = [tvm.runtime.tensor(w.numpy(), device) for w in load_weights(library)]
        vm = LibraryVM(lib, device, weights)
        x = reference_input(manifest["input_shape"])
        vm.set_input("main", tvm.runtime.tensor(x, device))
        vm.invoke_stateful("main")
        out = vm.get_outputs("main").numpy()
        from parcnet_tvm.verify import pytorch_output
        from parcnet_tvm.weights import model_from_manifest

        assert np.abs(out - pytorch_output(model_from_manifest(manifest), x)).max() <= 1e-4
        timer = vm.time_evaluator("invoke_stateful", device, number=1, repeat=1)
        assert timer("main").mean > 0  # emulated: a pipeline check, never reported as latency
        # tuning trials' inputs: our server has no tvm.contrib.random, so they are filled from here
        from parcnet_tvm.tuning.measurement import _alloc_on_board

        [[filled]] = _alloc_on_board(remote, device, [["TENSOR", "float32", [2, 8]]], 1)
        values = filled.numpy()
        assert values.shape == (2, 8) and np.abs(values).max() <= 1 and np.unique(values).size > 1
    finally:
        stop(server)
        stop(tracker)


def _up(port: int, deadline: float) -> None:
    """Wait until something accepts TCP connections on the loopback port (qemu starts slowly)."""
    import socket

    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            return
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(1)


def test_rpc_server_listens_where_told_and_serves_only_allowed_clients(runtime):
    """TVM RPC runs whatever code a client sends: --bind says where the server listens (loopback
    by default when serving directly) and --allow refuses other clients before the handshake."""
    import subprocess

    from tvm import rpc

    server = [*arm_runtime.qemu_prefix(runtime), str(runtime / "parcnet_rpc_server")]
    for args, message in ((["--bind", "board"], "--bind takes an IPv4 address"),
                          (["--allow", "10.0.0"], "--allow takes IPv4 addresses")):
        done = subprocess.run([*server, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    refused_port, served_port = free_port(), free_port()
    refusing = arm_runtime.start_rpc_server(port=refused_port, runtime=runtime, allow=["10.9.9.9"])
    serving = arm_runtime.start_rpc_server(port=served_port, runtime=runtime, allow=["127.0.0.1"])
    try:
        deadline = time.time() + 120
        _up(refused_port, deadline)
        _up(served_port, deadline)
        with pytest.raises((RuntimeError, OSError)):
            rpc.connect("127.0.0.1", refused_port, session_timeout=30)
        remote = rpc.connect("127.0.0.1", served_port, session_timeout=60)
        assert remote.cpu().exist
    finally:
        stop(refusing)
        stop(serving)
    refused_log, served_log = refusing.stdout.read(), serving.stdout.read()
    assert "listening on 127.0.0.1:" in refused_log and "refused a client from 127.0.0.1 (not in --allow)" in refused_log
    assert "session started" in served_log and "refused" not in served_log
