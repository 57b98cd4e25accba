"""``--rounds N``: each workload's targets measured N times, the order reversed
every other round, and one row per target made of the rounds' medians.

On a shared VM one round's req/s moves by 10-20 % between runs a minute apart,
which is more than the differences the targets ask about. A ratio is therefore
taken within each round, between rows measured seconds apart, and the row reports
the median of those ratios with their range; reversing the order cancels a steady
drift of the machine's speed across a round."""

from __future__ import annotations

import statistics
from dataclasses import replace

from .measure import Result

MEDIANS = ("rps", "p50_us", "p99_us", "mb_s", "mean_us", "server_cpu_us", "client_cpu_pct", "x_echo",
           "x_protobuf", "p50_vs_echo_us")


def order(targets: list[str], round_index: int) -> list[str]:
    """The targets in the order round ``round_index`` (from 0) measures them."""
    return targets if round_index % 2 == 0 else targets[::-1]


def combine(rounds: list[list[Result]]) -> list[Result]:
    """One row per target, in the first round's order, from rows whose ratios
    ``measure.compare`` already filled within their own round."""
    by_target: dict[str, list[Result]] = {}
    for measured in rounds:
        for r in measured:
            by_target.setdefault(r.target, []).append(r)
    return [_median_row(rows) for rows in by_target.values()]


def _median_row(rows: list[Result]) -> Result:
    ok = [r for r in rows if r.error is None]
    if not ok:
        return rows[-1]  # every round failed: the last one says why
    row = replace(ok[0], rounds=len(ok), failed_rounds=len(rows) - len(ok),
                  calls=sum(r.calls for r in ok), seconds=round(sum(r.seconds for r in ok), 3))
    for field in MEDIANS:
        values = [getattr(r, field) for r in ok if getattr(r, field) is not None]
        setattr(row, field, statistics.median(values) if values else None)
    peaks = [r.server_peak_rss_mib for r in ok if r.server_peak_rss_mib is not None]
    row.server_peak_rss_mib = max(peaks) if peaks else None
    ratios = [r.x_echo for r in ok if r.x_echo is not None]
    row.x_echo_range = (min(ratios), max(ratios)) if len(ratios) > 1 else None
    return row
