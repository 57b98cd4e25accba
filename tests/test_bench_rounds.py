"""The bench's arithmetic over rounds (bench/rounds.py) and issue 10's checks
(bench/report.py) on rows as the bench makes them: ratios taken within a round,
medians across rounds, and each icow paired with the echo of its own stack."""

from __future__ import annotations

import pytest
from bench import report, rounds
from bench.measure import Result, compare


def row(target: str, rps: float, p50: float = 100.0, workload: str = "identity-1x16-c8", **extra) -> Result:
    client = "in-process" if target == "ort_inprocess" else "perf_analyzer"
    return Result(workload, target, client, 8, calls=int(rps), seconds=1.0, rps=rps, p50_us=p50, p99_us=2 * p50,
                  **extra)


def measured_round(*rows: Result) -> list[Result]:
    got = list(rows)
    compare(got)
    return got


def test_order_reverses_every_other_round():
    targets = ["a", "b", "c"]
    assert [rounds.order(targets, i) for i in range(3)] == [["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"]]


def test_ratios_are_taken_within_a_round_then_their_median():
    # The machine halves its speed in round 2: both rows move together, so the ratio holds.
    combined = rounds.combine([
        measured_round(row("echo_server", 1000), row("icow_native", 900)),
        measured_round(row("echo_server", 500), row("icow_native", 480)),
        measured_round(row("echo_server", 1000), row("icow_native", 920)),
    ])
    icow = next(r for r in combined if r.target == "icow_native")
    assert icow.rounds == 3
    assert icow.rps == 900  # the median req/s of the rounds
    assert icow.x_echo == pytest.approx(0.92)  # median of 0.90, 0.96, 0.92, not 900 / 1000
    assert icow.x_echo_range == pytest.approx((0.90, 0.96))
    assert icow.calls == 900 + 480 + 920


def test_each_icow_is_divided_by_the_echo_of_its_own_stack():
    got = measured_round(row("echo_server", 1000), row("icow_native", 950), row("plane_echo", 4000),
                         row("icow_plane", 3000))
    by = {r.target: r for r in got}
    assert by["icow_native"].x_echo == pytest.approx(0.95)
    assert by["icow_plane"].x_echo == pytest.approx(0.75)
    assert by["plane_echo"].x_echo is None  # a floor has no ratio of its own


def test_a_failed_round_is_left_out_and_marked():
    failed = row("icow_native", 0)
    failed.error = "perf_analyzer exited with 2: Failed to obtain stable measurement."
    combined = rounds.combine([
        measured_round(row("echo_server", 1000), row("icow_native", 900)),
        measured_round(row("echo_server", 1000), failed),
    ])
    icow = next(r for r in combined if r.target == "icow_native")
    assert (icow.error, icow.rounds, icow.failed_rounds, icow.rps) == (None, 1, 1, 900)
    assert icow.x_echo_range is None  # one ratio: no range to show
    assert "§" in report.cells(icow, bulk=False)[3]


def test_every_round_failed_keeps_the_error():
    failed = row("icow_native", 0)
    failed.error = "setup: boom"
    combined = rounds.combine([[failed], [failed]])
    assert combined[0].error == "setup: boom"


def test_checks_pair_the_plane_with_plane_echo():
    c1 = "identity-1x16-c1"
    results = measured_round(
        row("ort_inprocess", 80_000, p50=11, workload=c1), row("echo_server", 2000, p50=480, workload=c1),
        row("icow_native", 1800, p50=520, workload=c1), row("plane_echo", 3000, p50=300, workload=c1),
        row("icow_plane", 2900, p50=320, workload=c1),
        row("echo_server", 3000), row("icow_native", 2700), row("plane_echo", 10_000), row("icow_plane", 9600))
    found = {c.target: c for c in report.checks(results)}
    assert found["1×16 c1, icow_native: p50 ≤ echo_server p50 + in-process ORT p50 + 15 µs"].met is False
    assert found["1×16 c1, icow_plane: p50 ≤ plane_echo p50 + in-process ORT p50 + 15 µs"].met is True
    assert found["identity-1x16-c8, icow_native: throughput ≥ 0.95 × echo_server"].met is False  # 0.90
    assert found["identity-1x16-c8, icow_plane: throughput ≥ 0.95 × plane_echo"].met is True  # 0.96
    assert found["identity-12MiB-c1, icow_plane: throughput ≥ 0.95 × plane_echo"].met is None  # not run


def test_checks_leave_the_plane_out_where_it_did_not_run():
    targets = {c.target for c in report.checks(measured_round(row("echo_server", 3000), row("icow_native", 2900)))}
    assert not any("icow_plane" in t for t in targets)
    assert "identity-1x16-c8, icow_native: throughput ≥ 0.95 × echo_server" in targets


def test_the_c1_latency_check_takes_each_rounds_own_difference():
    # Round 3 caught icow in the VM's slow mode and its echo in the fast one; the medians
    # of the rows (600 against 260) would say "not met", the rounds' differences say +20.
    c1 = "identity-1x16-c1"

    def one_round(echo_p50: float, icow_p50: float) -> list[Result]:
        return measured_round(row("ort_inprocess", 80_000, p50=11, workload=c1),
                              row("plane_echo", 3000, p50=echo_p50, workload=c1),
                              row("icow_plane", 2900, p50=icow_p50, workload=c1))

    combined = rounds.combine([one_round(250, 270), one_round(600, 620), one_round(260, 600)])
    check = next(c for c in report.checks(combined) if c.target.startswith("1×16 c1, icow_plane"))
    assert check.met is True
    assert "+20.0 µs vs 11.0 + 15 = 26.0 µs" in check.measured
