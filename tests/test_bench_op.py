"""MetaSchedule takes our hand schedules as the design space of our op's tasks."""

import json

import numpy as np
import pytest
import tvm
from support import one_line, run_script, script_main, slow

from parcnet_tvm import ParcnetError
from parcnet_tvm.bench_op import conv_pair_module
from parcnet_tvm.pipeline import PipelineOptions, compile_relax
from parcnet_tvm.rewrite import rewrite_oversized_convs
from parcnet_tvm.targets import get_target
from parcnet_tvm.tuning.tasks import tune_oversized_ops
from parcnet_tvm.tuning_log import RECORD_FILE
from parcnet_tvm.verify import load_vm


@slow  # the default run checks the same traces in the tiny tune.py run (test_tune_job.py)
def test_tuning_our_op_samples_tile_knobs_and_applies(tmp_path):
    named = get_target("x86")
    channels, height, width = 16, 12, 12
    rng = np.random.default_rng(0)
    wh = (0.1 * rng.standard_normal((channels, 1, 2 * height - 1, 1))).astype(np.float32)
    ww = (0.1 * rng.standard_normal((channels, 1, 1, 2 * width - 1))).astype(np.float32)
    module = conv_pair_module(wh, ww, (1, channels, height, width))
    rewritten, _, _ = rewrite_oversized_convs(module)
    database = tune_oversized_ops(rewritten, named, tmp_path, trials=4, trials_per_iter=4)
    records = database.get_all_tuning_records()
    assert records and all(r.run_secs for r in records)
    trace = str(records[0].trace)
    assert "sample_categorical" in trace  # our tile sizes are the knobs
    assert "schedule_rule" in trace and "cache_write" in trace  # our rule built the space
    lines = (tmp_path / RECORD_FILE).read_text().splitlines()
    assert len(lines) == len(records) and all(json.loads(line) for line in lines)

    x = rng.standard_normal((1, channels, height, width), dtype=np.float32)
    tuned = load_vm(compile_relax(module, named, PipelineOptions(tuning_logs=(tmp_path,))), tvm.cpu())
    generic = load_vm(compile_relax(module, named, PipelineOptions(custom_op=False)), tvm.cpu())
    got = tuned["main"](tvm.runtime.tensor(x)).numpy()
    assert np.abs(got - generic["main"](tvm.runtime.tensor(x)).numpy()).max() <= 1e-4


def test_bench_op_script_writes_rows(tmp_path):
    out = tmp_path / "op.json"
    done = run_script("bench_op.py", "--model", "xt", "--input-size", "64", "--impl", "pytorch", "ours-auto",
                      "--repeat", "2", "--number", "1", "--json", out)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    assert len(rows) == 8  # 4 stages x 2 impls
    keys = {"model", "stage", "blocks", "channels", "height", "width", "taps_h", "taps_w", "impl", "median_ms"}
    assert all(set(r) == keys and r["median_ms"] > 0 for r in rows)
    assert {r["taps_h"] for r in rows} == {31, 15, 7, 3}
    assert "| parcnetv2_xt | 1 | 48 | 16x16 | 31+31 |" in done.stdout
    # the whole forward pass: each stage's time times its blocks (XT: 3+3+9+2)
    total = next(line for line in done.stdout.splitlines() if "all (3+3+9+2 blocks)" in line)
    expected = sum(r["blocks"] * r["median_ms"] for r in rows if r["impl"] == "pytorch")
    assert abs(float(total.split("|")[6]) - expected) < 1e-3


def test_gpu_timing_path_reads_the_vm_timer_in_ms():
    """bench_op times TVM on a GPU with the VM's own timer; the same call on the CPU: a C++
    loop of `number` calls per sample, the median returned in ms."""
    from parcnet_tvm.bench_op import _time_tvm

    rng = np.random.default_rng(0)
    weight = (0.1 * rng.standard_normal((4, 1, 15, 1))).astype(np.float32)
    module, _, _ = rewrite_oversized_convs(conv_pair_module(weight, weight.reshape(4, 1, 1, 15), (1, 4, 8, 8)))
    vm = load_vm(compile_relax(module, get_target("x86")), tvm.cpu())
    x = tvm.runtime.tensor(rng.standard_normal((1, 4, 8, 8)).astype(np.float32))
    ms = _time_tvm(vm, x, tvm.cpu(), gpu=True, repeat=3, number=5)
    assert 0 < ms < 50


def test_bench_op_counts_must_be_positive():
    with pytest.raises(ParcnetError, match=r"--repeat must be >= 1 \(got 0\)") as caught:
        script_main("bench_op.py")("--model", "xt", "--input-size", "64", "--repeat", "0")
    one_line(caught.value)
