"""GELU through the polynomial erf: accurate, vectorised, on by default for CPU builds only."""

import math

import numpy as np
import tvm
from tvm import relax, te, topi

from parcnet_tvm.fast_math import legalize_map
from parcnet_tvm.pipeline import legalize_and_fuse
from parcnet_tvm.targets import get_target


def test_fast_erf_is_within_1e_5_of_erf():
    x = te.placeholder((20001,), name="x")
    func = te.create_prim_func([x, te.compute(x.shape, lambda i: topi.fast_erf(x)[i])])
    lib = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
    xs = np.linspace(-8, 8, 20001, dtype=np.float32)
    out = tvm.runtime.tensor(np.zeros_like(xs))
    lib["main"](tvm.runtime.tensor(xs), out)
    exact = np.array([math.erf(v) for v in xs.astype(np.float64)])
    assert np.abs(out.numpy() - exact).max() <= 1e-5


def _gelu_module():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 64, 8, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.gelu(x))
        bb.emit_func_output(out)
    return bb.get()


def test_cpu_builds_use_the_fast_erf_unless_exact_math_is_asked():
    fast = tvm.transform.Sequential(legalize_and_fuse("llvm"))(_gelu_module()).script()
    exact = tvm.transform.Sequential(legalize_and_fuse("llvm", exact_math=True))(_gelu_module()).script()
    assert "T.erf" not in fast and "T.erf" in exact
    assert legalize_map("cuda") == {}  # CUDA's erff is a device intrinsic already


def test_fast_gelu_matches_torch_gelu():
    import torch

    named = get_target("x86")
    lib = tvm.compile(tvm.transform.Sequential(legalize_and_fuse("llvm"))(_gelu_module()), target=named.target)
    x = np.random.default_rng(0).standard_normal((1, 64, 8, 8)).astype(np.float32) * 4
    got = relax.VirtualMachine(lib, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    want = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() <= 1e-5
