"""The ARM Cortex-A17 board bundle: the model library with its manifest, the cross-built TVM
runtime, runner and RPC server (`runtime.py`), and a README for the person with the board."""

from __future__ import annotations

import shutil
from pathlib import Path

from . import manifest as manifest_io
from . import outputs
from .errors import ParcnetError
from .input_contract import CLASS_NAMES
from .params import path_for as weights_path
from .runtime import LIBRARIES, PROGRAMS, SOURCE_DIR, runtime_dir, runtime_is_built
from .verify import check_bundle_top5

LEGAL_DIR = Path(__file__).resolve().parents[1]  # the checkout's LICENSE and NOTICE
BOARD_README = """# {name}: ParCNetV2 for ARM Cortex-A17 (RK3288), built by parcnet-tvm

Files: `{library}` (the model's code), `{weights}` (its weights, read once into memory), `{manifest}` (what it is: model, input shape, target,
verification, and the input contract: how an image is preprocessed), `imagenet_classes.txt`
(class names, one per line in label order), `libparcnet.so` + `parcnet.h` (the C API),
`libtvm_runtime.so` + `libtvm_ffi.so` (the TVM runtime), `parcnet_runner`, `parcnet_rpc_server`,
`example/` (a C++ application over the C API, with its CMake file).

## Copy to the board
    scp -r {name} user@board:~/

## Run (on the board)
    cd ~/{name}
    ./parcnet_runner {library} --input cat.jpg            # prints the top-5 ImageNet classes, named
    ./parcnet_runner {library} --input x.raw --output y.raw   # raw float32 in, logits out

An image (JPEG/PNG/BMP/PPM) is preprocessed by the manifest's input contract, the official
evaluation's: resize (bicubic, shorter side to {resize}), centre crop {height}x{width}, scale to
[0,1], normalise by the ImageNet mean and std; a .raw file must hold float32 NCHW data of shape
{shape}. `--save-input x.raw` writes what the model was given.

## Call it from your application (C API: parcnet.h, libparcnet.so)
    parcnet_model* model;
    parcnet_load("{library}", NULL, &model);                  // 0 on success, else parcnet_error()
    parcnet_preprocess_file(model, "cat.jpg", input, 3*{height}*{width});  // or parcnet_preprocess_rgb
    parcnet_run(model, input, input_count, logits, logits_count, 4);   // 4 threads
    parcnet_class_name(model, index); parcnet_free(model);
Every buffer is yours; no C++ type crosses the interface, so any compiler can call it.
Build the example on the board (`cmake` and a C++ compiler installed):
    cd example && cmake -S . -B build && cmake --build build
    ./build/classify ../{library} cat.jpg
or cross-build it on the host with the toolchain the runtime was built with:
    cmake -S example -B build -DCMAKE_TOOLCHAIN_FILE=<parcnet-tvm>/parcnet_tvm/arm_runtime/zig-toolchain.cmake

## Benchmark (on the board)
    ./parcnet_runner {library} --input x.raw --repeat 50   # median and p90 latency

## Tune from a host through RPC
On the host: `python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190`. On each board:
    ./parcnet_rpc_server --tracker HOST_IP:9190 --key rk3288 --allow HOST_IP
Then on the host: `python scripts/tune.py --target arm --rpc-tracker HOST_IP:9190 --rpc-key rk3288`.
Every board registered under the key measures trials at once; the progress lines say how many
each measured. Or serve directly: `./parcnet_rpc_server --port 9090 --bind BOARD_IP --allow HOST_IP`
and `--rpc BOARD_IP:9090`.
Then time the tuned library on the board from the host:
`python scripts/bench.py --target arm --rpc-tracker HOST_IP:9190 --rpc-key rk3288 --tuning-log DIR`.

TVM RPC has no authentication: anyone who reaches the port can run code on the board. Serve
it on a trusted network only, and let the server keep it that way: it listens on loopback
when serving directly unless `--bind IP` says where (with a tracker: the interface that
reaches it), and `--allow IP[,IP...]` refuses every other client before reading a byte.

## Start the RPC server at boot (systemd)
`parcnet-rpc.service` runs the server from /opt/{name}; edit HOST_IP (the tracker), BOARD_IP (the
address the board is reached at) and the key, then:
    sudo cp -r ~/{name} /opt/ && sudo cp /opt/{name}/parcnet-rpc.service /etc/systemd/system/
    sudo systemctl enable --now parcnet-rpc

## What the board needs
32-bit ARMv7-A Linux with NEON/VFPv4, hard-float (armhf), glibc >= 2.17: Debian 8 or newer,
Ubuntu 14.04 or newer, TinkerOS, Firefly's images, Buildroot with glibc. Every file here asks
for glibc symbol versions no newer than GLIBC_2.17, and none needs libstdc++: the runtime,
runner and RPC server carry their C++ runtime (libc++, built with zig's clang), and the
model library needs only libc and libgcc_s.
The programs find the libraries beside them (RPATH $ORIGIN).
"""


