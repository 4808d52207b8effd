"""Fixtures shared across test modules (helpers are in support.py)."""

import json
import subprocess

import pytest
from support import ONLY, ROOT, SMALL, finish, start_script


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Tests (and the scripts they run) never read or write the user's cache of tuning logs."""
    patch = pytest.MonkeyPatch()
    patch.setenv("PARCNET_TVM_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def xt_small_x86(tmp_path_factory):
    """XT at 64x64 built and verified for x86 once per session: (library path, manifest)."""
    from parcnet_tvm.build import BuildRequest, build_library

    out = tmp_path_factory.mktemp("x86") / "xt64.so"
    manifest = build_library(BuildRequest(model="xt", target="x86", input_size=SMALL, output=str(out)),
                             log=lambda *_: None)
    return out, manifest


@pytest.fixture(scope="session")
def xt_checkpoint_x86(tmp_path_factory):
    """XT at 64 built for x86 once per session with the documented API (pt.compile) from a
    training checkpoint ({"model": state dict}) of weights unlike the default seed's, through
    the ONNX frontend: (the PyTorch model, the checkpoint's path, the Compiled)."""
    import torch

    import parcnet_tvm as pt

    folder = tmp_path_factory.mktemp("checkpoint")
    with torch.random.fork_rng():  # the session's random state stays as it was
        torch.manual_seed(11)
        model = pt.create_model("xt", input_size=SMALL).eval()
    checkpoint = folder / "ckpt.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    built = pt.compile("xt", target="x86", input_size=SMALL, checkpoint=checkpoint, frontend="onnx",
                       output=folder / "ck.so")
    return model, checkpoint, built


@pytest.fixture(scope="session")
def runtime():
    """The cross-built ARM runtime (scripts/setup.sh builds it; cached afterwards)."""
    from parcnet_tvm import runtime as arm_runtime

    out = arm_runtime.build_runtime(log=lambda *_: None)
    for name in arm_runtime.LIBRARIES + arm_runtime.PROGRAMS:
        assert "ARM, EABI5" in subprocess.run(["file", str(out / name)], capture_output=True, text=True).stdout
    return out


@pytest.fixture(scope="session")
def xt_arm(runtime, tmp_path_factory):
    """XT at 64 built for ARM; build.py verifies it under qemu right away."""
    from parcnet_tvm.build import BuildRequest, build_library

    out = tmp_path_factory.mktemp("arm") / "xt_arm.so"
    manifest = build_library(BuildRequest(model="xt", target="arm", input_size=SMALL, output=str(out)),
                             log=lambda *_: None)
    return out, manifest


@pytest.fixture(scope="session")
def fused_xt():
    """XT at 64x64 after our graph passes, legalization and fusion for x86 (ARM's differs only
    in its GELUs, calls of our NEON kernel): the module MetaSchedule extracts tasks from."""
    from parcnet_tvm.frontend import import_model
    from parcnet_tvm.pipeline import fused_module
    from parcnet_tvm.targets import get_target
    from parcnet_tvm.weights import prepare_model

    model = prepare_model("xt", SMALL)
    return fused_module(import_model(model, (1, 3, SMALL, SMALL), "torch"), get_target("x86"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """scripts/tune.py end to end: a few trials of our op's tasks into the default work dir (in
    a cache of its own, out/cache: never the checkout), then build + verify. out/log links to
    the work dir. Two runs start on that work dir at the same moment: one tunes and builds, the
    other refuses at once naming it (log_lock.py), and the log it leaves parses line by line."""
    from parcnet_tvm.targets import get_target
    from parcnet_tvm.tuning.device import device_for

    out = tmp_path_factory.mktemp("tiny")
    shipped = sorted(p.name for p in (ROOT / "tuning_logs").iterdir())
    args = ["--target", "x86", "--model", "xt", "--input-size", SMALL, "--only", *ONLY, "--trials", 8,
            "--trials-per-iter", 2, "--compare", 2]
    env = {"PARCNET_TVM_CACHE": str(out / "cache")}
    runs = [start_script("tune.py", *args, "-o", out / "xt.so", env=env) for _ in range(2)]
    finished = [finish(run) for run in runs]
    done = next((d for d in finished if d.returncode == 0), None)
    refused = next((d for d in finished if d.returncode == 2), None)
    assert done and refused, "\n".join(d.stdout + d.stderr for d in finished)
    assert "is being written by another run (tune pid" in refused.stderr, refused.stderr
    assert "[4/4] verified" in done.stdout, done.stdout
    work_dir = out / "cache" / "tuning" / f"xt-x86-{SMALL}" / device_for(get_target("x86")).id
    assert (work_dir / "database_tuning_record.json").is_file(), done.stdout
    for name in ("database_workload.json", "database_tuning_record.json"):
        for line in (work_dir / name).read_text().splitlines():
            json.loads(line)  # every line whole: no write of the refused run in between
    assert sorted(p.name for p in (ROOT / "tuning_logs").iterdir()) == shipped  # nothing new in the checkout
    (out / "log").symlink_to(work_dir, target_is_directory=True)
    return out, done


@pytest.fixture(scope="session")
def official_export(tmp_path_factory):
    """XT exported as the official repo's torch2onnx.py does (TorchScript, dynamic batch axis),
    from the official forward pass (chunk(2), fixed kernel lengths, clamp_min)."""
    from official_reference import export_like_official, official_xt

    from parcnet_tvm.weights import prepare_model

    path = tmp_path_factory.mktemp("onnx") / "official_xt.onnx"
    export_like_official(official_xt(prepare_model("xt", SMALL).state_dict()), (SMALL, SMALL), path)
    return path
