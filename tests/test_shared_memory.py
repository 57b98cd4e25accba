"""System and CUDA shared memory (issue 9): Triton's client against the real
server on loopback, once per codec, and every security and lifetime case."""

from __future__ import annotations

import os
import queue
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.utils.shared_memory as shm

import icow
from conftest import ServerProcess, start_server
from helpers import expect_error, infer_input, wait_for
from icow.shm.registry import Limits, Registry, SystemRegion

FLAG = "--allow-client-shm"
MAX_REGIONS = 6
MAX_MAPPED_MB = 32


@pytest.fixture(scope="module")
def shm_server(test_repo: Path, codec: str, plane: str,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(test_repo, "--codec", codec, "--data-plane", plane, FLAG, "--shm-max-regions", str(MAX_REGIONS),
                       "--shm-max-mapped-mb", str(MAX_MAPPED_MB), "--no-metrics",
                       log_dir=tmp_path_factory.mktemp("shm-logs"))
    yield srv
    srv.stop()


@pytest.fixture
def client(shm_server: ServerProcess) -> Iterator[tc.InferenceServerClient]:
    c = tc.InferenceServerClient(shm_server.url)
    c.unregister_system_shared_memory()
    yield c
    c.unregister_system_shared_memory()  # the next test starts with no regions
    c.close()


@pytest.fixture
def regions() -> Iterator:
    """Factory of tritonclient regions (name, byte_size) -> handle; destroyed after the test."""
    made = []

    def make(name: str, byte_size: int):
        handle = shm.create_shared_memory_region(name, f"/icow-test-{secrets.token_hex(4)}", byte_size)
        made.append(handle)
        return handle

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def key_of(handle) -> str:
    return handle._shm_key


def register(client: tc.InferenceServerClient, handle, byte_size: int, offset: int = 0) -> None:
    client.register_system_shared_memory(handle._triton_shm_name, key_of(handle), byte_size, offset=offset)


def shm_input(name: str, shape, datatype: str, region: str, byte_size: int, offset: int = 0) -> tc.InferInput:
    tensor = tc.InferInput(name, list(shape), datatype)
    tensor.set_shared_memory(region, byte_size, offset)
    return tensor


def shm_output(name: str, region: str, byte_size: int, offset: int = 0) -> tc.InferRequestedOutput:
    out = tc.InferRequestedOutput(name)
    out.set_shared_memory(region, byte_size, offset)
    return out


# -- Triton's client, unchanged -----------------------------------------------------

def test_input_and_output_through_regions(client, regions):
    x = np.arange(4, dtype=np.float32)
    handle_in, handle_out = regions("in", 16), regions("out", 64)
    shm.set_shared_memory_region(handle_in, [x])
    register(client, handle_in, 16)
    register(client, handle_out, 64)
    result = client.infer("scale", [shm_input("x", [4], "FP32", "in", 16)],
                          outputs=[shm_output("y", "out", 16, offset=32)], model_version="2")
    output = result.get_output("y")
    assert (output.datatype, list(output.shape)) == ("FP32", [4])
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle_out, np.float32, [4], offset=32), 3 * x)
    # no bytes for it in the message, but an entry that keeps raw_output_contents index-aligned
    assert list(result.get_response().raw_output_contents) == [b""]


def test_shm_and_raw_tensors_mixed(client, regions):
    """raw_input_contents holds only the inputs outside shared memory, in order, as tritonclient sends it;
    outputs in and outside regions keep their places."""
    a = np.array([[1.5, -2.0, 0.0, 4.0]], dtype=np.float32)
    b = np.array([[7, -9, 0, 1]], dtype=np.int64)
    c = np.array([[True, False, True, True]])
    handle = regions("mixed", 4096)
    shm.set_shared_memory_region(handle, [b], offset=128)
    register(client, handle, 4096)
    inputs = [infer_input("a", a, "FP32"), shm_input("b", [1, 4], "INT64", "mixed", 32, offset=128),
              infer_input("c", c, "BOOL")]
    outputs = [tc.InferRequestedOutput("sum"), shm_output("b_next", "mixed", 32, offset=1024),
               tc.InferRequestedOutput("c_not")]
    result = client.infer("mixed", inputs, outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("sum"), a + b)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.int64, [1, 4], offset=1024), b + 1)
    np.testing.assert_array_equal(result.as_numpy("c_not"), ~c)
    assert [len(r) for r in result.get_response().raw_output_contents] == [16, 0, 4]


