"""The results as people read them: one table (terminal and markdown), issue 10's
targets checked against the rows, and a PNG chart."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .measure import Result, floor_of
from .workloads import Workload

if TYPE_CHECKING:
    import matplotlib.axes

FEW_CALLS = 100  # below this, p99 is the slowest call or next to it
COLUMNS = ("workload", "target", "client", "calls", "req/s", "p50 µs", "p99 µs", "MB/s",
           "srv CPU µs/req", "srv peak RSS MiB", "client CPU %", "× echo", "× protobuf", "p50 − echo µs")
TEXT_COLUMNS = 3  # left-aligned; the rest are numbers, right-aligned


def _us(x: float) -> str:
    return f"{x:.1f}" if abs(x) < 100 else f"{x:,.0f}"


def _opt(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def cells(r: Result, bulk: bool) -> list[str]:
    if r.error is not None:
        return [r.workload, r.target, r.client, "FAILED", r.error[:110]] + [""] * (len(COLUMNS) - 5)
    p99 = _us(r.p99_us) + ("*" if r.calls < FEW_CALLS else "")
    x_echo = "-" if r.x_echo is None else f"{r.x_echo:.2f}x"
    if r.x_echo_range:
        x_echo += f" ({_range(r.x_echo_range)})"
    calls = f"{r.calls:,}" + ("§" if r.failed_rounds else "")
    rss = _opt(r.server_peak_rss_mib, ",.0f") + ("†" if r.peak_rss_scope == "lifetime" else "")
    return [r.workload, r.target, r.client, calls, f"{r.rps:,.0f}" if r.rps >= 10 else f"{r.rps:.2f}",
            _us(r.p50_us), p99, f"{r.mb_s:,.0f}" if bulk else "",
            "-" if r.server_cpu_us is None else _us(r.server_cpu_us) + ("‡" if r.client == "in-process" else ""),
            rss, _opt(r.client_cpu_pct, ".0f"), x_echo,
            _opt(r.x_protobuf, ".2f") + ("x" if r.x_protobuf else ""),
            "-" if r.p50_vs_echo_us is None else f"{r.p50_vs_echo_us:+,.1f}"]


def _rows(results: list[Result], workloads: list[Workload]) -> list[list[str]]:
    bulk = {w.name: w.bulk for w in workloads}
    return [cells(r, bulk[r.workload]) for r in results]


def footnotes(results: list[Result]) -> list[str]:
    notes = ["‡ ort_inprocess: no server; the CPU is this process's own per call (the compute floor's CPU)."]
    if any(r.peak_rss_scope == "lifetime" for r in results):
        notes.append("† peak RSS over the server's whole life: /proc/<pid>/clear_refs could not reset VmHWM.")
    if any(r.error is None and r.calls < FEW_CALLS for r in results):
        notes.append(f"* fewer than {FEW_CALLS} calls: p99 is about the slowest call; run longer (--duration).")
    if any(r.rounds > 1 for r in results):
        notes.append("With --rounds: each figure is the median of the rounds (calls: their sum; peak RSS: the "
                     "highest); × echo is the median of the rounds' own ratios, (lowest–highest) beside it.")
    if any(r.failed_rounds for r in results):
        notes.append("§ some rounds of this row failed and are left out of its medians (see the JSON's notes).")
    return notes


def text_table(results: list[Result], workloads: list[Workload]) -> str:
    rows = [list(COLUMNS)] + _rows(results, workloads)
    widths = [max(len(c[i]) for c in rows if len(c[i]) < 40) for i in range(len(COLUMNS))]
    lines, previous = [], COLUMNS[0]
    for c in rows:
        if c[0] != previous and previous != COLUMNS[0]:
            lines.append("")  # a blank line between workloads
        previous = c[0]
        failed = c[3] == "FAILED"
        lines.append("  ".join(x.ljust(w) if i < TEXT_COLUMNS or failed and i == 4 else x.rjust(w)
                               for i, (x, w) in enumerate(zip(c, widths))).rstrip())
    return "\n".join(lines + [""] + footnotes(results))


def markdown_table(results: list[Result], workloads: list[Workload]) -> str:
    align = ["---"] * TEXT_COLUMNS + ["--:"] * (len(COLUMNS) - TEXT_COLUMNS)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in _rows(results, workloads)]
    return "\n".join(lines + [""] + [f"{n}  " for n in footnotes(results)])


# -- issue 10's targets -------------------------------------------------------

@dataclass
class Check:
    target: str
    measured: str
    met: bool | None  # None: a row it needs is missing or failed




def checks(results: list[Result]) -> list[Check]:
    """Issue 10's measurable targets, each from the rows of this run."""
    row = {(r.workload, r.target): r for r in results if r.error is None}
    ran = {r.target for r in results}
    out = []
    for target in ("icow_native", "icow_plane"):  # each against its own stack's echo; the plane where it ran
        if target == "icow_native" or target in ran:
            out += _pair_checks(lambda w, t: row.get((w, t)), target, floor_of(target))
    unbatched, batched = row.get(("mlp1024-b1-c16", "icow_native")), row.get(("mlp1024-batched-b1-c16", "icow_native"))
    if unbatched or batched:
        out.append(_batching(unbatched, batched))
    return out


