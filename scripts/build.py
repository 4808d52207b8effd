#!/usr/bin/env python3
"""Compile ParCNetV2 for a named target, export OUT.so + OUT.json and verify it against PyTorch.

  python scripts/build.py --model xt --target x86 --input-size 224 -o build/xt.so
"""

import argparse

from parcnet_tvm import compile, manifest as manifest_io
from parcnet_tvm.cli import run_main
from parcnet_tvm.errors import ParcnetError
from parcnet_tvm.frontend import FRONTENDS
from parcnet_tvm.model import VARIANTS
from parcnet_tvm.oversized import ALGOS
from parcnet_tvm.targets import TARGET_NAMES


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="xt", help=f"variant: {', '.join(VARIANTS)} (default xt)")
    parser.add_argument("--target", default="x86", help=f"one of {', '.join(TARGET_NAMES)} (default x86)")
    parser.add_argument("--input-size", default="224", help="224, or HxW such as 200 or 240x320 (any size the official model runs)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--checkpoint", help="weights: a state dict or a training checkpoint (.pth, .pth.tar; "
                        "its EMA weights when it holds both, as timm's --use-ema) or .safetensors; "
                        "random weights if omitted")
    parser.add_argument("--resize-kernels", action="store_true",
                        help="resize the oversized kernels to 2H-1 for the input size (the paper, Sec. 3.1) "
                             "instead of the official model's fixed 111/55/27/13")
    parser.add_argument("--frontend", default="torch", choices=FRONTENDS)
    parser.add_argument("--onnx", metavar="FILE.onnx",
                        help="build from your ONNX export of ParCNetV2 instead (its input size; batch from "
                             "--batch); verified against onnxruntime")
    parser.add_argument("--cuda-arch", help="CUDA arch when no GPU is visible (default sm_90)")
    parser.add_argument("--mcpu", help="override the detected x86 CPU name (LLVM -mcpu)")
    parser.add_argument("--no-custom-op", action="store_true",
                        help="keep TVM's generic conv2d for the oversized convolutions (for comparison)")
    parser.add_argument("--tvm-default-schedules", action="store_true",
                        help="TVM's own default build of everything (no op rewrite, no hand schedules): "
                             "the untuned baseline")
    parser.add_argument("--oversized-algo", default="auto", choices=ALGOS,
                        help="algorithm of our oversized op (default: auto, see parcnet_tvm/oversized.py)")
    parser.add_argument("--tuning-log", nargs="+", default=[], metavar="DIR",
                        help="apply these tuning logs (work dirs of scripts/tune.py) measured on this device")
    parser.add_argument("--any-device", action="store_true",
                        help="also apply tuning logs measured on another device (default: refused)")
    parser.add_argument("--exact-math", action="store_true", help="exact erf in GELU (default: fast polynomial)")
    parser.add_argument("--no-cuda-graph", action="store_true",
                        help="CUDA: launch every kernel from the VM instead of replaying a CUDA graph")
    parser.add_argument("--no-verify", action="store_true", help="skip the comparison with PyTorch")
    parser.add_argument("--time", type=int, default=0, metavar="N",
                        help="after building, time the library and PyTorch eager N times each (x86/cuda)")
    parser.add_argument("--baseline", nargs="+", default=[], metavar="LIB.so",
                        help="with --time: also time these libraries (same model/input/target) side by side")
    parser.add_argument("-o", "--output", help="library path (default build/parcnetv2_<model>-<target>-<size>.so)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.time and args.target == "arm":
        raise ParcnetError("--time: ARM libraries run here only under emulation, and emulated time is not "
                           "latency: time it on the board (parcnet_runner LIB.so --input x.raw --repeat 50) or "
                           "with scripts/bench.py --target arm --rpc BOARD:9090")
    for baseline in args.baseline:  # before the build, not after it
        manifest_io.read(baseline)
    if args.baseline and not args.time:
        raise ParcnetError("--baseline libraries are timed with --time N: add it, or drop --baseline")
    if args.time and args.onnx:
        raise ParcnetError("--time compares with PyTorch eager, which an --onnx build does not have; "
                           "time the library with scripts/bench.py")
    built = compile(
        args.model, onnx=args.onnx, target=args.target, input_size=args.input_size, batch=args.batch,
        checkpoint=args.checkpoint, output=args.output, tuning_logs=args.tuning_log or (),
        any_device=args.any_device, log=print, resize_kernels=args.resize_kernels, frontend=args.frontend,
        cuda_arch=args.cuda_arch, mcpu=args.mcpu, verify=not args.no_verify,
        custom_op=not args.no_custom_op, oversized_algo=args.oversized_algo,
        tvm_default=args.tvm_default_schedules, exact_math=args.exact_math, cuda_graph=not args.no_cuda_graph,
    )
    if args.time:
        from parcnet_tvm.bench.compare import compare_with_pytorch, format_latency_table

        rows = compare_with_pytorch(built.library, built.manifest, repeat=args.time, baselines=args.baseline)
        print(format_latency_table(rows, built.manifest))
    return 0


if __name__ == "__main__":
    run_main(main)
