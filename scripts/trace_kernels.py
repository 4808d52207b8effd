#!/usr/bin/env python3
"""Find the kernel that makes a library wrong: run the model built for TARGET and the same
model built for this CPU on one input, kernel call by kernel call, and name the first call
whose output differs (or whose inputs were changed between calls).

  python3 scripts/trace_kernels.py --target cuda --model xt --size 64 --batch 2

The CPU reference is built from the target's own graph (after our rewrite and graph passes,
with exact maths), so both call the same kernels in the same order. When the first
difference is a wrong kernel on CUDA, each of our CUDA rules (and dlight's Fallback) is tried on
that kernel alone to show which schedule is at fault. Small models only: every argument of every call is kept.
"""

import argparse

import numpy as np
import tvm

from parcnet_tvm.cli import run_main
from parcnet_tvm.frontend import import_model
from parcnet_tvm.pipeline import PipelineOptions, compile_relax, fused_module
from parcnet_tvm.schedules import apply_hand_schedules, rule_name, rules_for
from parcnet_tvm.targets import get_target
from parcnet_tvm.verify import (compare, first_divergence, load_vm, pytorch_output, reference_input, run_vm,
                                trace_kernels)
from parcnet_tvm.weights import prepare_model


def rules_on_kernel(unscheduled, name: str, named, ref_call: dict) -> dict:
    """{rule: max abs error of that kernel scheduled by that rule alone, on the reference inputs}."""
    target = named.target
    if name not in [g.name_hint for g in unscheduled.get_global_vars()]:
        return {"(not found)": float("nan")}
    func = unscheduled[name].with_attr("global_symbol", name)
    errors = {}
    for rule in rules_for(target):
        label = rule_name(rule)
        try:
            with target:
                sch = rule.apply(func, target, False)
            if sch is None:
                errors[label] = "does not apply"
                continue
            kernel = tvm.compile(sch.mod, target=target)
            device = tvm.cuda(0)
            args = [tvm.runtime.tensor(v, device) for v in ref_call["before"]]
            kernel[name](*args)
            errors[label] = max(float(np.abs(a.numpy() - b).max()) for a, b in zip(args, ref_call["after"]))
        except Exception as error:  # a rule that fails to build is a finding too
            errors[label] = f"failed: {str(error).splitlines()[0][:120]}"
    return errors


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="cuda")
    parser.add_argument("--model", default="xt")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args(argv)

    model = prepare_model(args.model, args.size)
    shape = (args.batch, 3, args.size, args.size)
    mod = import_model(model, shape, "torch")
    x = reference_input(shape)
    expected = pytorch_output(model, x)
    named = get_target(args.target)
    reference_target = get_target("x86")
    fused = fused_module(mod, named, PipelineOptions(exact_math=True))  # the target's graph, unscheduled
    # No CUDA graph: the kernels must be called one by one from the VM to be traced.
    builds = {args.target: (named, compile_relax(mod, named, PipelineOptions(exact_math=True, cuda_graph=False))),
              "cpu reference": (reference_target, tvm.compile(apply_hand_schedules(fused, reference_target.target),
                                                     target=reference_target.target))}
    traces = {}
    for name, (target, executable) in builds.items():
        device = target.device()
        result = compare(run_vm(load_vm(executable, device), x, device), expected, 1e-3)
        print(f"{name}: plain run vs PyTorch: max abs error {result.get('max_abs_error', float('nan')):.3g}",
              flush=True)
        traces[name] = trace_kernels(executable, device, x)
        print(f"{name}: {len(traces[name])} kernel calls traced", flush=True)
    found = first_divergence(traces[args.target], traces["cpu reference"])
    if found is None:
        print("every kernel call agrees with the CPU build when run one at a time (with a copy, and so a "
              "sync, after each): if the plain run above is wrong, look at what runs between kernels")
        return 0
    print("first difference:", found["detail"])
    if found["cause"] == "kernel" and args.target == "cuda":
        errors = rules_on_kernel(fused, found["name"], named,
                                        traces["cpu reference"][found["index"]])
        for rule, error in errors.items():
            print(f"  {found['name']} scheduled by {rule} alone: {error}")
    return 1


if __name__ == "__main__":
    run_main(main)
