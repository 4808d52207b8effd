"""Our compilation pipeline: one named list of passes per target kind.

Each step is a `tvm.transform` pass over the whole module, so a pipeline is a plain list to
read top to bottom and run with `tvm.transform.Sequential`. The options travel in one
`PipelineOptions`. What a pass did (how many oversized pairs it replaced, which rule
scheduled which kernel) it records in the module's `parcnet_report` attribute, read back with
`report(mod)`: no out-parameters.

The graph passes (up to FuseTIR) give the module MetaSchedule extracts its tasks from
(`fused_module`); the schedule passes then apply the tuning logs and schedule the rest with
our rules (`schedules/`). `tvm_default` runs none of it: TVM's own default build, the
untuned baseline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import tvm
from tvm import relax

from .fast_math import legalize_map, uses_fast_erf
from .gelu_gates import rewrite_gelus
from .layout import count_transposes, to_channels_last
from .norm import fuse_layer_norms
from .rewrite import rewrite_oversized_convs
from .schedules import FROM_DATABASE, neon_gemm, op_passes, schedule_kernels
from .targets import NamedTarget
from .tuning_log import apply_database

REPORT = "parcnet_report"


@dataclass(frozen=True)
class PipelineOptions:
    custom_op: bool = True        # our oversized-conv op; False keeps TVM's conv2d for it
    oversized_algo: str = "auto"  # auto | direct | toeplitz
    exact_math: bool = False      # keep libm erf in GELU instead of the fast polynomial (CPUs)
    tuning_logs: tuple = ()       # tuning log dirs whose records replace our schedules
    tvm_default: bool = False     # TVM's default build of everything: the untuned baseline
    cuda_graph: bool = True       # CUDA: replay the kernels from a CUDA graph


def report(mod: tvm.IRModule) -> dict:
    """What the passes that ran on `mod` recorded, as plain data."""
    attrs = mod.attrs
    text = attrs.get(REPORT) if attrs is not None else None
    return json.loads(str(text)) if text is not None else {}


def _reported(mod: tvm.IRModule, **entries) -> tvm.IRModule:
    return mod.with_attr(REPORT, json.dumps({**report(mod), **entries}))


def run_passes(passes: list, mod: tvm.IRModule) -> tvm.IRModule:
    """The passes in order. Our class passes are called as Python, not through TVM's FFI: a
    ParcnetError raised inside one reaches the caller as itself (the FFI would hand on only its
    text in a RuntimeError), so the CLI still prints one line and exits 2."""
    ctx = tvm.transform.PassContext.current()
    for one in passes:
        ours = getattr(one, "_inst", None)  # tvm.transform.module_pass keeps the class's instance here
        mod = ours.transform_module(mod, ctx) if ours is not None else one(mod)
    return mod


# ---------------------------------------------------------------- our passes

@tvm.transform.module_pass(opt_level=0, name="RewriteOversizedConvs")
class RewriteOversizedConvs:
    """Each oversized depth-wise conv pair (K x 1, then 1 x K', padded to keep the map) becomes our op."""

    def __init__(self, algo: str, target_kind: str):
        self.algo, self.target_kind = algo, target_kind

    def transform_module(self, mod, _ctx):
        mod, replaced, algos = rewrite_oversized_convs(mod, self.algo, target_kind=self.target_kind,
                                                       passes_for=op_passes(self.target_kind))
        return _reported(mod, oversized_pairs=replaced,
                         oversized_algos={a: algos.count(a) for a in sorted(set(algos))})


@tvm.transform.module_pass(opt_level=0, name="ToChannelsLast")
class ToChannelsLast:
    """Channels-last throughout, the 1x1 convs as GEMMs with their adds as epilogues; with
    `im2col_depth_multiple` (ARM) the stem and downsampling convs as GEMMs too, so that every
    dense conv runs on the NEON GEMM micro-kernel."""

    def __init__(self, im2col_depth_multiple: int | None = None):
        self.im2col_depth_multiple = im2col_depth_multiple

    def transform_module(self, mod, _ctx):
        mod = to_channels_last(mod, im2col_depth_multiple=self.im2col_depth_multiple)
        return _reported(mod, transposes_left=count_transposes(mod))


@tvm.transform.module_pass(opt_level=0, name="FuseLayerNormGeneral")
def fuse_layer_norms_pass(mod, _ctx):
    """Each LayerNormGeneral chain (eight Relax ops) as one op."""
    mod, fused = fuse_layer_norms(mod)
    return _reported(mod, layer_norms_fused=fused)


@tvm.transform.module_pass(opt_level=0, name="RewriteGelus")
def rewrite_gelus_pass(mod, _ctx):
    """ARM: each GELU gate and each GELU of a channel half as calls of our NEON kernel."""
    mod, gates, gelus = rewrite_gelus(mod)
    return _reported(mod, neon_gelu_gates=gates, neon_gelus=gelus)


@tvm.transform.module_pass(opt_level=0, name="ApplyTuningLogs")
class ApplyTuningLogs:
    """Kernels the tuning logs have records for take their best schedule."""

    def __init__(self, named: NamedTarget, logs, log=print):
        self.named, self.logs, self.log = named, list(logs), log

    def transform_module(self, mod, _ctx):
        return apply_database(mod, self.named, self.logs, log=self.log)


@tvm.transform.module_pass(opt_level=0, name="ScheduleKernels")
class ScheduleKernels:
    """Every kernel not scheduled yet, by the first of our rules that matches it."""

    def __init__(self, target: tvm.target.Target):
        self.target = target

    def transform_module(self, mod, _ctx):
        mod, kernel_schedules = schedule_kernels(mod, self.target)
        return _reported(mod, kernel_schedules=kernel_schedules,
                         kernels_from_database=len(kernel_schedules.get(FROM_DATABASE, [])),
                         kernels=sum(len(names) for names in kernel_schedules.values()))


def legalize_and_fuse(target_kind: str, exact_math: bool = False) -> list:
    """TVM's lowering of Relax ops to kernels, then fusion (GELU's erf as a fast polynomial on
    CPUs unless `exact_math`)."""
    return [
        relax.transform.LegalizeOps(customize_legalize_map=legalize_map(target_kind, exact_math)),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]


# ---------------------------------------------------------------- one list per target kind

def cpu_graph_passes(named: NamedTarget, options: PipelineOptions) -> list:
    arm = named.name == "arm"
    return [
        *([RewriteOversizedConvs(options.oversized_algo, "arm" if arm else "llvm")] if options.custom_op else []),
        ToChannelsLast(neon_gemm.DEPTH_STEP if arm else None),
        fuse_layer_norms_pass,
        # the NEON kernel computes the fast erf: not with exact maths
        *([rewrite_gelus_pass] if arm and uses_fast_erf("llvm", options.exact_math) else []),
        *legalize_and_fuse("llvm", options.exact_math),
    ]


def cuda_graph_passes(named: NamedTarget, options: PipelineOptions) -> list:
    # CUDA: our op split into its two passes where a block's shared memory cannot hold the
    # fused op (RewriteOversizedConvs asks the CUDA schedule); libm's erf (exact) in GELU.
    return [
        *([RewriteOversizedConvs(options.oversized_algo, "cuda")] if options.custom_op else []),
        ToChannelsLast(),
        fuse_layer_norms_pass,
        *legalize_and_fuse("cuda"),
    ]


GRAPH_PASSES = {"llvm": cpu_graph_passes, "cuda": cuda_graph_passes}


def schedule_passes(named: NamedTarget, options: PipelineOptions, log=print) -> list:
    return [
        *([ApplyTuningLogs(named, options.tuning_logs, log)] if options.tuning_logs else []),
        ScheduleKernels(named.target),
    ]


def fused_module(mod: tvm.IRModule, named: NamedTarget, options: PipelineOptions | None = None) -> tvm.IRModule:
    """The graph passes: the module MetaSchedule extracts its tasks from."""
    options = options or PipelineOptions()
    return run_passes(GRAPH_PASSES[named.target.kind.name](named, options), mod)


def prepare(mod: tvm.IRModule, named: NamedTarget, options: PipelineOptions | None = None, log=print) -> tvm.IRModule:
    """Every pass of our pipeline for the target: the module TVM's build then lowers."""
    options = options or PipelineOptions()
    if options.tvm_default:
        return mod
    passes = GRAPH_PASSES[named.target.kind.name](named, options) + schedule_passes(named, options, log)
    return run_passes(passes, mod)


def uses_cuda_graph(named: NamedTarget, options: PipelineOptions) -> bool:
    """CUDA builds of our pipeline launch their kernels from a CUDA graph: the VM otherwise
    launches each of the ~300 kernels of a forward pass from the host, which is most of the
    time at batch 1. TVM's default build (the untuned baseline) keeps TVM's default: none."""
    return named.target.kind.name == "cuda" and options.cuda_graph and not options.tvm_default


def _build_context(named: NamedTarget, options: PipelineOptions) -> tvm.transform.PassContext:
    config = {"relax.backend.use_cuda_graph": True} if uses_cuda_graph(named, options) else {}
    return tvm.transform.PassContext(config=config)


def lower(prepared: tvm.IRModule, named: NamedTarget, options: PipelineOptions | None = None) -> tvm.IRModule:
    """TVM's Relax lowering (the pipeline tvm.compile picks: the target's own on GPUs), up to
    the VM's code generation: memory planned (`planned_bytes`); on CUDA with RewriteCUDAGraph
    (the kernels after the first one that reads the input are captured into a graph on the
    first call, then replayed)."""
    options = options or PipelineOptions()
    target = named.target
    pipeline = relax.get_default_pipeline(target) if "gpu" in target.keys else relax.get_pipeline("default")
    with _build_context(named, options), target:
        return pipeline(prepared.without_attr(REPORT))


def planned_bytes(lowered: tvm.IRModule, func_name: str = "main") -> int:
    """Bytes of the storage `func_name` allocates after memory planning: its activations and
    workspaces (planned storage is reused across the graph; the output lives in it too), plus
    the largest scratch memory one kernel allocates for itself (the ARM GEMMs' packed rows;
    kernels run one at a time, and the runtime's workspace pool reuses it)."""
    from .graph import calls

    storages = calls(lowered[func_name], "relax.vm.alloc_storage")  # sizes in bytes, fixed shapes
    return sum(int(call.args[0].values[0]) for call in storages) + kernel_scratch_bytes(lowered)


def kernel_scratch_bytes(lowered: tvm.IRModule) -> int:
    """The most bytes of global (heap) buffers any one kernel allocates in its root block
    (with the strides a schedule's storage_align gives them)."""
    largest = 0
    for _, func in lowered.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc) and isinstance(func.body, tvm.s_tir.SBlockRealize):
            aligned = _aligned_axes(func)
            buffers = [b for b in func.body.block.alloc_buffers if b.scope() == "global"]
            largest = max(largest, sum(b.dtype.bits // 8 * _elements(b, aligned.get(str(b.name), ())) for b in buffers))
    return largest


def _aligned_axes(func) -> dict:
    """{buffer name: [(axis, factor, offset)]} from the storage_align annotations of the blocks
    under loops of the root block (those that write its buffers)."""
    found = {}

    def walk(stmt):
        if isinstance(stmt, tvm.tirx.SeqStmt):
            for part in stmt.seq:
                walk(part)
        elif isinstance(stmt, tvm.tirx.For):
            walk(stmt.body)
        elif isinstance(stmt, tvm.s_tir.SBlockRealize):
            block = stmt.block
            for index, axis, factor, offset in block.annotations.get("buffer_dim_align", ()):
                found.setdefault(str(block.writes[int(index)].source.name), []).append((int(axis), int(factor), int(offset)))

    walk(func.body.block.body)
    return found


def _elements(buffer, aligned) -> int:
    """Elements a buffer's allocation holds: the stride of an aligned axis (the span of the axes
    inside it) rounded up to factor * k + offset."""
    shape = [int(n) for n in buffer.shape]
    rules = {axis: (factor, offset) for axis, factor, offset in aligned}
    stride = 1
    for axis in range(len(shape) - 1, -1, -1):
        if axis in rules:  # TVM aligns the innermost axis too (its stride of 1 rounded up)
            factor, offset = rules[axis]
            stride += (offset - stride) % factor
        stride *= shape[axis]
    return stride


def codegen(lowered: tvm.IRModule, named: NamedTarget, options: PipelineOptions | None = None):
    """The VM executable of a `lower`ed module."""
    with _build_context(named, options or PipelineOptions()):
        return relax.build(lowered, target=named.target, relax_pipeline=None)


def compile_prepared(prepared: tvm.IRModule, named: NamedTarget, options: PipelineOptions | None = None):
    """TVM's lowering and code generation: `lower`, then `codegen`."""
    return codegen(lower(prepared, named, options), named, options)


def compile_relax(mod: tvm.IRModule, named: NamedTarget, options: PipelineOptions | None = None, log=print):
    """`prepare`, then `compile_prepared`: an imported module to an executable."""
    return compile_prepared(prepare(mod, named, options, log), named, options)
