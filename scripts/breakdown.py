#!/usr/bin/env python3
"""Where the time goes: per-kernel times of a built library next to PyTorch's profiler.

  python scripts/breakdown.py build/parcnetv2_t-x86-224.so --top 20

Reads the manifest beside the library (model, input shape, weights). x86 and CUDA libraries:
kernel times are each kernel timed alone on its own arguments
inside one run of the model (TVM 0.27's VM has no profiler); the same ops in every block add
up to one row. The PyTorch side is torch.profiler's self CPU time per aten op.
ARM libraries: the RK3288 estimate per kernel (1 thread), counted on the emulated board and
priced by the calibrated cost model: an estimate, not a measurement.
"""

import argparse

from parcnet_tvm import manifest as manifest_io
from parcnet_tvm.breakdown import estimate_kernels, format_breakdown, profile_library, profile_pytorch
from parcnet_tvm.cli import run_main
from parcnet_tvm.errors import ParcnetError
from parcnet_tvm.runtime import why_not_runnable
from parcnet_tvm.targets import cpu_model_name, get_target, host_cores
from parcnet_tvm.weights import model_from_manifest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("library", help="the .so written by scripts/build.py or tune.py")
    parser.add_argument("--top", type=int, default=20, help="rows per table (default 20)")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per kernel (median)")
    args = parser.parse_args(argv)
    manifest = manifest_io.read(args.library)
    named = get_target(manifest["target_name"], cuda_arch=manifest["target"].get("arch"))
    if named.emulated:
        reason = why_not_runnable(named)
        if reason:
            raise ParcnetError(f"cannot estimate {args.library} here: {reason}")
        result = estimate_kernels(args.library)
        print(f"{manifest['model']} {manifest['input_shape']}: {result['line']}\n")
        print(format_breakdown(f"RK3288 estimate per kernel, 1 thread (not a measurement) {args.library}", result,
                               args.top))
        return 0
    if manifest.get("cuda_graph"):
        raise ParcnetError(f"{args.library} replays its kernels from a CUDA graph, which hides them from the VM: "
                           "rebuild it with scripts/build.py --no-cuda-graph to profile it")
    reason = why_not_runnable(named)
    if reason:
        raise ParcnetError(f"cannot profile {args.library} here: {reason}")
    print(f"{manifest['model']} {manifest['input_shape']} on {cpu_model_name()}, {host_cores()} threads "
          f"({named.description})\n")
    print(format_breakdown(f"TVM {args.library}", profile_library(args.library, named.device(), args.repeat),
                           args.top))
    print()
    print(format_breakdown("PyTorch eager", profile_pytorch(model_from_manifest(manifest), manifest["input_shape"],
                                                            host_cores()), args.top))
    return 0


if __name__ == "__main__":
    run_main(main)
