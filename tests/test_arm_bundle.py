"""The ARM bundle on the emulated board: runtime, runner, verification under qemu, RPC."""

import re
import subprocess
import time

import numpy as np
import pytest
from support import SMALL, free_port, needs_arm_toolchain, run_script

from parcnet_tvm import ParcnetError
from parcnet_tvm import runtime as arm_runtime
from parcnet_tvm.board import start_tracker, stop
from parcnet_tvm.build import BuildRequest, build_library
from parcnet_tvm.verify import reference_input

pytestmark = needs_arm_toolchain


@pytest.fixture(scope="session")
def runtime():
    """The cross-built runtime (scripts/setup.sh builds it; cached afterwards)."""
    out = arm_runtime.build_runtime(log=lambda *_: None)
    for name in arm_runtime.LIBRARIES + arm_runtime.PROGRAMS:
        assert "ARM, EABI5" in subprocess.run(["file", str(out / name)], capture_output=True, text=True).stdout
    return out


@pytest.fixture(scope="session")
def xt_arm(runtime, tmp_path_factory):
    """XT at 64 built for ARM; build.py verifies it under qemu right away."""
    out = tmp_path_factory.mktemp("arm") / "xt_arm.so"
    manifest = build_library(BuildRequest(model="xt", target="arm", input_size=SMALL, output=str(out)),
                             log=lambda *_: None)
    return out, manifest


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


def test_bundle_runner_top5_equals_pytorch(xt_arm, tmp_path):
    library, _ = xt_arm
    done = run_script("package_arm.py", library, "-o", tmp_path / "bundle", "--check")
    assert done.returncode == 0, done.stderr
    assert "(equal)" in done.stdout
    files = {p.name for p in (tmp_path / "bundle").iterdir()}
    assert {"xt_arm.so", "xt_arm.json", "README.md", *arm_runtime.LIBRARIES, *arm_runtime.PROGRAMS} <= files
    assert "glibc >= 2.34" in (tmp_path / "bundle" / "README.md").read_text()


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
    foreign = arm_runtime.run_runner(x86_library, ["--input", str(good), "--shape", "1,3,64,64"], runtime)
    assert foreign.returncode == 1 and "cannot load" in foreign.stderr
    no_lib = arm_runtime.run_runner(tmp_path / "none.so", ["--input", str(good), "--shape", "1,3,64,64"], runtime)
    assert no_lib.returncode == 1 and "does not exist" in no_lib.stderr


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
    from tvm.runtime import vm as tvm_vm

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
        vm = tvm_vm.VirtualMachine(lib, device)
        x = reference_input(manifest["input_shape"])
        vm.set_input("main", tvm.runtime.tensor(x, device))
        vm.invoke_stateful("main")
        out = vm.get_outputs("main").numpy()
        from parcnet_tvm.verify import pytorch_output
        from parcnet_tvm.weights import model_from_manifest

        assert np.abs(out - pytorch_output(model_from_manifest(manifest), x)).max() <= 1e-4
        timer = vm.time_evaluator("invoke_stateful", device, number=1, repeat=1)
        assert timer("main").mean > 0  # emulated: a pipeline check, never reported as latency
    finally:
        stop(server)
        stop(tracker)