def test_status_and_unregister(client, regions):
    a, b = regions("a", 4096), regions("b", 8192)
    register(client, a, 1024, offset=4096 - 1024)
    register(client, b, 8192)
    status = client.get_system_shared_memory_status()
    assert {n: (r.key, r.offset, r.byte_size) for n, r in status.regions.items()} == {
        "a": (key_of(a), 3072, 1024), "b": (key_of(b), 0, 8192)}
    assert list(client.get_system_shared_memory_status("b").regions) == ["b"]
    client.unregister_system_shared_memory("a")
    assert list(client.get_system_shared_memory_status().regions) == ["b"]
    with expect_error(grpc.StatusCode.NOT_FOUND, "'a'"):
        client.get_system_shared_memory_status("a")
    client.unregister_system_shared_memory()  # every region
    assert not client.get_system_shared_memory_status().regions


def test_server_metadata_lists_the_extensions(client):
    assert {"system_shared_memory", "cuda_shared_memory"} <= set(client.get_server_metadata().extensions)


# -- security -----------------------------------------------------------------------

def test_off_by_default(server, regions):
    """A server without the flag maps nothing; the error names the flag. CUDA unregister/status: OK, nothing."""
    c = tc.InferenceServerClient(server.url)
    handle = regions("r", 64)
    for call in (lambda: register(c, handle, 64), c.get_system_shared_memory_status,
                 c.unregister_system_shared_memory):
        with expect_error(grpc.StatusCode.FAILED_PRECONDITION, FLAG):
            call()
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, FLAG, "input 'x'"):
        c.infer("scale", [shm_input("x", [4], "FP32", "r", 16)], model_version="1")
    c.unregister_cuda_shared_memory()
    assert not c.get_cuda_shared_memory_status().regions
    assert "system_shared_memory" not in c.get_server_metadata().extensions


@pytest.mark.parametrize("key", ["/../etc/passwd", "../etc/passwd", "/a/b", "/..", "..", ".", "", "/",
                                 "/dev/shm/x", "x\0y", "/" + "n" * 256])
def test_only_posix_shm_keys(client, key):
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "POSIX shared-memory name"):
        client.register_system_shared_memory("bad", key, 16)
    assert not client.get_system_shared_memory_status().regions


def test_symlink_in_dev_shm_is_not_followed(client, tmp_path):
    target = tmp_path / "secret"
    target.write_bytes(b"s" * 4096)
    link = Path("/dev/shm") / f"icow-link-{secrets.token_hex(4)}"
    link.symlink_to(target)
    try:
        with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "cannot open"):
            client.register_system_shared_memory("link", "/" + link.name, 16)
    finally:
        link.unlink()


def test_missing_object_names_the_likely_cause(client):
    with expect_error(grpc.StatusCode.NOT_FOUND, "same host", "--ipc=host"):
        client.register_system_shared_memory("gone", f"/icow-none-{secrets.token_hex(4)}", 16)


@pytest.mark.parametrize("offset, byte_size", [(0, 4097), (4096, 1), (4000, 200), (2**64 - 1, 2),
                                                (2**63, 2**63), (0, 0)])
def test_registered_range_checked_against_object_size(client, regions, offset, byte_size):
    handle = regions("r", 4096)
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "'r'"):
        register(client, handle, byte_size, offset=offset)
    assert not client.get_system_shared_memory_status().regions


@pytest.mark.parametrize("offset, byte_size, message", [
    (0, 17, "needs 16 bytes"),            # the tensor's size, not the range's
    (1020, 16, "outside shared-memory region"),  # past the registered range
    (2**63 - 1, 16, "outside shared-memory region"),  # an offset + byte_size that overflows int64
])
def test_input_range_checked_against_registered_range(client, regions, offset, byte_size, message):
    handle = regions("r", 4096)
    register(client, handle, 1024, offset=1024)
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "input 'x'", message):
        client.infer("scale", [shm_input("x", [4], "FP32", "r", byte_size, offset=offset)], model_version="1")