def _pair_checks(get: Callable[[str, str], Result | None], target: str, floor: str) -> list[Check]:
    icow, echo, ort = (get("identity-1x16-c1", t) for t in (target, floor, "ort_inprocess"))
    what = f"1×16 c1, {target}: p50 ≤ {floor} p50 + in-process ORT p50 + 15 µs"
    if icow and echo and ort and icow.p50_vs_echo_us is not None:
        # The difference is taken within each round, as the ratios are: the VM's c1 latency
        # flips between modes (echo p50 250 or 600 µs) from one minute to the next.
        limit = ort.p50_us + 15
        out = [Check(what, f"p50 − {floor} p50 {icow.p50_vs_echo_us:+,.1f} µs vs {ort.p50_us:,.1f} + 15 = "
                           f"{limit:,.1f} µs (p50 {icow.p50_us:,.1f}, {floor} {echo.p50_us:,.1f})",
                     icow.p50_vs_echo_us <= limit)]
    else:
        out = [Check(what, "rows missing", None)]
    for workload in ("identity-1x16-c8", "identity-12MiB-c1", "identity-12MiB-c4"):
        out.append(_ratio(get(workload, target), f"{workload}, {target}: throughput ≥ 0.95 × {floor}", "x_echo", 0.95))
    out.append(_ratio(get("mlp256-b1-c8", target), f"mlp256-b1-c8, {target}: throughput ≥ 1.3 × icow_protobuf",
                      "x_protobuf", 1.3))
    return out


def _batching(unbatched: Result | None, batched: Result | None) -> Check:
    """Issue 3's target: dynamic batching at least doubles throughput, p50 no worse."""
    what = "mlp1024 b1 c16 (issue 3): batched ≥ 2 × unbatched req/s, p50 no worse"
    if unbatched is None or batched is None:
        return Check(what, "rows missing", None)
    ratio = batched.rps / unbatched.rps
    return Check(what, f"{ratio:.2f}x, p50 {batched.p50_us / 1000:,.1f} vs {unbatched.p50_us / 1000:,.1f} ms",
                 ratio >= 2 and batched.p50_us <= unbatched.p50_us)


def _ratio(r: Result | None, what: str, field: str, limit: float) -> Check:
    value = getattr(r, field) if r is not None else None
    if value is None:
        return Check(what, "rows missing", None)
    spread = f" (rounds {_range(r.x_echo_range)})" if field == "x_echo" and r.x_echo_range else ""
    return Check(what, f"{value:.2f}x{spread}", value >= limit)


def _range(span: tuple[float, float]) -> str:
    return f"{span[0]:.2f}–{span[1]:.2f}x"


def checks_text(found: list[Check], caveat: str | None) -> str:
    mark = {True: "met", False: "NOT met", None: "n/a"}
    lines = [f"targets{f' ({caveat})' if caveat else ''}:"]
    lines += [f"  [{mark[c.met]:>7}] {c.target}: {c.measured}" for c in found]
    lines.append("  (copies per 12 MiB request: python -m bench --copies; no leak: python -m bench --leak)")
    return "\n".join(lines)


# -- the chart ----------------------------------------------------------------

def chart(results: list[Result], workloads: list[Workload], path: Path, title: str) -> str | None:
    """Per workload, req/s and server CPU per request of each target, as bars.
    Returns why no chart was drawn, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on a server or in CI
        import matplotlib.pyplot as plt
    except ImportError:
        return "no chart: matplotlib is not installed (pip install matplotlib; the 'bench' extra)"
    names = [w.name for w in workloads]
    fig, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 6.8), squeeze=False)
    for col, name in enumerate(names):
        rows = [r for r in results if r.workload == name and r.error is None]
        served = [r for r in rows if r.client != "in-process"]  # in-process req/s would dwarf the servers'
        _bars(axes[0][col], served, [r.rps for r in served], "{:,.0f}" if all(r.rps >= 10 for r in served)
              else "{:,.1f}")
        _bars(axes[1][col], rows, [r.server_cpu_us or 0 for r in rows], "{:,.0f}")
        axes[0][col].set_title(name, fontsize=9)
        if col == 0:
            axes[0][col].set_ylabel("req/s, servers (higher is better)", fontsize=8)
            axes[1][col].set_ylabel("server CPU µs / request (lower is better)\n(ort_inprocess: its own)", fontsize=8)
    fig.suptitle(title.replace(" · client", "\nclient"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _bars(ax: matplotlib.axes.Axes, rows: list[Result], values: list[float], fmt: str) -> None:
    labels = [r.target.replace("_", "\n", 1) for r in rows]
    bars = ax.bar(labels, values, color=[_color(r.target) for r in rows])
    ax.bar_label(bars, [fmt.format(v) for v in values], fontsize=6)
    ax.tick_params(axis="x", labelsize=6)
    ax.tick_params(axis="y", labelsize=7)
    ax.margins(y=0.12)  # room for the labels above the bars


def _color(target: str) -> str:
    return {"ort_inprocess": "#999999", "echo_server": "#4c72b0", "icow_protobuf": "#dd8452",
            "icow_native": "#55a868", "icow_python": "#937860", "icow_tritonclient": "#8172b3",
            "plane_echo": "#64b5cd", "icow_plane": "#c44e52"}.get(target, "#333333")