def _imagenet_preprocess(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """What the runner does to an image: shorter side to size/0.875, centre crop, normalise."""
    h, w, _ = image.shape
    scale = max(height / 0.875 / h, width / 0.875 / w)
    crop_y, crop_x = (h * scale - height) / 2, (w * scale - width) / 2
    sy = np.clip((np.arange(height) + crop_y + 0.5) / scale - 0.5, 0, h - 1)
    sx = np.clip((np.arange(width) + crop_x + 0.5) / scale - 0.5, 0, w - 1)
    y0, x0 = sy.astype(int), sx.astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    dy, dx = (sy - y0)[:, None, None], (sx - x0)[None, :, None]
    img = image.astype(np.float64)
    out = (img[y0][:, x0] * (1 - dx) + img[y0][:, x1] * dx) * (1 - dy) + \
          (img[y1][:, x0] * (1 - dx) + img[y1][:, x1] * dx) * dy
    out = (out / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    return out.transpose(2, 0, 1)[None].astype(np.float32)


def test_runner_preprocesses_images_like_imagenet_eval(xt_arm, runtime, tmp_path):
    library, _ = xt_arm
    image = np.random.default_rng(5).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    ppm = tmp_path / "image.ppm"
    ppm.write_bytes(b"P6 120 90 255\n" + image.tobytes())
    from_image, from_raw = tmp_path / "a.raw", tmp_path / "b.raw"
    done = arm_runtime.run_runner(library, ["--input", str(ppm), "--output", str(from_image)], runtime)
    assert done.returncode == 0, done.stderr
    raw = tmp_path / "x.raw"
    _imagenet_preprocess(image, SMALL, SMALL).tofile(raw)
    done = arm_runtime.run_runner(library, ["--input", str(raw), "--output", str(from_raw)], runtime)
    assert done.returncode == 0, done.stderr
    assert np.abs(np.fromfile(from_image, np.float32) - np.fromfile(from_raw, np.float32)).max() <= 1e-4
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    refused = arm_runtime.run_runner(library, ["--input", str(bad)], runtime)
    assert refused.returncode == 1 and "not a readable image" in refused.stderr


def _functions(disassembly: str) -> dict[str, list[tuple[int, str]]]:
    """{symbol: [(address, instruction)]} from `objdump -d --no-show-raw-insn`."""
    functions, current = {}, None
    for line in disassembly.splitlines():
        if line.endswith(">:"):
            current = functions.setdefault(line.split("<")[1][:-2], [])
        elif current is not None and ":\t" in line:
            address, _, text = line.strip().partition(":\t")
            current.append((int(address, 16), text.strip()))
    return functions


BRANCHES = {"b"} | {"b" + cc for cc in "eq ne cs hs cc lo mi pl vs vc hi ls ge lt gt le".split()}


def _innermost_fma_loops(body: list[tuple[int, str]]) -> list[list[str]]:
    """The instructions of each loop (a backward branch) that holds a q-register FMA and
    contains no smaller such loop."""
    ranges = []
    for address, text in body:
        op, _, operand = text.partition("\t")
        target = operand.split(" ")[0]
        if op in BRANCHES and re.fullmatch(r"[0-9a-f]+", target) and int(target, 16) < address:
            ranges.append((int(target, 16), address))
    loops = {r: [t for a, t in body if r[0] <= a <= r[1]] for r in ranges}
    with_fma = [r for r, loop in loops.items() if any(re.match(r"v(fma|mla)\.f32\s+q", t) for t in loop)]
    innermost = [r for r in with_fma if not any(o != r and r[0] <= o[0] and o[1] <= r[1] for o in with_fma)]
    return [loops[r] for r in innermost]


def test_arm_hot_loops_use_neon_fmas_and_the_gemm_loop_never_spills(xt_arm):
    """The NEON variant of every rule, read from the ARM build: the GEMM, conv, depth-wise and
    oversized kernels' inner loops multiply-add on q registers, and the GEMM micro-kernel's
    inner loop keeps its accumulators in registers (no store, nothing read from the stack)."""
    library, manifest = xt_arm
    assert not [rule for rule in manifest["kernel_schedules"] if "fallback" in rule]
    disassembly = subprocess.run(["arm-linux-gnueabihf-objdump", "-d", "--no-show-raw-insn", str(library)],
                                 capture_output=True, text=True, check=True).stdout
    functions = _functions(disassembly)
    hot = {rule: manifest["kernel_schedules"][rule] for rule in
           ("cpu_gemm", "cpu_conv", "cpu_depthwise_conv", "oversized_conv")}
    for rule, kernels in hot.items():
        for kernel in kernels:
            body = next(b for name, b in functions.items() if name.startswith(kernel + "_compute"))
            width = re.search(r"_w(\d+)_", kernel)
            if width and int(width.group(1)) < 4:  # our op on a 2-wide map: 2-lane d-register FMAs
                assert any(re.match(r"vfma\.f32\s+d", t) for _, t in body), kernel
                continue
            loops = _innermost_fma_loops(body)
            assert loops, f"{rule}: {kernel} has no loop of q-register FMAs"
            if rule == "cpu_gemm":
                for loop in loops:
                    spills = [t for t in loop if re.match(r"(v?st|vpush|push)", t) or "[sp" in t]
                    assert not spills, f"{kernel}: the GEMM inner loop spills: {spills}"
