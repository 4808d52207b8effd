"""params.py: a library's weights in their own file, held once in memory."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tvm
from support import SMALL
from tvm import relax

from parcnet_tvm import ParcnetError, load
from parcnet_tvm.manifest import sha256
from parcnet_tvm.params import lift_weights, path_for, save
from parcnet_tvm.verify import load_vm
from parcnet_tvm.weights import prepare_model


def _small_module():
    """y = (x @ w) * w + b * 2: one weight used twice, a bias, and a scalar."""
    x = relax.Var("x", relax.TensorType((4, 4), "float32"))
    rng = np.random.default_rng(0)
    w = relax.const(rng.standard_normal((4, 4), dtype=np.float32))
    b = relax.const(rng.standard_normal((4,), dtype=np.float32))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            y = builder.emit(relax.op.multiply(relax.op.matmul(x, w), w))
            out = builder.emit_output(relax.op.add(y, relax.op.multiply(b, relax.const(2.0, "float32"))))
        builder.emit_func_output(out)
    return builder.get()


def test_constants_become_trailing_parameters_once_each(tmp_path):
    mod = _small_module()
    lifted, weights = lift_weights(mod)
    main = lifted["main"]
    assert [p.name for p in main.params] == ["x", "w0000", "w0001"]  # w shared: one parameter
    assert int(main.attrs["num_input"]) == 1
    assert [list(v.shape) for v in weights.values()] == [[4, 4], [4]]  # the scalar stays in the code
    x = np.random.default_rng(1).standard_normal((4, 4), dtype=np.float32)
    expected = relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    library = tmp_path / "small.so"
    tvm.compile(lifted, "llvm").export_library(str(library))
    save(weights, path_for(library))
    got = load_vm(library, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_library_is_code_and_its_weights_file_holds_them_once(xt_small_x86):
    """FoldConstant once made T's library 567 MB for 100 MB of weights; then the weights inside
    the .so were held twice after loading (428 MB at its peak for T): now the .so is code."""
    library, manifest = xt_small_x86
    weights = path_for(library)
    weight_bytes = 4 * sum(p.numel() for p in prepare_model("xt", SMALL).parameters())
    assert library.stat().st_size < 4e6
    assert weight_bytes * 0.95 < weights.stat().st_size < 1.3 * weight_bytes
    assert manifest["params"] == {"file": weights.name, "tensors": manifest["params"]["tensors"],
                                  "bytes": weights.stat().st_size, "sha256": sha256(weights)}
    assert manifest["memory"]["weights_bytes"] == weights.stat().st_size
    assert 0 < manifest["memory"]["planned_activation_bytes"] < 8e6  # XT at 64: small maps


def test_loading_a_library_adds_its_weights_once(xt_small_x86):
    """In a fresh process: peak resident memory added by loading and running the library is
    about one copy of the weights (with the weights inside the .so it was about four)."""
    library, manifest = xt_small_x86
    code = f"""
import numpy as np, tvm
from parcnet_tvm.verify import load_vm
def peak():
    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM'))
x = tvm.runtime.tensor(np.zeros({manifest['input_shape']}, 'float32'))
before = peak()
vm = load_vm({str(library)!r}, tvm.cpu(), 1)
vm['main'](x)
print(peak() - before)
"""
    added = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    weights = manifest["memory"]["weights_bytes"]
    assert added < 1.25 * weights + manifest["memory"]["planned_activation_bytes"] + 8e6, (added, weights)


def test_a_missing_or_damaged_weights_file_is_one_line(xt_small_x86, tmp_path):
    library, _ = xt_small_x86
    copy = tmp_path / library.name
    shutil.copy(library, copy)
    shutil.copy(library.with_suffix(".json"), copy.with_suffix(".json"))
    with pytest.raises(ParcnetError, match=r"no weights file .*xt64.params: keep the .params written beside"):
        load(copy)
    path_for(copy).write_bytes(path_for(library).read_bytes()[:1000])  # cut short
    with pytest.raises(ParcnetError, match=r"weights file .*xt64.params is not the one built with xt64.so "
                                           r"\(1000 bytes, its manifest says \d+; .*copy the library, its weights") as err:
        load(copy)
    assert "\n" not in str(err.value)
    manifest = json.loads(copy.with_suffix(".json").read_text())
    manifest["params"].pop("sha256")
    manifest["params"].pop("bytes")  # a manifest that cannot tell: TVM's reader finds the damage
    copy.with_suffix(".json").write_text(json.dumps(manifest))
    with pytest.raises(ParcnetError, match=r"weights file .*xt64.params is damaged .*rebuild the library"):
        load(copy)


def test_a_cut_library_is_one_line_not_a_crash_in_tvms_loader(xt_small_x86, tmp_path):
    """A .so cut short mapped by TVM's loader ended the process with SIGBUS: the manifest's
    sha256 refuses it first (Python API, verify, bench, breakdown: every loader)."""
    library, _ = xt_small_x86
    copy = tmp_path / library.name
    copy.write_bytes(library.read_bytes()[:300_000])
    for suffix in (".json", ".params"):
        shutil.copy(library.with_suffix(suffix), copy.with_suffix(suffix))
    with pytest.raises(ParcnetError, match=rf"{copy} changed since it was built .*: copy the library, its weights"):
        load(copy)(np.zeros((1, 3, SMALL, SMALL), np.float32))