SYSTEMD_UNIT = """[Unit]
Description=parcnet-tvm RPC server (TVM RPC: trusted networks only, it has no authentication)
After=network-online.target
Wants=network-online.target

[Service]
WorkingDirectory=/opt/{name}
ExecStart=/opt/{name}/parcnet_rpc_server --tracker HOST_IP:9190 --key rk3288 --host-addr BOARD_IP --allow HOST_IP
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
"""


def package(library, out_dir, runtime: Path | None = None, check: bool = False) -> tuple[Path, str | None]:
    """Assemble the board bundle: model + manifest + runtime + runner + RPC server + README.
    `check`: run the bundle's runner under qemu first (verify.check_bundle_top5); a bundle that
    fails it does not replace what was at `out_dir`. Returns the bundle and the check's report."""
    library = Path(library)
    info = manifest_io.read(library)
    if info.get("target_name") != "arm":
        raise ParcnetError(f"{library} was built for {info.get('target_name')}, not arm: build it with --target arm")
    runtime = runtime or runtime_dir()
    if not runtime_is_built():
        raise ParcnetError("the ARM runtime is not built: run python scripts/build_arm_runtime.py first")
    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir.is_dir() and (not any(out_dir.iterdir()) or is_bundle(out_dir))):
        raise ParcnetError(f"{out_dir} exists and is not a bundle of ours: refusing to replace it; choose another -o")
    manifest_io.check_writable_folder(out_dir.parent, "the bundle")
    # Assembled in a folder beside it and renamed into place (outputs.py): an interrupted or
    # failed run leaves the bundle that was there, or the new one, never half of one.
    with outputs.replacing(out_dir) as (partial,):
        partial.mkdir(parents=True)
        _assemble(partial, library, info, runtime, out_dir.name)
        report = check_bundle_top5(partial) if check else None
    return out_dir, report


def _assemble(partial: Path, library: Path, info: dict, runtime: Path, name: str) -> None:
    shutil.copy2(library, partial / library.name)
    if weights_path(library).is_file():  # libraries built before the weights left the .so have none
        shutil.copy2(weights_path(library), partial / weights_path(library).name)
    manifest_io.write(partial / library.name, info)
    for runtime_file in LIBRARIES + PROGRAMS:
        shutil.copy2(runtime / runtime_file, partial / runtime_file)
    _, _, height, width = info["input_shape"]
    (partial / "README.md").write_text(BOARD_README.format(
        name=name, library=library.name, weights=weights_path(library).name, manifest=manifest_io.path_for(library).name,
        height=height, width=width, shape="x".join(map(str, info["input_shape"])),
        resize=info.get("input", {}).get("resize", {}).get("shorter_side", "the manifest's size")))
    (partial / "parcnet-rpc.service").write_text(SYSTEMD_UNIT.format(name=name))
    for legal in ("LICENSE", "NOTICE"):  # what the bundle redistributes, and under which terms
        shutil.copy2(LEGAL_DIR / legal, partial / legal)
    # the C API's header and example; the class names the manifest's output names
    shutil.copy2(SOURCE_DIR / "parcnet.h", partial / "parcnet.h")
    shutil.copytree(SOURCE_DIR / "example", partial / "example")
    if info.get("output", {}).get("class_names") == CLASS_NAMES.name:
        shutil.copy2(CLASS_NAMES, partial / CLASS_NAMES.name)


def is_bundle(folder: Path) -> bool:
    """A folder package() made: the runtime files and a manifest of ours."""
    return all((folder / name).is_file() for name in LIBRARIES + PROGRAMS) and \
        any(manifest_io.is_ours(p) for p in folder.glob("*.json"))
