"""``python -m bench``: every workload against every target, side by side in one run.

Also ``--leak`` (RSS of the icow server after 10k and 100k small requests) and
``--copies`` (bytes the servers copy per 12 MiB request, counted by valgrind)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import asdict
from pathlib import Path

from . import machine, report, rounds
from .harness import Env, Pinning, pin_client
from .measure import DEFAULT_TARGETS, PEERS, TARGETS, Result, compare, default_targets, load_target, measure
from .models import ROOT
from .workloads import Workload, all_workloads

RESULTS = ROOT / "bench" / "results"

METHOD = (
    "One process runs every workload; within a workload every target runs in turn, so a scenario and its "
    "baselines are measured minutes apart at most. Servers (echo, icow --codec native, icow --codec protobuf) "
    "are subprocesses started once and pinned to the server CPU; the client (this process and all its threads, "
    "or perf_analyzer, its child) is pinned to the client CPU. Per target and workload: setup and one call "
    "whose answer is checked against in-process onnxruntime; with the Python client, 'warmup' seconds of "
    "calls, discarded, then 'duration' seconds in which 'concurrency' threads each call in a closed loop with "
    "pre-serialized request bytes on a raw-bytes stub (the answer is not parsed); req/s = calls / wall time; "
    "latency = time.perf_counter_ns around each call, percentiles by numpy (linear). With perf_analyzer: its "
    "req/s, p50 and p99 over three merged stable windows of duration/3 each. Server CPU per request = "
    "(utime + stime of /proc/<pid>/stat, all threads) over the window / requests the server answered in it. "
    "Server peak RSS = VmHWM of /proc/<pid>/status after the window, reset (clear_refs 5) before it. "
    "Client CPU % = the load generator's CPU time over the window / wall time. × echo = req/s / echo_server's "
    "req/s (plane_echo's for icow_plane: each target against the echo of its own gRPC stack), × protobuf = "
    "req/s / icow_protobuf's, same workload; p50 − echo = p50 minus that echo's p50. "
    "MB/s = (input + output tensor bytes per call) * req/s / 1e6. With --rounds N: each workload's targets "
    "N times, the order reversed every other round; each figure is the median of the rounds, each ratio the "
    "median of the ratios taken within a round, shown with their range."
)


# -- command line ---------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1s per target, 0.25s warm-up: a smoke run")
    parser.add_argument("--duration", type=float, help="seconds measured per target and workload (default 5)")
    parser.add_argument("--warmup", type=float, help="seconds of discarded calls before each (default 1)")
    parser.add_argument("--client", choices=["python", "perf_analyzer"], default="python",
                        help="load generator for the server targets (perf_analyzer: see setup_perf_analyzer.sh)")
    parser.add_argument("--stability", type=float,
                        help="perf_analyzer's -s: how far (%%) its windows may differ and still count as stable "
                             "(default its own, 10; --quick: 1000). A noisy machine needs more: say so with the "
                             "figures")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure each workload's targets this many times, alternating their order, and "
                             "report medians and the range of the ratios (default 1; on a shared VM use 3 or more)")
    parser.add_argument("--scenarios", help=f"comma-separated targets (default {','.join(DEFAULT_TARGETS)}; "
                                            f"all: {','.join(TARGETS)})")
    parser.add_argument("--workloads", help="comma-separated workload names (default: issue 10's set; see --list)")
    parser.add_argument("--output", type=Path,
                        help="path prefix of the results: PREFIX.json, .md, .png (default bench/results/<UTC time>)")
    parser.add_argument("--device", default="cpu", metavar="cpu|cuda[:N]",
                        help="run the models there: icow serve --device, and the in-process baseline's provider "
                             "(cuda needs onnxruntime-gpu; see README: Running on a GPU)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary repository and server logs")
    parser.add_argument("--list", action="store_true", help="list targets and workloads, then exit")
    parser.add_argument("--leak", action="store_true", help="soak mode: icow RSS after 10k and 100k requests")
    parser.add_argument("--leak-requests", default="10000,100000",
                        help="with --leak: the request counts compared, first and last (default 10000,100000)")
    parser.add_argument("--leak-plane", choices=["native", "grpcio"], default="native",
                        help="with --leak: the data plane of the server soaked (default native)")
    parser.add_argument("--shm", action="store_true",
                        help="issue 9: identity 12/64 MiB through system shared memory vs gRPC bytes, and memcpy")
    parser.add_argument("--handler", action="store_true",
                        help="CPU per call of the grpcio plane's ModelInfer handler in process: Python path vs "
                             "the fast path in C++")
    parser.add_argument("--handler-calls", type=int, default=20000, help="with --handler: calls per path")
    parser.add_argument("--handler-evict", type=int, default=0, metavar="MIB",
                        help="with --handler: also time each call after writing this many MiB elsewhere, as a "
                             "server's other work evicts the handler's and ONNX Runtime's data from the caches")
    parser.add_argument("--copies", action="store_true",
                        help="count bytes copied per 12 MiB request in each server (valgrind dhat)")
    parser.add_argument("--copies-servers", help="with --copies: comma-separated servers (default echo,icow-native,"
                                                 "icow-protobuf; also plane-echo,plane-icow)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.duration = args.duration or (1.0 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.25 if args.quick else 1.0)
    return args


def select(names: str | None, known: list[str], default: list[str], what: str) -> list[str]:
    if not names:
        return default
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)}; known: {', '.join(known)}")
    return [n for n in known if n in chosen]


def _set_of(target: str) -> str:
    if target in DEFAULT_TARGETS:
        return ""
    return " (--client perf_analyzer, once bench/setup_mlserver.sh ran)" if target in PEERS else " (extra)"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workloads = all_workloads()
    if args.list:
        print("targets:  ", ", ".join(f"{t}{_set_of(t)}" for t in TARGETS))
        print("workloads:", ", ".join(f"{w.name}{'' if w.default else ' (extra)'}" for w in workloads))
        return 0
    started = dt.datetime.now(dt.timezone.utc)
    prefix = args.output or RESULTS / f"{started:%Y%m%dT%H%M%SZ}"
    if args.leak:
        from . import leak
        return leak.main(args, prefix)
    if args.handler:
        from . import handler
        return handler.main(args, prefix)
    if args.copies:
        from . import copies
        return copies.main(args, prefix)
    if args.shm:
        from . import shm
        return shm.main(args, prefix)
    targets = select(args.scenarios, list(TARGETS), default_targets(args.client), "scenario")
    chosen = select(args.workloads, [w.name for w in workloads], [w.name for w in workloads if w.default],
                    "workload")
    return run(targets, [w for w in workloads if w.name in chosen], args, started, prefix)


def run(targets: list[str], workloads: list[Workload], args: argparse.Namespace, started: dt.datetime,
        prefix: Path) -> int:
    info = machine.describe()  # before pinning: it records the CPUs this run may use
    pinning = pin_client()
    if args.client == "perf_analyzer":
        from . import perf_analyzer
        info["versions"]["perf_analyzer"] = perf_analyzer.version()
    warning = machine.load_warning(info["loadavg_start"])
    head = header(info, pinning, args, started)
    print(head)
    if warning:
        print(warning)

    env = Env(pinning, keep=args.keep, device=args.device)
    try:
        results = run_all(targets, workloads, env, args)
    finally:
        anomalies = env.close()
    info["loadavg_end"] = machine.load()
    caveat = "smoke run, NOT a measurement" if args.quick else ("machine busy, NOT a measurement" if warning else None)
    found = report.checks(results)
    print()
    print(report.text_table(results, workloads))
    print()
    print(report.checks_text(found, caveat))
    report_anomalies(anomalies)
    for note in env.notes:
        print(f"note: {note}")
    print(f"load average: start {_load(info['loadavg_start'])}, end {_load(info['loadavg_end'])}")
    if warning:
        print(warning)  # again, under the table it is about
    if args.keep:
        print(f"repository and server logs kept in {env.dir}")
    document = {
        "date": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "pinning": {**asdict(pinning), "servers": {n: s.affinity for n, s in env.servers.items()}},
        "method": {"text": METHOD, "client": args.client, "device": args.device, "duration_s": args.duration,
                   "warmup_s": args.warmup, "quick": args.quick, "stability_pct": args.stability,
                   "rounds": args.rounds},
        "targets": {n: load_target(n).description for n in targets if _importable(n)},
        "workloads": [{"name": w.name, "model": w.model, "shape": list(w.shape), "concurrency": w.concurrency,
                       "payload_bytes": w.payload_bytes, "request_bytes": len(w.request_bytes)} for w in workloads],
        "results": [asdict(r) for r in results],
        "issue10_targets": [asdict(c) for c in found],
        "server_log_anomalies": anomalies,
        "notes": env.notes,
        "warnings": [w for w in (warning, caveat) if w],
    }
    write(prefix, document, head, results, workloads, found, caveat, env.notes)
    return 1 if any(r.error for r in results) else 0


def run_all(targets: list[str], workloads: list[Workload], env: Env, args: argparse.Namespace) -> list[Result]:
    """Every workload, and within it every target in turn (``--rounds`` times): a
    scenario sits beside its baselines."""
    results: list[Result] = []
    for workload in workloads:
        measured = []
        for index in range(args.rounds):
            got = [r for name in rounds.order(targets, index) if (r := measure_one(name, workload, env, args))]
            compare(got)  # within the round: its rows were measured seconds apart
            for r in got:
                _progress(r, f"round {index + 1}/{args.rounds}  " if args.rounds > 1 else "")
                if r.error and args.rounds > 1:
                    env.notes.append(f"{workload.name} {r.target}, round {index + 1} failed: {r.error}")
            measured.append(got)
        results += rounds.combine(measured)
    return results


def _progress(r: Result, prefix: str) -> None:
    ratio = f"  {r.x_echo:.2f}x echo" if r.x_echo is not None else ""
    print(f"  {prefix}{r.workload:<20} {r.target:<18} "
          + (f"FAILED {r.error}" if r.error else f"{r.rps:>10,.1f} req/s  p50 {report._us(r.p50_us)} µs{ratio}"),
          file=sys.stderr, flush=True)


def measure_one(name: str, workload: Workload, env: Env, args: argparse.Namespace) -> Result | None:
    """The row of ``name``; None for a target that perf_analyzer cannot drive."""
    if args.client == "perf_analyzer" and name != "ort_inprocess":
        if name == "icow_tritonclient":  # a client library: perf_analyzer would replace what it measures
            return None
        if name == "mlserver_grpc":  # perf_analyzer needs Triton's ModelConfig RPC, which MLServer lacks
            if not any("mlserver_grpc" in n for n in env.notes):
                env.notes.append("mlserver_grpc: measured by the bench's Python client, not perf_analyzer, which "
                                 "calls Triton's ModelConfig RPC first and MLServer has none ('Method not found')")
            return measure(name, workload, env, args.duration, args.warmup)
        from . import perf_analyzer
        return perf_analyzer.measure(name, workload, env, args.duration, args.warmup, args.quick, args.stability)
    return measure(name, workload, env, args.duration, args.warmup)


# -- output ---------------------------------------------------------------------

def _load(loadavg: list[float]) -> str:
    return " ".join(map(str, loadavg)) or "unknown"


def header(info: dict, pinning: Pinning, args: argparse.Namespace, started: dt.datetime) -> str:
    v = info["versions"]
    client = ("perf_analyzer (" + v.get("perf_analyzer", "?").splitlines()[0] + ")" if args.client == "perf_analyzer"
              else "bench's Python closed-loop generator (pre-serialized requests, raw-bytes stub)")
    return "\n".join([
        f"icow bench  {started:%Y-%m-%d %H:%M:%SZ}  commit {info['commit']}",
        f"machine: {info['cpu']}, {info['cores']} cores, {info['python']}, onnxruntime {v['onnxruntime']}, "
        f"grpcio {v['grpcio']}, protobuf {v['protobuf']}",
        f"load average at start: {_load(info['loadavg_start'])}",
        f"pinning: {pinning.note}",
        f"client: {client}",
        f"method: {args.duration:g}s per target" + (f" after {args.warmup:g}s warm-up" if args.client == "python"
                                                    else " (perf_analyzer: 3 windows"
                                                    + (f", stable within {args.stability:g}%" if args.stability else "")
                                                    + ")")
        + (f"; {args.rounds} rounds, medians" if args.rounds > 1 else "")
        + "; server CPU and peak RSS from /proc over the timed window; see bench/README.md",
    ])


def write(prefix: Path, document: dict, head: str, results: list[Result], workloads: list[Workload],
          found: list[report.Check], caveat: str | None, notes: list[str]) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (prefix.with_name(prefix.name + ext) for ext in (".json", ".md", ".png"))
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    title = f"icow bench {document['date']} · {document['machine']['cpu']} · client {document['method']['client']}"
    why_not = report.chart(results, workloads, png_path, title + (f" · {caveat}" if caveat else ""))
    md = ["# icow bench results", "", *(f"    {line}" for line in head.splitlines()),
          f"    load average at end: {_load(document['machine']['loadavg_end'])}", ""]
    if caveat:
        md += [f"**{caveat}**", ""]
    md += [report.markdown_table(results, workloads), "", "```", report.checks_text(found, caveat), "```", ""]
    md += [f"- note: {n}" for n in notes]
    md += ["", f"![chart]({png_path.name})" if why_not is None else f"_{why_not}_", "",
           "Method: " + document["method"]["text"], ""]
    md_path.write_text("\n".join(md))
    print(f"\nresults written to {json_path}, {md_path.name}" + ("" if why_not else f", {png_path.name}"))
    if why_not:
        print(why_not)


def report_anomalies(anomalies: dict[str, list[str]]) -> None:
    for server, lines in anomalies.items():
        if lines:
            print(f"\n{server} server logged {len(lines)} warning/error line(s); the first ones:")
            for line in lines[:10]:
                print(f"  {line}")


def _importable(name: str) -> bool:
    try:
        load_target(name)
        return True
    except ImportError:
        return False
