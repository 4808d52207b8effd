"""Run GPU-scheduled TIR, one kernel or a whole CUDA build's program, on this CPU (CI has no GPU).

A scheduled (not yet lowered) module says everything about what each thread computes: the
loops bound to blockIdx/threadIdx, the shared and local buffers, the tiles, the predicates of
uneven splits. With every bound loop made an ordinary serial loop and every buffer a plain
one, it computes what the GPU kernel computes, thread after thread. So on the CPU this checks
the index arithmetic of a schedule: which outputs a thread owns, what a block stages and
where, the fused epilogues. It does not check what only the GPU does: its arithmetic (CUDA's
math functions), the barriers TVM inserts between a block's loop nests, launch limits, speed.
"""

from __future__ import annotations

import re

import tvm

# `for i in T.thread_binding(extent, thread="threadIdx.x"[, annotations=...]):` (one line)
_BOUND_LOOP = re.compile(r'T\.thread_binding\(([^"\n]*?),\s*thread="[^"]+"(.*)\):$', re.MULTILINE)
_GPU_SCOPE = re.compile(r'scope="(?:shared|shared\.dyn|local|warp)"')
# Loop annotations that only change how the same computation is emitted: MetaSchedule's
# software pipelining of shared-memory loads (asynchronous copies, which the CPU's code
# generator cannot emit) and unrolling (slow to compile once the thread loops are serial).
_CODEGEN_ANNOTATION = re.compile(r'"(?:software_pipeline_\w+|pragma_\w*unroll\w*)": (?:\[[^\]]*\]|\d+)(, )?')


def serial_module(mod: tvm.IRModule) -> tvm.IRModule:
    """`mod` with its thread-bound loops made serial, its shared/local buffers made global and
    no pipelining or unrolling annotations: buildable for the CPU. Raises when `mod` binds no
    loop (nothing GPU-scheduled to check)."""
    text, bound = _BOUND_LOOP.subn(r"T.serial(\1\2):", mod.script())
    if not bound:
        raise ValueError("no loop of this module is bound to GPU blocks or threads")
    text = _CODEGEN_ANNOTATION.sub("", _GPU_SCOPE.sub('scope="global"', text))
    return tvm.script.from_source(text)


def call_on_cpu(mod: tvm.IRModule, arrays, name: str = "main"):
    """Build `mod` for this CPU, call `name` on `arrays` (numpy), and return the arrays after
    the call (outputs are written in place)."""
    executable = tvm.compile(mod, target="llvm")
    args = [tvm.runtime.tensor(a) for a in arrays]
    executable[name](*args)
    return [a.numpy() for a in args]


def run_on_cpu(mod: tvm.IRModule, arrays, name: str = "main"):
    """`call_on_cpu` on `serial_module(mod)`: the GPU-scheduled module, thread by thread."""
    return call_on_cpu(serial_module(mod), arrays, name)


def emulated_library(prepared: tvm.IRModule, target: tvm.target.Target):
    """The whole program a CUDA build runs, as a CPU executable: `prepared` (our pipeline's
    Relax module, `pipeline.prepare`) through the passes of TVM's CUDA build that schedule
    what is still unscheduled (dlight's GPU rules), then every PrimFunc made serial."""
    from tvm.relax.backend.cuda import pipeline as cuda_pipeline

    with target:
        scheduled = tvm.transform.Sequential(cuda_pipeline.legalize_passes(target))(prepared)
    emulated = tvm.IRModule()
    for var, func in scheduled.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            func = serial_module(tvm.IRModule({"main": func}))["main"]
            func = func.without_attr("global_symbol")  # the printed copy was named "main"
        emulated[var] = func
    return tvm.compile(emulated, target="llvm")
