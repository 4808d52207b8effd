"""What the tests share: sizes, markers and helpers (imported as `from support import ...`)."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from parcnet_tvm.tuning_log import RECORD_FILE

ROOT = Path(__file__).resolve().parents[1]
SMALL = 64  # smallest input that keeps every stage (64 / 32 = 2x2 last map)
ONLY = ("oversized_conv",)  # XT at 64 has 4 such tasks (one per stage): cheap to tune

# Whole-model cases beyond one of each kind: `python3 -m pytest -m slow` runs them (the
# default run leaves them out, pyproject.toml's addopts).
slow = pytest.mark.slow

# CI installs the cross toolchain; elsewhere a test that needs it skips with the reason.
needs_arm_toolchain = pytest.mark.skipif(
    shutil.which("arm-linux-gnueabihf-g++") is None and not os.environ.get("CI"),
    reason="arm-linux-gnueabihf-g++ not installed (apt-get install g++-arm-linux-gnueabihf)",
)


def run_script(name, *args, cwd=None, env=None):
    """Run scripts/<name> as a user would (extra environment in `env`); returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *map(str, args)],
        capture_output=True, text=True, cwd=cwd or ROOT, timeout=900,
        env={**os.environ, **(env or {})},
    )


def start_script(name, *args, env=None):
    """scripts/<name> started as a user would, not waited for (see `finish`)."""
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / name), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})})


def finish(process, timeout=900):
    """A started script's CompletedProcess, once it ends."""
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


_SCRIPTS = {}


def script_main(name):
    """scripts/<name>'s main, called in this process as `main(*args)` (each argument str()-ed, as
    on a command line): what the script raises (ParcnetError, OSError) reaches the caller instead
    of run_main's one `error:` line and exit 2. For argument and bad-input errors: a subprocess
    imports torch and TVM again (4 s on an idle machine, more under load); run_script stays for
    whole runs and for the few tests of the command line's own error format."""
    if name not in _SCRIPTS:
        spec = importlib.util.spec_from_file_location(f"script_{Path(name).stem}", ROOT / "scripts" / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[name] = module.main
    main = _SCRIPTS[name]
    return lambda *args: main([str(a) for a in args])


def one_line(error):
    """The line run_main prints for `error` (without `error: `), checked to be one line."""
    from parcnet_tvm.cli import describe

    text = describe(error)
    assert text and "\n" not in text, text
    return text


def cuda_kernel_limits(source: str) -> list[tuple[int, int]]:
    """(static shared-memory bytes, threads) of every kernel in a CUDA source (float arrays)."""
    kernels = [k for k in source.split("__global__ void __launch_bounds__(")[1:]
               if k.split("\n")[0].endswith("{")]  # definitions, not declarations
    return [(4 * sum(int(n) for n in re.findall(r"__shared__ alignas\(\d+\) float \w+\[(\d+)\];", k)),
             int(k.split(")")[0])) for k in kernels]


def random_state(model, seed=7):
    """A state dict of `model`'s shapes with small random values."""
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in model.state_dict().items()}


def record_lines(work_dir):
    """The lines of a tuning log's records file (none if it does not exist yet)."""
    path = work_dir / RECORD_FILE
    return path.read_text().splitlines() if path.is_file() else []


def write_test_image(path, width, height, seed=0):
    """A PNG photo stand-in (lossless, so every decoder reads the same pixels): smooth colour
    gradients, a few sharp-edged blocks and noise, which resampling filters treat differently."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([255 * xx / width, 255 * yy / height, 128 + 100 * np.sin((xx + yy) / 9)], -1)
    for _ in range(6):
        y, x = rng.integers(0, height), rng.integers(0, width)
        image[y:y + height // 4, x:x + width // 5] = rng.integers(0, 256, 3)
    image += rng.normal(0, 12, image.shape)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)
    return path


def pil_eval_preprocess(path, crop, resize):
    """The official evaluation's preprocessing, written out from torchvision's and timm's
    definitions with PIL and NumPy (independent of parcnet_tvm): Resize (shorter side, or
    exact HxW), CenterCrop, ToTensor, Normalize. Returns float32 (3, H, W)."""
    import numpy as np
    from PIL import Image

    image = Image.open(path).convert("RGB")
    w, h = image.size
    if isinstance(resize, int):
        size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    else:
        size = (resize[1], resize[0])
    image = image.resize(size, Image.Resampling.BICUBIC)
    top, left = int(round((size[1] - crop[0]) / 2.0)), int(round((size[0] - crop[1]) / 2.0))
    tensor = np.asarray(image.crop((left, top, left + crop[1], top + crop[0])), np.float32) / np.float32(255)
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    return ((tensor - mean) / std).transpose(2, 0, 1)
