"""The RK3288 estimate (parcnet_tvm/estimate.py): the fit reruns from the stored counts to the
same numbers, it holds on rows it never saw, and what users read is labelled an estimate."""

import copy

import numpy as np
import pytest

from parcnet_tvm.errors import ParcnetError
from parcnet_tvm.estimate import (
    CALIBRATION_ENGINE,
    Calibrated,
    calibration_rows,
    fit,
    loo_errors,
    read_report,
    refit,
    row_terms,
)


@pytest.fixture(scope="module")
def report():
    return read_report()


def test_the_fit_reproduces_the_report_from_its_stored_counts(report):
    model, rows = refit(copy.deepcopy(report["rows"]))
    assert model.as_dict() == report["coefficients_cycles"]
    for stored, again in zip(report["rows"], rows):
        assert again["estimate_ms"] == pytest.approx(stored["estimate_ms"], abs=0.02), stored["model"]
        assert again["loo_estimate_ms"] == pytest.approx(stored["loo_estimate_ms"], abs=0.02), stored["model"]


def test_leave_one_out_error_over_ncnns_published_rows(report):
    calib = calibration_rows(report["rows"])
    assert len(calib) >= 12 and {r["threads"] for r in calib} == {1, 4}
    errors = np.abs(loo_errors(report["rows"]))
    assert np.median(errors) <= 0.20 and errors.max() <= 0.40, errors


def test_a_held_out_row_is_never_in_the_fit(report):
    mnn = [r for r in report["rows"] if r["engine"] == "mnn"]
    assert [r["published_ms"] for r in mnn if r["published_ms"]] == [840]  # the paper's Table 7, T
    assert all(r["engine"] != CALIBRATION_ENGINE for r in mnn)
    assert all(r["loo_estimate_ms"] == r["estimate_ms"] for r in mnn)
    # changing the held-out row's published time changes no coefficient
    rows = copy.deepcopy(report["rows"])
    for r in rows:
        if r["engine"] == "mnn" and r["published_ms"]:
            r["published_ms"] *= 10
    assert refit(rows)[0].as_dict() == report["coefficients_cycles"]


def test_the_busiest_thread_sets_the_four_thread_time():
    idle = {k: 0 for k in ("neon_q_mac", "neon_q", "neon_d_mac", "neon_d", "vfp", "simd_load", "simd_store",
                           "int_alu", "int_load", "int_store", "branch", "other", "l1_misses", "l2_misses",
                           "futex_calls")}
    light = dict(idle, insns=1, neon_q_mac=10 ** 6)
    heavy = dict(idle, insns=1, neon_q_mac=3 * 10 ** 6)
    terms = row_terms([light, heavy, light], 4)
    assert terms[0] == 3.0  # millions of q-register instructions on the busiest thread


def test_too_few_calibration_rows_is_one_clear_error(report):
    with pytest.raises(ParcnetError, match="at least"):
        fit(calibration_rows(report["rows"])[:3])


def test_the_line_says_estimate_and_not_measurement(report):
    line = Calibrated.load().line(300.4, 800.2)
    assert line.startswith("RK3288 estimate: 300 ms at 4 threads, 800 ms at 1 thread (±")
    assert "not a measurement" in line and "ncnn's published RK3288 table" in line


def test_mnn_running_our_t_is_estimated_within_30_percent_of_the_papers_840_ms(report):
    model, rows = refit(copy.deepcopy(report["rows"]))
    (mnn,) = [r for r in rows if r["engine"] == "mnn" and r["threads"] == 4]
    assert abs(mnn["estimate_ms"] / 840 - 1) <= 0.30, mnn["estimate_ms"]


def test_the_report_estimates_our_four_sizes_and_both_peers_on_t(report):
    rows = {(r["engine"], r["model"], r["threads"]) for r in report["rows"]}
    for threads in (4, 1):
        assert {("parcnet-tvm", m, threads) for m in ("xt", "t", "s", "b")} <= rows
        assert {("mnn", "t", threads), ("ncnn", "t", threads)} <= rows


def test_the_footprint_counts_the_weights_once_with_activations_code_and_runtime(xt_arm, runtime):
    """What a board needs for a library: its weights file (one copy), its planned activations,
    its code and the runtime's libraries; labelled an estimate where users read it."""
    from parcnet_tvm.estimate import footprint
    from parcnet_tvm.params import path_for
    from parcnet_tvm.weights import prepare_model

    library, _ = xt_arm
    needs = footprint(library, runtime)
    weights = path_for(library).stat().st_size / 2**20
    assert abs(needs["weights"] - weights) <= 0.05
    torch_weights = 4 * sum(p.numel() for p in prepare_model("xt", 64).parameters()) / 2**20
    assert 0.95 * torch_weights < needs["weights"] < 1.1 * torch_weights  # direct on ARM: no Toeplitz copies
    assert needs["activations"] > 0 and needs["runtime"] > 1
    assert needs["total"] < needs["weights"] + needs["activations"] + 16


def test_our_t_needs_less_memory_on_the_board_than_mnn_does(report):
    """The paper's Table 7: MNN runs T on the RK3288 in 118 MB."""
    (ours,) = [r for r in report["rows"] if r["engine"] == "parcnet-tvm" and r["model"] == "t" and r["threads"] == 4]
    assert ours["footprint_mib"]["total"] <= 118, ours["footprint_mib"]