def test_output_range_must_hold_the_output(client, regions):
    handle = regions("r", 4096)
    register(client, handle, 4096)
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "output 'y'", "needs 16 bytes"):
        client.infer("scale", [infer_input("x", np.arange(4, dtype=np.float32), "FP32")],
                     outputs=[shm_output("y", "r", 8)], model_version="1")
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "output 'y'", "outside"):
        client.infer("scale", [infer_input("x", np.arange(4, dtype=np.float32), "FP32")],
                     outputs=[shm_output("y", "r", 16, offset=4090)], model_version="1")


def test_unknown_region_in_a_request(client):
    with expect_error(grpc.StatusCode.NOT_FOUND, "'nope'"):
        client.infer("scale", [shm_input("x", [4], "FP32", "nope", 16)], model_version="1")


def test_register_twice_is_already_exists(client, regions):
    handle = regions("twice", 64)
    register(client, handle, 64)
    with expect_error(grpc.StatusCode.ALREADY_EXISTS, "'twice'"):
        register(client, handle, 32)


def test_caps_on_regions_and_mapped_bytes(client, regions):
    big = regions("big", (MAX_MAPPED_MB << 20) + 4096)
    with expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "--shm-max-mapped-mb"):
        register(client, big, (MAX_MAPPED_MB << 20) + 4096)
    for i in range(MAX_REGIONS):
        register(client, regions(f"r{i}", 64), 64)
    with expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "--shm-max-regions"):
        register(client, regions("one-more", 64), 64)


def test_shrunk_object_is_an_error_not_sigbus(client, regions, shm_server):
    handle = regions("shrink", 1 << 16)
    register(client, handle, 1 << 16)
    os.ftruncate(handle._mpsm_handle._fd, 0)  # the client shrinks its object after registering it
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "shrank"):
        client.infer("scale", [shm_input("x", [4], "FP32", "shrink", 16, offset=4096)], model_version="1")
    assert shm_server.proc.poll() is None
    assert client.is_server_live()


def test_an_object_shrunk_during_the_run_fails_the_request_not_the_server(make_server, ops_repo, codec, plane):
    """The race after the fstat check: the client truncates its object while the model
    runs, and the run then writes its output there. The SIGBUS guard absorbs the fault."""
    from ops_helpers import pending, slow_inputs

    srv = make_server(ops_repo, "--codec", codec, "--data-plane", plane, FLAG)
    client = tc.InferenceServerClient(srv.url)
    key = f"/icow-test-{secrets.token_hex(4)}"
    handle = shm.create_shared_memory_region("out", key, 4096)
    try:
        client.register_system_shared_memory("out", key, 4096)
        output = tc.InferRequestedOutput("y")
        output.set_shared_memory("out", 4)
        answers: queue.Queue = queue.Queue()
        client.async_infer("slow", slow_inputs(4000), lambda result, error: answers.put(error), outputs=[output])
        # Counted as pending: checked, and running (about 2 s); the output is written after the shrink.
        wait_for("the run to start", lambda: pending(srv, "slow") == 1)
        os.ftruncate(handle._mpsm_handle._fd, 0)
        with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "shrank while a request used it", "register it again"):
            error = answers.get(timeout=60)
            if error is not None:
                raise error
        assert srv.proc.poll() is None and client.is_server_live()
        os.ftruncate(handle._mpsm_handle._fd, 4096)  # grown back: still refused until registered again
        with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "register it again"):
            client.infer("slow", slow_inputs(10), outputs=[output])
        client.unregister_system_shared_memory("out")
        client.register_system_shared_memory("out", key, 4096)
        client.infer("slow", slow_inputs(10, 2.0), outputs=[output])
        assert shm.get_contents_as_numpy(handle, np.float32, []) == 4 * 1000  # x² N³
    finally:
        shm.destroy_shared_memory_region(handle)


