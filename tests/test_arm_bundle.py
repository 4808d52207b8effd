"""arm_bundle.py: the ARM bundle (library, runtime, runner, README), its top-5 check under qemu,
the runner's image preprocessing, and the NEON code of the library it ships."""

import re
import subprocess

import numpy as np
from support import SMALL, needs_arm_toolchain, run_script

from parcnet_tvm import runtime as arm_runtime

pytestmark = needs_arm_toolchain


def test_bundle_runner_top5_equals_pytorch(xt_arm, tmp_path):
    library, _ = xt_arm
    done = run_script("package_arm.py", library, "-o", tmp_path / "bundle", "--check")
    assert done.returncode == 0, done.stderr
    assert "(equal)" in done.stdout
    files = {p.name for p in (tmp_path / "bundle").iterdir()}
    assert {"xt_arm.so", "xt_arm.json", "README.md", "parcnet-rpc.service", "LICENSE", "NOTICE",
            *arm_runtime.LIBRARIES, *arm_runtime.PROGRAMS} <= files
    assert "libc++" in (tmp_path / "bundle" / "NOTICE").read_text()
    readme = (tmp_path / "bundle" / "README.md").read_text()
    assert "glibc >= 2.17" in readme and "trusted network only" in readme and "--repeat" in readme
    unit = (tmp_path / "bundle" / "parcnet-rpc.service").read_text()
    assert "ExecStart=/opt/bundle/parcnet_rpc_server --tracker HOST_IP:9190" in unit and "Restart=always" in unit


def test_every_file_of_the_bundle_runs_on_glibc_2_17_without_libstdcxx(xt_arm, tmp_path):
    """Old vendor images (TinkerOS, Firefly's Ubuntu 16.04: glibc 2.23-2.28) run the bundle: no
    ELF in it asks for a glibc symbol version newer than 2.17 or for a shared libstdc++."""
    from parcnet_tvm.arm_bundle import package

    library, _ = xt_arm
    bundle, _ = package(library, tmp_path / "bundle")
    elves = [p for p in bundle.iterdir() if p.read_bytes()[:4] == b"\x7fELF"]
    assert {p.name for p in elves} == {library.name, *arm_runtime.LIBRARIES, *arm_runtime.PROGRAMS}
    for elf in elves:
        dynamic = subprocess.run(["arm-linux-gnueabihf-readelf", "--dynamic", "--version-info", "--wide", elf],
                                 capture_output=True, text=True, check=True).stdout
        needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dynamic))
        assert needed and not {n for n in needed if "stdc++" in n or "c++" in n}, (elf.name, needed)
        versions = {tuple(map(int, v.split("."))) for v in re.findall(r"GLIBC_(\d+(?:\.\d+)+)", dynamic)}
        assert max(versions, default=(0,)) <= (2, 17), (elf.name, max(versions))
        assert versions or elf.name == library.name  # the runtime's files do ask for versioned glibc symbols
        assert "GLIBCXX" not in dynamic and "CXXABI" not in dynamic, elf.name


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


def test_packaging_a_missing_library_says_so(tmp_path):
    done = run_script("package_arm.py", tmp_path / "nope.so", "-o", tmp_path / "bundle")
    assert done.returncode == 2 and f"library {tmp_path / 'nope.so'} does not exist" in done.stderr
    assert not (tmp_path / "bundle").exists()
