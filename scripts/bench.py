#!/usr/bin/env python3
"""Benchmark ParCNetV2 libraries against PyTorch eager, torch.compile and ONNX Runtime, side by side.

  python scripts/bench.py --target x86 --model xt t --batch 1 32 --json bench.json --plot bench.png
  python scripts/bench.py --target cuda --model t --batch 1 32          # on a machine with a GPU
  python scripts/bench.py --target arm --rpc-tracker HOST:9190 --rpc-key rk3288 --pytorch-ms 812
  python scripts/bench.py --target arm --emulate                        # correctness only, no times

x86/CUDA: each backend runs in a fresh process, one after the other, at the same thread count;
rows give the median and p90 after warm-up and the peak memory the backend added (see
parcnet_tvm/bench.py). ARM: the TVM libraries are checked and timed on the board through RPC;
--pytorch-ms adds PyTorch's time measured on the board ([MODEL[@BATCH]=]MS, e.g. xt=812 t@32=9650).
tvm-tuned uses --tuning-log, else the shipped log tuning_logs/<model>-<target>-<size>[-b<batch>]/.
"""

import argparse
import contextlib
import functools
import json

from parcnet_tvm import board
from parcnet_tvm.bench import (DEFAULT_BACKENDS, BACKENDS, Board, BenchCase, bench_case, format_table, json_rows,
                               machine_header, plot)
from parcnet_tvm.cli import run_main
from parcnet_tvm.errors import ParcnetError
from parcnet_tvm.model import parse_input_size, variant_key
from parcnet_tvm.targets import get_target, host_cores, local_cuda_arch
from parcnet_tvm.tuning_log import has_log


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="x86", help="x86 (default), arm (a board through RPC) or cuda")
    parser.add_argument("--model", nargs="+", default=["xt", "t"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    parser.add_argument("--input-size", default="224")
    parser.add_argument("--repeat", type=int, default=30, help="timed runs per backend (default 30)")
    parser.add_argument("--max-seconds", type=float, default=60,
                        help="fewer repeats (at least 2) for a backend whose runs would take longer than this")
    parser.add_argument("--threads", type=int, default=host_cores(), help="threads for every backend (default all cores)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS,
                        help="default: all that apply to the target")
    parser.add_argument("--tuning-log", nargs="+", default=[], metavar="DIR", help="logs for tvm-tuned")
    parser.add_argument("--json", metavar="OUT.json", help="write the rows as JSON")
    parser.add_argument("--plot", metavar="OUT.png", help="write a bar chart (matplotlib)")
    arm = board.add_board_arguments(parser, "run on the emulated board (qemu): checks correctness, shows no times")
    arm.add_argument("--pytorch-ms", nargs="+", default=[], metavar="[MODEL[@BATCH]=]MS",
                     help="PyTorch eager time measured on the board")
    return parser.parse_args(argv)


def parse_pytorch_ms(values, models, batches) -> dict:
    """{(model, batch): ms} from MS (one model and batch), MODEL=MS or MODEL@BATCH=MS."""
    given = {}
    for value in values:
        key, _, ms = value.rpartition("=")
        try:
            ms = float(ms)
        except ValueError:
            raise ParcnetError(f"--pytorch-ms {value!r}: expected [MODEL[@BATCH]=]MS, e.g. 812 or xt=812") from None
        if not key:
            if len(models) * len(batches) != 1:
                raise ParcnetError("--pytorch-ms MS is ambiguous with several models or batches: "
                                   "give MODEL=MS or MODEL@BATCH=MS")
            given[(models[0], batches[0])] = ms
            continue
        model, _, batch = key.partition("@")
        for b in ([int(batch)] if batch.isdigit() else batches):
            given[(variant_key(model), b)] = ms
    return given


def check_args(args):
    named = get_target(args.target)
    if args.repeat < 2 or args.threads < 1:
        raise ParcnetError("--repeat must be >= 2 and --threads >= 1")
    if any(batch < 1 for batch in args.batch):
        raise ParcnetError(f"--batch {args.batch}: every batch must be >= 1")
    board.check_board_args(args.rpc_tracker, args.rpc_key, args.rpc)
    on_board = bool(args.rpc or args.rpc_tracker or args.emulate)
    if named.name != "arm" and (on_board or args.pytorch_ms):
        raise ParcnetError("--rpc/--rpc-tracker/--emulate/--pytorch-ms are for --target arm (a board)")
    if named.name == "arm" and not on_board:
        raise ParcnetError("bench.py --target arm times libraries on the board: give --rpc-tracker HOST:PORT "
                           "--rpc-key KEY or --rpc HOST:PORT (or --emulate to check correctness under qemu)")
    if args.emulate and (args.rpc or args.rpc_tracker):
        raise ParcnetError("--emulate starts its own emulated board: drop --rpc/--rpc-tracker")
    if args.emulate and args.pytorch_ms:
        raise ParcnetError("--emulate checks correctness and shows no times: drop --pytorch-ms")
    if named.name == "cuda" and not local_cuda_arch():
        raise ParcnetError("bench.py --target cuda needs an NVIDIA GPU, and none is visible on this machine "
                           "(build CUDA libraries here with build.py --target cuda; time them on the GPU machine)")
    for log_dir in args.tuning_log:
        if not has_log(log_dir):
            raise ParcnetError(f"--tuning-log {log_dir}: no tuning log there (a work dir of scripts/tune.py)")
    return named


@contextlib.contextmanager
def board_for(args, log):
    """The Board the ARM libraries run on (None for x86/CUDA)."""
    if args.emulate:
        with board.emulated_board(log) as tracker:
            yield Board(functools.partial(board.connect, tracker, board.EMULATED_KEY, session_timeout=600),
                        "local tracker " + tracker, emulated=True)
    elif args.rpc or args.rpc_tracker:
        where = f"RPC server {args.rpc}" if args.rpc else f"tracker {args.rpc_tracker}, key {args.rpc_key}"
        yield Board(functools.partial(board.connect, args.rpc_tracker, args.rpc_key, args.rpc, session_timeout=600),
                    where)
    else:
        yield None


def main(argv=None):
    args = parse_args(argv)
    named = check_args(args)
    size = parse_input_size(args.input_size)
    models = [variant_key(m) for m in args.model]
    pytorch_ms = parse_pytorch_ms(args.pytorch_ms, models, args.batch)
    backends = args.backends or DEFAULT_BACKENDS[named.name]
    log = functools.partial(print, flush=True)
    rows = []
    with board_for(args, log) as the_board:
        for batch in args.batch:
            for model in models:
                rows += bench_case(BenchCase(model, batch, size, named.name), backends, args.repeat, args.threads,
                                   args.max_seconds, args.tuning_log or None, log, board=the_board,
                                   pytorch_ms=pytorch_ms.get((model, batch)))
        header = machine_header(args.threads, named.name, the_board)
    print(format_table(rows, header))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(json_rows(rows), out, indent=1)
        print(f"rows written to {args.json}")
    if args.plot:
        reason = plot(rows, header, args.plot)
        print(f"plot: skipped ({reason})" if reason else f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    run_main(main)
