"""arm_bundle.py: the ARM bundle (library, runtime, runner, README), its top-5 check under qemu,
the runner's image preprocessing, and the NEON code of the library it ships."""

import os
import re
import shutil
import subprocess
import sys

import pytest
from support import (
    needs_arm_toolchain,
    one_line,
    pil_eval_preprocess,
    run_script,
    script_main,
    write_test_image,
)

from parcnet_tvm import ParcnetError
from parcnet_tvm import runtime as arm_runtime

pytestmark = needs_arm_toolchain


def test_bundle_runner_top5_equals_pytorch(xt_arm, tmp_path):
    library, _ = xt_arm
    done = run_script("package_arm.py", library, "-o", tmp_path / "bundle", "--check")
    assert done.returncode == 0, done.stderr
    assert "(equal)" in done.stdout
    files = {p.name for p in (tmp_path / "bundle").iterdir()}
    assert {"xt_arm.so", "xt_arm.params", "xt_arm.json", "README.md", "parcnet-rpc.service", "LICENSE", "NOTICE", "parcnet.h",
            "imagenet_classes.txt", "example", *arm_runtime.LIBRARIES, *arm_runtime.PROGRAMS} <= files
    assert "libc++" in (tmp_path / "bundle" / "NOTICE").read_text()
    readme = (tmp_path / "bundle" / "README.md").read_text()
    assert "glibc >= 2.17" in readme and "trusted network only" in readme and "--repeat" in readme
    unit = (tmp_path / "bundle" / "parcnet-rpc.service").read_text()
    assert "ExecStart=/opt/bundle/parcnet_rpc_server --tracker HOST_IP:9190" in unit and "Restart=always" in unit
    assert "--allow HOST_IP" in unit and "--bind BOARD_IP --allow HOST_IP" in readme


def test_every_file_of_the_bundle_runs_on_glibc_2_17_without_libstdcxx(xt_arm, tmp_path):
    """Old vendor images (TinkerOS, Firefly's Ubuntu 16.04: glibc 2.23-2.28) run the bundle: no
    ELF in it asks for a glibc symbol version newer than 2.17 or for a shared libstdc++."""
    from parcnet_tvm.arm_bundle import package

    library, _ = xt_arm
    bundle, _ = package(library, tmp_path / "bundle")
    elves = [p for p in bundle.iterdir() if p.is_file() and p.read_bytes()[:4] == b"\x7fELF"]
    assert {p.name for p in elves} == {library.name, *arm_runtime.LIBRARIES, *arm_runtime.PROGRAMS}
    for elf in elves:
        _check_old_glibc_without_libstdcxx(elf, versioned=elf.name != library.name)


def _check_old_glibc_without_libstdcxx(elf, versioned=True):
    """`elf` asks for no glibc symbol version newer than 2.17 and for no shared libstdc++/libc++
    (the runtime's files do ask for versioned glibc symbols; the model library may not)."""
    dynamic = subprocess.run(["arm-linux-gnueabihf-readelf", "--dynamic", "--version-info", "--wide", elf],
                             capture_output=True, text=True, check=True).stdout
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dynamic))
    assert needed and not {n for n in needed if "stdc++" in n or "c++" in n}, (elf.name, needed)
    versions = {tuple(map(int, v.split("."))) for v in re.findall(r"GLIBC_(\d+(?:\.\d+)+)", dynamic)}
    assert max(versions, default=(0,)) <= (2, 17), (elf.name, max(versions))
    assert versions or not versioned, elf.name
    assert "GLIBCXX" not in dynamic and "CXXABI" not in dynamic, elf.name


