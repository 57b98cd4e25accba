"""SIGTERM under load, many times: each round starts `icow serve`, loads it with four
clients, sends SIGTERM and checks that every call was answered or refused cleanly and
that the server exited 0 (tests/sigterm_load.py). The suite runs 30 rounds
(tests/test_shutdown.py); this runs as many as asked, for the rare race:

    python scripts/sigterm-stress.py [--rounds 300] [--mode passthrough] [--keep-cores]

Modes: `passthrough` (the native plane hands every call to grpcio: --log-level debug),
`fast` (the native plane's fast path), `grpcio` (the grpcio plane); default all, in turn.
With --keep-cores an aborted server leaves its core file in the current folder
(core_pattern permitting) for `gdb python core`."""

from __future__ import annotations

import argparse
import collections
import resource
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import start_server  # noqa: E402
from ops_helpers import build_ops_repository  # noqa: E402
from sigterm_load import MODES, SERVER_ARGS, sigterm_under_load  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--mode", choices=[*MODES, "all"], default="all")
    parser.add_argument("--keep-cores", action="store_true")
    args = parser.parse_args()
    if args.keep_cores:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    modes = list(MODES) if args.mode == "all" else [args.mode]
    tally: dict[str, collections.Counter] = {m: collections.Counter() for m in modes}
    with tempfile.TemporaryDirectory() as work:
        repo = build_ops_repository(Path(work) / "models")
        for i in range(args.rounds):
            mode = modes[i % len(modes)]
            srv = start_server(repo, *SERVER_ARGS, *MODES[mode], log_dir=Path(work) / "logs")
            outcome = sigterm_under_load(srv.proc, srv.url)
            problems = outcome.problems(srv.log())
            kind = "aborted" if outcome.aborted else "failed" if problems else "clean"
            tally[mode][kind] += 1
            if problems:
                kept = Path(f"sigterm-round-{i}.log")
                kept.write_text(srv.log())
                print(f"round {i} ({mode}): {kind}: {problems[:3]}\n  log: {kept}", flush=True)
            if (i + 1) % 10 == 0:
                print(f"{i + 1} rounds: {dict((m, dict(c)) for m, c in tally.items())}", flush=True)
        print(f"done: {dict((m, dict(c)) for m, c in tally.items())}")
        bad = sum(c["aborted"] + c["failed"] for c in tally.values())
        if bad:
            print(f"{bad} bad round(s); their logs (and cores, with --keep-cores) are in the current folder")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
