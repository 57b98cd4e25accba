"""What the operations tests share: their model repository (with a model whose
run time the request sets), certificates, and readers for metrics and logs."""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as tc
from onnx import TensorProto, helper

import make_models
from helpers import infer_input

ROOT = Path(__file__).resolve().parent.parent


def slow_model():
    """y = sum(E @ E) where E is x broadcast to shape n ([N, N]): the request picks
    the run time through n, and the answer (x² N³) is known. The graph depends on
    the input, so ONNX Runtime cannot fold it away at load time."""
    return make_models._model(
        [helper.make_node("Expand", ["x", "n"], ["e"]),
         helper.make_node("MatMul", ["e", "e"], ["p"]),
         helper.make_node("ReduceSum", ["p"], ["y"], keepdims=0)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("n", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )


def build_ops_repository(repo: Path) -> Path:
    """The examples, ``slow``, ``big`` (FP32 identity of any length, no batching)
    and ``expand`` (x [1] broadcast to n elements)."""
    shutil.copytree(ROOT / "examples" / "models", repo)
    make_models.write(slow_model(), repo, "slow")
    (repo / "slow" / "config.pbtxt").write_text("max_batch_size: 0\n")
    make_models.write(make_models._model(
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])]), repo, "big")
    (repo / "big" / "config.pbtxt").write_text("max_batch_size: 0\n")
    make_models.write(make_models._model(  # a response far larger than its request
        [helper.make_node("Expand", ["x", "n"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])]), repo, "expand")
    (repo / "expand" / "config.pbtxt").write_text("max_batch_size: 0\n")
    return repo


def slow_inputs(size: int, x: float = 1.0) -> list[tc.InferInput]:
    return [infer_input("x", np.array([x], dtype=np.float32), "FP32"),
            infer_input("n", np.array([size, size], dtype=np.int64), "INT64")]


def scale_input(values: np.ndarray | None = None) -> list[tc.InferInput]:
    x = np.arange(4, dtype=np.float32) if values is None else values
    return [infer_input("x", x, "FP32")]


# -- metrics ------------------------------------------------------------------

def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format; None when absent."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        got = dict(part.split("=", 1) for part in rest.rstrip("}").split(",") if part) if rest else {}
        if all(got.get(k) == f'"{v}"' for k, v in labels.items()):
            return float(value)
    return None


def pending(srv, model: str, version: str = "1") -> int:
    """Calls of a model version queued or running in a server subprocess (Triton's
    gauge): what a test waits on to know that the server has a call it sent."""
    return int(sample(scrape(srv.metrics_port), "nv_inference_pending_request_count", model=model, version=version))


# -- logs ---------------------------------------------------------------------

def json_lines(log: str) -> list[dict]:
    """The JSON log records of a server log (every line must be one)."""
    return [json.loads(line) for line in log.splitlines() if line.strip()]


# -- certificates -------------------------------------------------------------

@dataclass
class Pki:
    """PEM files of a CA, a server certificate for 127.0.0.1/localhost and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_client_cert: Path  # signed by another CA
    other_client_key: Path


def make_pki(folder: Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def key_pem(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def cert(subject: str, key, issuer: str, issuer_key, *, ca: bool = False, sans=(), usage=None):
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    files = {}

    def write(file: str, data: bytes) -> Path:
        files[file] = folder / file
        files[file].write_bytes(data)
        return files[file]

    ca_key, other_ca_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server_key, client_key, other_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    return Pki(
        ca=write("ca.pem", cert("icow test CA", ca_key, "icow test CA", ca_key, ca=True)),
        server_cert=write("server.pem", cert("localhost", server_key, "icow test CA", ca_key, sans=sans,
                                             usage=ExtendedKeyUsageOID.SERVER_AUTH)),
        server_key=write("server.key", key_pem(server_key)),
        client_cert=write("client.pem", cert("client", client_key, "icow test CA", ca_key,
                                             usage=ExtendedKeyUsageOID.CLIENT_AUTH)),
        client_key=write("client.key", key_pem(client_key)),
        other_client_cert=write("other.pem", cert("intruder", other_key, "other CA", other_ca_key,
                                                  usage=ExtendedKeyUsageOID.CLIENT_AUTH)),
        other_client_key=write("other.key", key_pem(other_key)),
    )
