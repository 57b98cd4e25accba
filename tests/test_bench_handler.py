"""``python -m bench --handler`` (bench/handler.py) runs both paths in process and
writes its figures, with and without writes between calls (``--handler-evict``).
Run as a command: it pins its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from icow.services import plane as native_plane

pytestmark = pytest.mark.skipif(not native_plane.available() and not os.environ.get("ICOW_REQUIRE_CPP"),
                                reason=native_plane.UNAVAILABLE_REASON or "")

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("evict", [0, 1])
def test_the_handler_bench_writes_both_paths_figures(tmp_path, evict):
    command = [sys.executable, "-m", "bench", "--handler", "--handler-calls", "200", "--handler-evict", str(evict),
               "--output", str(tmp_path / "run")]
    # It exits non-zero unless the fast path served every call.
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=300)
    got = json.loads((tmp_path / "run-handler.json").read_text())
    assert got["python_path_us"] > 0 and got["fast_path_us"] > 0
    evicted = [got["python_path_evicted_us"], got["fast_path_evicted_us"]]
    if evict:
        assert all(v > 0 for v in evicted)
        assert "after 1 MiB written elsewhere" in (tmp_path / "run-handler.md").read_text()
    else:
        assert evicted == [None, None]
