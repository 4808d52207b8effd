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


# ---- Issue 31: every argument and input file of the runner and the C API is checked with one
# line "error: <what is wrong>: <how to fix>"; the RPC server survives hostile bytes.

def _error_line_problem(done, expected: str) -> str | None:
    """None when `done` exited with status 1 and exactly one stderr line "error: <what>: <fix>"
    containing `expected`; else what differs."""
    lines = done.stderr.strip().splitlines()
    if done.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ") \
            and ": " in lines[0][len("error: "):] and expected in lines[0]:
        return None
    return f"expected {expected!r}: status {done.returncode}, stderr {done.stderr.strip()[-600:]!r}"


def _one_error_line(done, expected: str) -> None:
    problem = _error_line_problem(done, expected)
    assert problem is None, problem


def _model_copy(library, folder, manifest=None, params=None, so_bytes=None):
    """xt_arm.so with its manifest and weights in `folder` (the weights linked, unless `params`
    gives their bytes); `manifest` edits the manifest dict, or is the manifest's text."""
    import json

    folder.mkdir()
    copy = folder / library.name
    copy.write_bytes(library.read_bytes() if so_bytes is None else so_bytes)
    info = json.loads(library.with_suffix(".json").read_text())
    if callable(manifest):
        manifest(info)
    text = manifest if isinstance(manifest, str) else json.dumps(info)
    copy.with_suffix(".json").write_text(text)
    if params is None:
        copy.with_suffix(".params").symlink_to(library.with_suffix(".params"))
    else:
        copy.with_suffix(".params").write_bytes(params)
    return copy