def test_the_sigbus_guard_absorbs_faults_only_in_guarded_mappings():
    """In a child process: an access past a shrunk object's end is absorbed (zeros
    read, writes kept privately) where guarded, and kills the process where not."""
    probe = textwrap.dedent("""
        import mmap, os, sys, numpy as np
        from icow import _wire
        path = f"/dev/shm/icow-sigbus-{os.getpid()}"
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.unlink(path)
        os.ftruncate(fd, 3 * 4096)
        m = mmap.mmap(fd, 3 * 4096)
        m[:] = b"\\x01" * (3 * 4096)
        slot = _wire.guard_mapping(_wire.address_of(m), 3 * 4096) if sys.argv[1] == "guarded" else -1
        os.ftruncate(fd, 4096)
        a = np.frombuffer(m, np.uint8)
        a[5000] = 7
        print(int(a[:4096].sum()), int(a[4096:].sum()), _wire.mapping_faulted(slot))
    """)
    guarded = subprocess.run([sys.executable, "-c", probe, "guarded"], capture_output=True, text=True, timeout=60)
    assert guarded.returncode == 0, guarded.stderr
    assert guarded.stdout.split() == ["4096", "7", "True"]
    bare = subprocess.run([sys.executable, "-c", probe, "bare"], capture_output=True, text=True, timeout=60)
    assert bare.returncode == -signal.SIGBUS


def test_unregistered_while_in_use_stays_mapped_until_the_request_ends():
    """The registry's half: a held region survives its unregistration, and is closed at release."""
    key = f"/icow-test-{secrets.token_hex(4)}"
    region_shm = shm.create_shared_memory_region("r", key, 4096)
    try:
        registry = Registry(Limits(enabled=True, max_regions=4, max_mapped_bytes=1 << 20))
        registry.register("r", lambda: SystemRegion("r", key, 0, 4096))
        held = registry.hold("r", "input 'x'")
        view = held.view(0, 16, "input 'x'")
        registry.unregister("", "system")
        assert not registry.status("", "system")
        view[:4] = b"live"  # still mapped
        assert registry._mapped == 4096  # still counted against the cap
        del view
        registry.release(held)
        assert registry._mapped == 0 and held._map.closed
    finally:
        shm.destroy_shared_memory_region(region_shm)


def test_unregister_during_requests(client, regions, shm_server):
    """Requests racing unregistrations of their region: each answers right or NOT_FOUND; the server lives."""
    x = np.arange(96, dtype=np.float32).reshape(32, 3)
    handle = regions("busy", x.nbytes * 2)
    shm.set_shared_memory_region(handle, [x])
    stop = threading.Event()
    outcomes: list[str] = []

    def infer_loop() -> None:
        c = tc.InferenceServerClient(shm_server.url)
        while not stop.is_set():
            try:
                r = c.infer("identity_FP32", [shm_input("x", x.shape, "FP32", "busy", x.nbytes)],
                            outputs=[shm_output("y", "busy", x.nbytes, offset=x.nbytes)])
                assert list(r.get_output("y").shape) == list(x.shape)
                outcomes.append("ok")
            except tc.InferenceServerException as e:
                outcomes.append("gone" if e.status() == str(grpc.StatusCode.NOT_FOUND) else str(e))

    threads = [threading.Thread(target=infer_loop) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(30):
            register(client, handle, x.nbytes * 2)
            client.unregister_system_shared_memory("busy")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert shm_server.proc.poll() is None
    assert outcomes and set(outcomes) <= {"ok", "gone"}, set(outcomes)


# -- CUDA shared memory without a GPU -------------------------------------------------

def _has_gpu() -> bool:
    try:
        from icow.shm.cuda import runtime
        runtime()
    except icow.InferenceServerError:
        return False
    return True


@pytest.mark.skipif(_has_gpu(), reason="checks the refusal on a machine without a GPU")
def test_cuda_register_is_unavailable_without_a_gpu(client):
    with expect_error(grpc.StatusCode.UNAVAILABLE, "GPU"):
        client.register_cuda_shared_memory("g", b"\0" * 64, 0, 1024)
    client.unregister_cuda_shared_memory()
    assert not client.get_cuda_shared_memory_status().regions


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason="needs a CUDA device and driver (CUDA shared memory)")
def test_cuda_input_and_output_through_regions(shm_server):
    import tritonclient.utils.cuda_shared_memory as cudashm

    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    regions = {name: cudashm.create_shared_memory_region(name, x.nbytes, 0) for name in ("in", "out")}
    try:
        cudashm.set_shared_memory_region(regions["in"], [x])
        with tc.InferenceServerClient(shm_server.url) as c:
            for name, handle in regions.items():
                c.register_cuda_shared_memory(name, cudashm.get_raw_handle(handle), 0, x.nbytes)
            tensor = tc.InferInput("x", [4, 3], "FP32")
            tensor.set_shared_memory("in", x.nbytes)
            output = tc.InferRequestedOutput("y")
            output.set_shared_memory("out", x.nbytes)
            c.infer("identity_FP32", [tensor], outputs=[output])
            np.testing.assert_array_equal(cudashm.get_contents_as_numpy(regions["out"], np.float32, [4, 3]), x)
            c.unregister_cuda_shared_memory()
    finally:
        for handle in regions.values():
            cudashm.destroy_shared_memory_region(handle)


