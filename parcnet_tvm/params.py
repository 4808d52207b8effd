"""A library's weights in their own file beside it (OUT.so -> OUT.params), held once in memory.

Why not inside the .so: TVM keeps a Relax executable's constants in the library's binary
blob, and loading it maps the blob, copies it, then makes tensors from the copy: T's 100 MB
of weights peaked at ~4 copies (428 MB) and kept two. Here the built module's constants
become trailing parameters of `main` (attribute `num_input` = 1 says which are weights, so
CUDA graph capture still treats them as static), their values go to a TVM parameter file,
and loaders read it with `runtime.LoadParamsFromFile`, which reads each tensor straight into
its own buffer: one copy, no blob. The C API (arm_runtime/parcnet.cc) does the same on the
board. Tensors are named w0000, w0001, ... in `main`'s parameter order.
"""

from __future__ import annotations

from pathlib import Path

import tvm
from tvm import relax

from .errors import ParcnetError

SUFFIX = ".params"


def path_for(library) -> Path:
    return Path(library).with_suffix(SUFFIX)


def _name(index: int) -> str:
    return f"w{index:04d}"


@relax.expr_functor.mutator
class _ConstantsToParams(relax.PyExprMutator):
    """Every non-scalar constant becomes a new parameter (one per distinct constant)."""

    def __init__(self, mod):
        super().__init__(mod)
        self.params: list[relax.Var] = []
        self.values: list[tvm.runtime.Tensor] = []
        self._seen: dict = {}

    def visit_generic_const_(self, const) -> relax.Expr:  # TVM 0.27's relax constant
        if len(const.value.shape) == 0:  # scalars stay in the code: nothing to gain
            return const
        if const not in self._seen:  # keyed by node: a constant used twice is one weight
            self._seen[const] = relax.Var(_name(len(self.params)), const.ty)
            self.params.append(self._seen[const])
            self.values.append(const.value)
        return self._seen[const]


def lift_weights(mod: tvm.IRModule, func_name: str = "main") -> tuple[tvm.IRModule, dict]:
    """`mod` with `func_name`'s constants turned into trailing parameters, and their values
    by parameter name (for `save`)."""
    func = mod[func_name]
    lifter = _ConstantsToParams(mod)
    body = lifter.visit_expr(func.body)
    if not lifter.params:
        return mod, {}
    lifted = relax.Function([*func.params, *lifter.params], body, func.ret_ty, func.is_pure,
                            func.attrs, func.span).with_attr("num_input", len(func.params))
    mod = mod.clone()
    mod[func_name] = lifted
    return mod, {_name(i): value for i, value in enumerate(lifter.values)}


def save(values: dict, path) -> Path:
    """Write the weights (name -> tensor) as a TVM parameter file. Serialized here and written
    from Python, so that a full disk is an OSError naming the path (TVM's own file writer
    does not check its writes)."""
    Path(path).write_bytes(tvm.runtime.save_param_dict(values))
    return Path(path)


def load(library, device=None) -> list:
    """The weights of `library`, in `main`'s parameter order, on `device` (default: CPU):
    empty for a library without a weights file (one built before weights left the .so)."""
    path = path_for(library)
    if not path.is_file():
        if "params" in _manifest_beside(library):
            raise ParcnetError(f"no weights file {path}: keep the .params written beside {Path(library).name} "
                               "(copy the two together), or rebuild the library")
        return []
    try:
        loaded = tvm.runtime.load_param_dict_from_file(str(path))
    except RuntimeError as err:  # TVM reports a damaged file as an internal check failure
        raise ParcnetError(f"weights file {path} is damaged ({str(err).splitlines()[-1][:120]}): "
                           "rebuild the library") from None
    tensors = [loaded[name] for name in sorted(loaded.keys())]
    if device is not None and device.dlpack_device_type() != tvm.cpu().dlpack_device_type():
        tensors = [t.copyto(device) for t in tensors]
    return tensors


def check_files(library) -> None:
    """The library and its weights file are the ones its manifest describes (sha256, bytes): a
    cut, changed or swapped file is one line here rather than a crash in TVM's loader (a cut
    .so can end the process with SIGBUS). Nothing to check without a manifest (a library being
    verified before its manifest is written)."""
    from .manifest import path_for as manifest_path
    from .manifest import sha256

    manifest, library = _manifest_beside(library), Path(library)
    fix = "copy the library, its weights and its manifest together, or rebuild it"
    if manifest.get("sha256") and sha256(library) != manifest["sha256"]:
        raise ParcnetError(f"{library} changed since it was built (its sha256 differs from its manifest "
                           f"{manifest_path(library).name}: a cut or changed copy, or another library's manifest): {fix}")
    expected, weights = manifest.get("params"), path_for(library)
    if not isinstance(expected, dict) or not weights.is_file():
        return  # a missing weights file is load()'s one line
    size = weights.stat().st_size
    if size != expected.get("bytes", size) or ("sha256" in expected and sha256(weights) != expected["sha256"]):
        raise ParcnetError(f"weights file {weights} is not the one built with {library.name} ({size} bytes, "
                           f"its manifest says {expected.get('bytes')}; sha256 differs: a cut copy or another "
                           f"library's weights): {fix}")


def _manifest_beside(library) -> dict:
    """The manifest beside `library`, or {} (a library being verified has none yet)."""
    import json

    from .manifest import path_for as manifest_path

    try:
        manifest = json.loads(manifest_path(library).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def describe(path, tensors: int) -> dict:
    """What the manifest records about a weights file of `tensors` tensors."""
    from .manifest import sha256

    path = Path(path)
    return {"file": path.name, "tensors": tensors, "bytes": path.stat().st_size, "sha256": sha256(path)}


class LibraryVM(relax.VirtualMachine):
    """A Relax VM whose `main` takes the input alone: the library's weights, loaded once,
    follow it in every call (also through `set_input`/`invoke_stateful`, used over RPC)."""

    def __init__(self, module, device, weights=()):
        super().__init__(module, device)
        self.weights = list(weights)

    def __getitem__(self, name: str):
        func = super().__getitem__(name)
        if name != "main" or not self.weights:
            return func
        return lambda *inputs: func(*inputs, *self.weights)

    def set_input(self, func_name: str, *args, **kwargs) -> None:
        if func_name == "main":
            args = (*args, *self.weights)
        super().set_input(func_name, *args, **kwargs)