def test_c_example_cross_built_against_the_bundle_prints_pytorchs_top5_with_names(xt_arm, tmp_path):
    """The bundle's example/ (C API, parcnet.h + libparcnet.so), cross-built with its CMake
    file and the runtime's toolchain, run under qemu on an image: its top-5 classes, logits
    (<= 1e-4) and names are PyTorch's on the same image preprocessed by PIL."""
    from parcnet_tvm.arm_bundle import package
    from parcnet_tvm.input_contract import class_names
    from parcnet_tvm.verify import reference_output
    from parcnet_tvm.weights import model_from_manifest

    library, manifest = xt_arm
    bundle, _ = package(library, tmp_path / "bundle")
    build, env = tmp_path / "build", {**os.environ, "PARCNET_PYTHON": sys.executable}
    toolchain = arm_runtime.SOURCE_DIR / "zig-toolchain.cmake"
    for step in (["-S", bundle / "example", "-B", build, "-G", "Ninja", f"-DCMAKE_TOOLCHAIN_FILE={toolchain}"],
                 ["--build", build]):
        done = subprocess.run([shutil.which("cmake"), *map(str, step)], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
    _check_old_glibc_without_libstdcxx(build / "classify")

    image = write_test_image(tmp_path / "photo.png", 120, 90)
    done = subprocess.run(arm_runtime.qemu_prefix(None) + [str(build / "classify"), str(bundle / library.name),
                                                           str(image)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    printed = [line.split(" ", 2) for line in done.stdout.splitlines()]
    contract = manifest["input"]
    x = pil_eval_preprocess(image, contract["crop"], contract["resize"]["shorter_side"])[None]
    expected = reference_output(model_from_manifest(manifest), x)[0]
    top5 = [int(i) for i in (-expected).argsort(kind="stable")[:5]]
    assert [int(index) for index, _, _ in printed] == top5
    assert max(abs(float(logit) - expected[int(index)]) for index, logit, _ in printed) <= 1e-4
    assert [name for _, _, name in printed] == [class_names()[i] for i in top5]


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


def test_arm_hot_loops_use_neon_fmas_and_the_gemm_micro_kernel_loads_once_per_six_multiply_adds(xt_arm):
    """The NEON variant of every rule, read from the ARM build: the conv, depth-wise and
    oversized kernels' inner loops multiply-add on q registers; every GEMM kernel calls our
    micro-kernel, whose inner loop multiply-adds by lane (`vmla.f32 q, q, d[x]`), loads one
    SIMD register group per 6 of them and keeps everything in registers (no store, nothing
    read from the stack); so does our depth-wise kernel (20 loads per 49 multiply-adds), and our
    GELU kernels keep the fast erf's constants in registers."""
    library, manifest = xt_arm
    assert not [rule for rule in manifest["kernel_schedules"] if "fallback" in rule]
    disassembly = subprocess.run(["arm-linux-gnueabihf-objdump", "-d", "--no-show-raw-insn", str(library)],
                                 capture_output=True, text=True, check=True).stdout
    functions = _functions(disassembly)
    hot = {rule: manifest["kernel_schedules"][rule] for rule in
           ("cpu_gemm", "neon_gelu", "cpu_depthwise_conv", "oversized_conv")}
    for rule, kernels in hot.items():
        for kernel in kernels:
            body = next(b for name, b in functions.items() if name.startswith(kernel + "_compute"))
            if rule in ("cpu_gemm", "neon_gelu"):  # calls our kernel
                symbol = ("parcnet_sgemm_6x8_packed" if rule == "cpu_gemm" else
                          "parcnet_gelu_gate_rows" if "_gate_" in kernel else "parcnet_gelu_rows")
                assert any(re.match(rf"blx?\s+[0-9a-f]+ <{symbol}(@plt)?>", t) for _, t in body), kernel
                continue
            width = re.search(r"_w(\d+)_", kernel)
            if width and int(width.group(1)) < 4:  # our op on a 2-wide map: 2-lane d-register FMAs
                assert any(re.match(r"vfma\.f32\s+d", t) for _, t in body), kernel
                continue
            assert _innermost_fma_loops(body), f"{rule}: {kernel} has no loop of q-register FMAs"
    (loop,) = _innermost_fma_loops(functions["parcnet_sgemm_6x8_packed"])
    by_lane = [t for t in loop if re.match(r"vmla\.f32\s+q\d+, q\d+, d\d+\[[01]\]", t)]
    loads = [t for t in loop if t.startswith("vld")]
    spills = [t for t in loop if re.match(r"(v?st|vpush|push)", t) or "[sp" in t]
    assert len(by_lane) >= 12 and len(loads) * 6 <= len(by_lane) and not spills, loop
    # The depth-wise kernel (linked into every ARM library; XT at 64 has no conv it takes): per
    # kernel row, 7 weight and 13 input vectors loaded for 49 multiply-adds, nothing spilled;
    # it uses all 16 q registers, so it saves the callee-saved d8-d15 (AAPCS).
    assert any(re.match(r"vpush\s+\{d8-d15\}", t) for _, t in functions["parcnet_dwconv_7x7_x7"][:8])
    (loop,) = _innermost_fma_loops(functions["parcnet_dwconv_7x7_x7"])
    macs = [t for t in loop if re.match(r"vmla\.f32\s+q\d+, q\d+, q\d+$", t)]
    loads = [t for t in loop if t.startswith("vld")]
    spills = [t for t in loop if re.match(r"(v?st|vpush|push)", t) or "[sp" in t]
    assert len(macs) == 49 and len(loads) == 20 and not spills, loop
    # The GELU kernels (every GELU of the library calls one, above): per 4 outputs 1 load (2
    # with the gate) and 1 store, the erf's constants used by lane from registers (no constant
    # reloads), the division a reciprocal estimate (no VFP divide), nothing spilled.
    for symbol, data_loads in (("parcnet_gelu_rows", 1), ("parcnet_gelu_gate_rows", 2)):
        assert not [t for _, t in functions[symbol] if t.startswith("vdiv")], symbol
        (loop,) = _innermost_fma_loops(functions[symbol])
        loads = [t for t in loop if t.startswith("vld")]
        stores = [t for t in loop if t.startswith("vst")]
        by_lane = [t for t in loop if re.match(r"vml[as]\.f32\s+q\d+, q\d+, d\d+\[[01]\]", t)]
        # by lane: P's 6 terms after its constant, Q's 4, and 1/2 + erf/2
        assert len(loads) == data_loads and len(stores) == 1 and len(by_lane) >= 10, loop
        assert any(t.startswith("vrecpe.f32") for t in loop) and not any("[sp" in t for t in loop), loop


def test_packaging_a_missing_library_says_so(tmp_path):
    with pytest.raises(ParcnetError, match=re.escape(f"library {tmp_path / 'nope.so'} does not exist")) as caught:
        script_main("package_arm.py")(tmp_path / "nope.so", "-o", tmp_path / "bundle")
    one_line(caught.value)
    assert not (tmp_path / "bundle").exists()
