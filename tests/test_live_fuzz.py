"""The live fuzzer (tests/fuzz/live.py), briefly: a few hundred mutated requests of
every method per data plane, fixed seed, against a real server. None may be
answered UNKNOWN or INTERNAL or hang; the server stays alive with a clean log
and afterwards answers as in-process ONNX Runtime does. CI runs it for longer
(scripts/fuzz-live.sh). The same over HTTP: mutated REST requests, none answered
with a 5xx other than 503 or an error body that is not JSON, none hung."""

from __future__ import annotations

import random
from multiprocessing import shared_memory

import pytest

from fuzz import live

live_seeds = live.live_seeds  # the module live.py itself uses, not a second copy


@pytest.fixture(scope="module")
def fuzz_repo(tmp_path_factory):
    return live_seeds.build_repository(tmp_path_factory.mktemp("live-fuzz") / "models")


@pytest.mark.parametrize("plane", ["native", "grpcio"])
def test_mutated_requests_of_every_method(make_server, fuzz_repo, plane):
    server = make_server(fuzz_repo, *live.SERVER_ARGS, "--data-plane", plane)
    if plane == "native":
        assert "data plane: native" in server.log(), server.log()
    report = live.run(server, fuzz_repo, plane, seed=20, count=300)
    assert report.ok, report.summary()
    methods = {key.split()[0] for key in report.histogram}
    assert report.sent == 300 and len(methods) >= 15, report.summary()  # it reached most methods
    assert any(key.endswith(" OK") for key in report.histogram if key.startswith("ModelInfer"))


def test_mutated_http_requests(make_server, fuzz_repo):
    """The REST seeds mutated: no 5xx but 503, every error a JSON body, no hang, the server unharmed."""
    server = make_server(fuzz_repo, *live.SERVER_ARGS)
    report = live.run(server, fuzz_repo, "native", seed=20, count=300, protocol="http")
    assert report.ok, report.summary()
    assert report.sent == 300, report.summary()
    endpoints = {key.split()[2] for key in report.histogram}
    assert len(endpoints) >= 12, report.summary()  # it reached most endpoints
    assert any(key.startswith("HTTP POST infer 200") for key in report.histogram), report.summary()
    assert any(key.split()[-1].startswith("4") for key in report.histogram), report.summary()


def test_the_requests_follow_from_the_seed(fuzz_repo):
    """A finding can be replayed: the same seed, the same requests."""
    region = shared_memory.SharedMemory(create=True, size=4096)
    try:
        seeds = live_seeds.seeds(fuzz_repo, region)
        words = live_seeds.words("/" + region.name)

        def cases(seed: int) -> list[bytes]:
            rng = random.Random(seed)
            return [live.mutant(seeds, words, rng)[1] for _ in range(200)]

        assert cases(3) == cases(3) != cases(4)
        rest = live_seeds.http_seeds(region)
        assert [live.http_mutant(rest, random.Random(5))[1] for _ in range(3)] == \
            [live.http_mutant(rest, random.Random(5))[1] for _ in range(3)]
    finally:
        region.close()
        region.unlink()