def _cut_png(path, width=40, height=30):
    from support import write_test_image

    whole = write_test_image(path.with_name("whole.png"), width, height).read_bytes()
    path.write_bytes(whole[:len(whole) // 2])
    return path


def test_runner_and_c_api_refuse_bad_counts_and_files(xt_arm, runtime, tmp_path):
    """Counts that are not counts (zero, negative, huge, words), inputs that are not images or
    raw floats or are cut short, a cut or foreign library, a manifest that is not JSON, not an
    object or not this library's, weights cut short or of another library: each one line."""
    from concurrent.futures import ThreadPoolExecutor

    library, manifest = xt_arm
    good = tmp_path / "x.raw"
    reference_input(manifest["input_shape"]).tofile(good)
    noise = tmp_path / "noise.dat"
    noise.write_bytes(np.random.default_rng(31).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    cut_png = _cut_png(tmp_path / "cut.png")
    so, weights = library.read_bytes(), library.with_suffix(".params").read_bytes()
    size, tensors = len(weights), manifest["params"]["tensors"]

    def drop_params(info):
        del info["params"]

    def shape(info):
        info["input_shape"] = [1, 3, 0, 64]

    def null_names(info):
        info["output"]["class_names"] = None

    def no_size(info):  # a manifest that records neither the library's size nor its sha256
        del info["memory"], info["sha256"]

    copies = {
        "cut_so": _model_copy(library, tmp_path / "cut_so", so_bytes=so[:len(so) // 2]),
        "cut_so_bare": _model_copy(library, tmp_path / "cut_so_bare", manifest=no_size, so_bytes=so[:len(so) // 2]),
        "other_sha": _model_copy(library, tmp_path / "other_sha", manifest=lambda m: m.update(sha256="0" * 64)),
        "not_json": _model_copy(library, tmp_path / "not_json", manifest='{"input_shape": [1, 3, 64'),
        "not_object": _model_copy(library, tmp_path / "not_object", manifest="[1, 3, 64, 64]"),
        "bad_shape": _model_copy(library, tmp_path / "bad_shape", manifest=shape),
        "cut_params": _model_copy(library, tmp_path / "cut_params", params=weights[:size // 2]),
        "other_count": _model_copy(library, tmp_path / "other_count",
                                   manifest=lambda m: m["params"].update(tensors=tensors - 1)),
        "damaged_params": _model_copy(library, tmp_path / "damaged_params", manifest=drop_params,
                                      params=weights[:size // 2]),
        "null_names": _model_copy(library, tmp_path / "null_names", manifest=null_names),
    }
    cases = [  # (library, arguments, what the one line says)
        (library, ["--threads", "0"], '--threads takes a count from 1 to 64, not "0"'),
        (library, ["--threads", "1000"], '--threads takes a count from 1 to 64, not "1000"'),
        (library, ["--threads", "2.5"], '--threads takes a count from 1 to 64, not "2.5"'),
        (library, ["--repeat", "0"], '--repeat takes a count from 1 to 1000000, not "0"'),
        (library, ["--repeat", "-3"], '--repeat takes a count from 1 to 1000000, not "-3"'),
        (library, ["--top", "five"], '--top takes a count from 0 to 1000000, not "five"'),
        (library, ["--top", "99999999999"], '--top takes a count from 0 to 1000000, not "99999999999"'),
        (library, ["--input", str(tmp_path)], f"input {tmp_path} is not a file"),
        (library, ["--input", str(noise)], f"{noise} is not a readable image"),
        (library, ["--input", str(cut_png)], f"image {cut_png} cannot be decoded"),
        (library, ["--output", str(tmp_path / "none" / "y.raw")], "is in a folder that does not exist"),
        (copies["cut_so"], [], f"has {len(so) // 2} bytes but its manifest"),
        (copies["cut_so_bare"], [], f"is cut short ({len(so) // 2} bytes; its ELF headers need {len(so)})"),
        (copies["other_sha"], [], "does not match its manifest"),
        (copies["not_json"], [], "is not valid JSON"),
        (copies["not_object"], [], "is not a parcnet-tvm manifest"),
        (copies["bad_shape"], [], '"input_shape" is not 4 whole numbers'),
        (copies["cut_params"], [], f"has {size // 2} bytes but the manifest"),
        (copies["other_count"], [], f"holds {tensors} tensors but the manifest"),
        (copies["damaged_params"], [], "is damaged"),
    ]

    def run(case):
        lib, args, _ = case
        if "--input" not in args:
            args = ["--input", str(good), *args]
        return arm_runtime.run_runner(lib, args, runtime, timeout=600)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, cases))
        named = pool.submit(run, (copies["null_names"], [], None)).result()
    problems = [f"{lib.parent.name}/{lib.name} {args}: {problem}" for (lib, args, expected), done in zip(cases, results)
                if (problem := _error_line_problem(done, expected))]
    if named.returncode != 0:  # class_names null: a model without ImageNet's names
        problems.append(f"class_names null: {named.stderr.strip()}")
    assert not problems, "\n".join(problems)


C_API_CHECK = r"""
#include <stdio.h>
#include <stdlib.h>
#include "parcnet.h"

static void report(const char* name, int rc) { printf("%s %d %s\n", name, rc, rc ? parcnet_error() : ""); }

/* argv: MODEL.so FOLDER CUT.png */
int main(int argc, char** argv) {
  setvbuf(stdout, NULL, _IONBF, 0);
  parcnet_model* model = NULL;
  report("load_null", parcnet_load(NULL, NULL, &model));
  report("load", parcnet_load(argv[1], NULL, &model));
  if (model == NULL) return 1;
  int64_t in[4], out[2];
  parcnet_input_shape(model, in);
  parcnet_output_shape(model, out);
  size_t n_in = (size_t)(in[0] * in[1] * in[2] * in[3]), n_out = (size_t)(out[0] * out[1]), one = n_in / in[0];
  float* x = calloc(n_in, sizeof(float));
  float* y = calloc(n_out, sizeof(float));
  unsigned char rgb[12] = {0};
  report("threads_negative", parcnet_run(model, x, n_in, y, n_out, -1));
  report("threads_huge", parcnet_run(model, x, n_in, y, n_out, 1000));
  report("input_count", parcnet_run(model, x, n_in - 1, y, n_out, 0));
  report("rgb_huge", parcnet_preprocess_rgb(model, rgb, 1 << 16, 1 << 16, 3 << 16, x, one));
  report("rgb_stride", parcnet_preprocess_rgb(model, rgb, 2, 2, 5, x, one));
  report("file_folder", parcnet_preprocess_file(model, argv[2], x, one));
  report("file_cut_png", parcnet_preprocess_file(model, argv[3], x, one));
  report("run", parcnet_run(model, x, n_in, y, n_out, 1));
  parcnet_free(model);
  return 0;
}
"""


def test_c_api_refuses_bad_arguments(xt_arm, runtime, tmp_path):
    """The C API directly (what the runner cannot pass): thread counts out of range, an image
    geometry of gigabytes, a folder and a cut PNG as image files; each -1 with one line, and
    the model still runs afterwards."""
    import os
    import re
    import subprocess
    import sys

    library, _ = xt_arm
    source, program = tmp_path / "check.c", tmp_path / "check"
    source.write_text(C_API_CHECK)
    done = subprocess.run([str(arm_runtime.SOURCE_DIR / "zig" / "cc"), "-O1", str(source), f"-I{arm_runtime.SOURCE_DIR}",
                           f"-L{runtime}", "-lparcnet", f"-Wl,-rpath,{runtime}", "-o", str(program)],
                          capture_output=True, text=True, env={**os.environ, "PARCNET_PYTHON": sys.executable},
                          check=False)
    assert done.returncode == 0, done.stderr
    cut_png = _cut_png(tmp_path / "cut.png")
    done = subprocess.run(arm_runtime.qemu_prefix(runtime) + [str(program), str(library), str(tmp_path), str(cut_png)],
                          capture_output=True, text=True, timeout=600, check=False)
    rows = {m[1]: (int(m[2]), m[3]) for m in re.finditer(r"^(\w+) (-?\d+) (.*)$", done.stdout, re.MULTILINE)}
    expected = {
        "load_null": "parcnet_load: library_path and out must not be NULL",
        "threads_negative": "parcnet_run: num_threads is -1: give 0 (keep the current threads) or 1 to 64",
        "threads_huge": "parcnet_run: num_threads is 1000: give 0",
        "input_count": "floats; the model takes 12288 (float32 1x3x64x64): pass the whole input shape",
        "rgb_huge": "the image is 65536x65536 pixels, more than the 64 megapixels allowed: downscale it first",
        "rgb_stride": "bad image geometry (width 2, height 2, row_stride 5): give width, height > 0",
        "file_folder": f"image {tmp_path} is not a file: give a JPEG, PNG, BMP or PPM file",
        "file_cut_png": f"image {cut_png} cannot be decoded",
    }
    problems = [f"{name}: {rows.get(name)}" for name, message in expected.items()
                if name not in rows or rows[name][0] != -1 or message not in rows[name][1]]
    problems += [f"{name}: {rows.get(name)}" for name in ("load", "run") if rows.get(name) != (0, "")]
    assert done.returncode == 0 and not problems and done.stderr.strip() == "", \
        "\n".join(problems) + f"\nstatus {done.returncode}\n{done.stdout}{done.stderr}"


def test_rpc_server_refuses_bad_numbers(runtime):
    import subprocess

    server = [*arm_runtime.qemu_prefix(runtime), str(runtime / "parcnet_rpc_server")]
    for args, message in ((["--port", "http"], '--port takes a port from 1 to 65535, not "http"'),
                          (["--port", "70000"], '--port takes a port from 1 to 65535, not "70000"'),
                          (["--port", "9100", "--port-end", "9000"], "--port-end 9000 is below --port 9100"),
                          (["--tracker", "127.0.0.1:x", "--key", "k"], "--tracker's port takes a port")):
        _one_error_line(subprocess.run([*server, *args], capture_output=True, text=True, timeout=120, check=False), message)


RPC_MAGIC = 0xFF271


def _fuzz_payloads(seed: int = 31) -> list[tuple[str, bytes]]:
    """~30 hostile or broken openings of a TVM RPC connection (the handshake: int32 magic,
    int32 key length, key; then the session's first packet: uint64 length, int32 code)."""
    import random
    import struct

    rng = random.Random(seed)
    magic = struct.pack("<i", RPC_MAGIC)
    handshake = magic + struct.pack("<i", 7) + b"client:"
    payloads = [(f"random {n} bytes", rng.randbytes(n)) for n in [0, 1, 3] + [rng.randrange(4, 4097) for _ in range(13)]]
    payloads += [
        ("magic then garbage", magic + rng.randbytes(64)),
        ("huge key length", magic + struct.pack("<i", 0x7FFFFFFF)),
        ("negative key length", magic + struct.pack("<i", -1)),
        ("1 MiB key length", magic + struct.pack("<i", 1 << 20) + b"x" * 100),
        ("magic cut short", magic[:2]),
        ("key length cut short", magic + b"\x07\x00"),
        ("key cut short", magic + struct.pack("<i", 100) + b"client:"),
        ("wrong key", magic + struct.pack("<i", 9) + b"server:xx"),
        ("bad session timeout", magic + struct.pack("<i", 20) + b"client: -timeout=nan"),
        ("handshake then garbage", handshake + rng.randbytes(256)),
        ("handshake then huge packet", handshake + struct.pack("<Qi", 0xFFFFFFF0, 2)),
        ("handshake then unknown code", handshake + struct.pack("<Qi", 16, 99) + bytes(12)),
        ("handshake then close", handshake),
    ]
    return payloads


def _closed_by_server(sock, within: float) -> bool:
    """Whether the server closes `sock` within `within` seconds (what it read is discarded)."""
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:  # reset: closed with our bytes unread
        pass
    return True


def test_rpc_server_survives_hostile_bytes(runtime):
    """One emulated server takes ~30 broken or hostile openings (seeded random bytes, cut
    handshakes, huge lengths, garbage after a good handshake) and two silent clients, each
    dropped with one log line, and a session that starts as TVM's and then breaks (its process
    ends, not the server's loop); then it serves a real TVM RPC session."""
    import socket
    import struct

    from tvm import rpc

    port = free_port()
    server = arm_runtime.start_rpc_server(port=port, runtime=runtime, allow=["127.0.0.1"])
    payloads = _fuzz_payloads()
    idle = []
    try:
        _up(port, time.time() + 120)
        # silent clients first: one sends nothing, one stops after a good handshake
        idle.append(socket.create_connection(("127.0.0.1", port)))
        idle.append(socket.create_connection(("127.0.0.1", port)))
        idle[1].sendall(struct.pack("<ii", RPC_MAGIC, 7) + b"client:")
        for name, payload in payloads:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                try:
                    sock.sendall(payload)
                    if name != "handshake then close":
                        sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass  # dropped while sending
                if name != "handshake then close":
                    assert _closed_by_server(sock, 30), f"the server still holds the connection of: {name}"
        # a plain handshake is answered at once; then a real session works
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(struct.pack("<ii", RPC_MAGIC, 7) + b"client:")
            reply = b""
            while len(reply) < 15:  # success, the server's key length, "server:"
                reply += sock.recv(15 - len(reply))
            assert struct.unpack("<ii", reply[:8]) == (RPC_MAGIC, 7) and reply[8:] == b"server:"
            sock.shutdown(socket.SHUT_WR)
            assert _closed_by_server(sock, 30)
        # a session start as TVM's (kInitServer, 112 bytes) cut after 14: the session's process ends
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(struct.pack("<ii", RPC_MAGIC, 7) + b"client:" + struct.pack("<Qi", 112, 2) + bytes(10))
            sock.shutdown(socket.SHUT_WR)
            assert _closed_by_server(sock, 60)
        remote = rpc.connect("127.0.0.1", port, session_timeout=60)
        assert remote.cpu().exist
        assert server.poll() is None
    finally:
        for sock in idle:
            sock.close()
        stop(server)
    log = server.stdout.read()
    assert log.count("listening on") == 1 and "starting over" not in log, log
    # + _up's probe, the two silent clients and the plain handshake
    assert log.count("dropped a client from 127.0.0.1: ") == len(payloads) + 4, log
    assert log.count(": no complete handshake within 5 s") == 2, log
    for reason in ("not a TVM RPC client", "length 2147483647 is outside 0..4096", "length -1 is outside",
                   "its key does not match", "its -timeout is not a number", "its first packet is not a TVM session start",
                   "it closed before its session began", "connection closed while receiving"):
        assert reason in log, (reason, log)
    assert log.count("session started") == 2 and log.count("session ended: ") == 1, log
    assert log.index("session ended: ") < log.index("session finished") < log.rindex("session started"), log