# -- icow's own client ------------------------------------------------------------------

def test_icow_client_uses_shared_memory_on_the_same_host(shm_server):
    x = np.random.default_rng(0).standard_normal((32, 3), dtype=np.float32)
    before = set(os.listdir("/dev/shm"))
    with icow.Client(shm_server.url, shared_memory="auto") as c:
        for _ in range(3):  # the first call learns the output's size, the next ones use the region
            np.testing.assert_array_equal(c.infer("identity_FP32", {"x": x})["y"], x)
        assert c._shm is not None
        with tc.InferenceServerClient(shm_server.url) as triton:
            assert len(triton.get_system_shared_memory_status().regions) == 1  # created once, reused
        np.testing.assert_array_equal(c.infer("scale", [np.arange(4, dtype=np.float32)], version="2")["y"],
                                      [0, 3, 6, 9])
        texts = c.infer("strings", {"text": np.array([b"ab", b"cd"], dtype=object)})["upper"]  # BYTES: as bytes
        assert list(texts) == [b"AB", b"CD"]
    assert set(os.listdir("/dev/shm")) == before  # removed on close
    with tc.InferenceServerClient(shm_server.url) as triton:
        assert not triton.get_system_shared_memory_status().regions


def test_icow_client_falls_back_to_bytes(server):
    with icow.Client(server.url, shared_memory="auto") as c:
        np.testing.assert_array_equal(c.infer("scale", [np.arange(4, dtype=np.float32)], version="2")["y"],
                                      [0, 3, 6, 9])
        assert c._shm is None


# -- perf_analyzer ----------------------------------------------------------------------

PERF_VENV = Path(__file__).resolve().parent.parent / "bench" / ".perf-venv"


def test_perf_analyzer_system_shared_memory(shm_server, codec):
    """Triton's C++ load generator in --shared-memory system mode (bench/setup_perf_analyzer.sh installs it)."""
    binary = PERF_VENV / "bin" / "perf_analyzer"
    cudart = sorted(PERF_VENV.glob("lib/python*/site-packages/nvidia/cuda_runtime/lib"))
    if not binary.exists() or not cudart:
        if os.environ.get("ICOW_REQUIRE_CPP") == "1":  # CI: scripts/test.sh installs it
            pytest.fail("ICOW_REQUIRE_CPP=1 but perf_analyzer is not installed (bash bench/setup_perf_analyzer.sh)")
        pytest.skip("perf_analyzer is not installed: bash bench/setup_perf_analyzer.sh")
    env = {**os.environ, "LD_LIBRARY_PATH": str(cudart[-1])}
    run = subprocess.run([str(binary), "-m", "identity_FP32", "-i", "grpc", "-u", shm_server.url,
                          "--shared-memory", "system", "--output-shared-memory-size", "4096",
                          "--concurrency-range", "1", "-p", "500", "-s", "1000", "-r", "3",
                          "--measurement-mode", "count_windows", "--measurement-request-count", "20"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Throughput" in run.stdout
    assert shm_server.proc.poll() is None
    with tc.InferenceServerClient(shm_server.url) as c:  # it cleaned up after itself
        assert not c.get_system_shared_memory_status().regions
