"""The deployment files: Kubernetes manifests validated offline against the
Kubernetes schemas (kubernetes-validate), the KServe ServingRuntime, and the
Dockerfiles. Every icow command line in them must parse with icow's own parser."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from icow.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
K8S_VERSION = "1.30.0"  # the oldest Kubernetes these manifests target (gRPC probes are GA since 1.27)
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
KSERVE_HTTP_PORT = 8080  # where KServe and Knative route when a runtime declares no port


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def icow_args(args: list[str]):
    """The args of an icow container, parsed as `icow serve` parses them (exits on a bad flag)."""
    return build_parser().parse_args(["serve", *args])


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifest_is_valid_kubernetes(path):
    for doc in documents(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises on any unknown or wrong field


def test_validation_catches_a_wrong_field():
    """The check above can fail: a typo in a container is caught."""
    (deployment,) = documents(ROOT / "deploy" / "kubernetes" / "deployment.yaml")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_every_kind_is_there():
    kinds = {d["kind"] for p in MANIFESTS for d in documents(p)}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "PersistentVolumeClaim"} <= kinds


def test_deployment_probes_health_and_runs_as_non_root():
    (deployment,) = documents(ROOT / "deploy" / "kubernetes" / "deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == 8001, probe
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    args = icow_args(container["args"])
    assert [Path(p) for p in args.model_repository] == [Path("/models")] and args.host == "0.0.0.0"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["models"]["mountPath"] == "/models" and mounts["models"]["readOnly"]
    # the pod gets more time than the server's own grace period plus the preStop pause
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > args.shutdown_grace_secs + pause
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": args.http_port, "grpc": args.port, "metrics": args.metrics_port}


def test_every_port_is_served_and_exposed_alike():
    """HTTP (8000), gRPC (8001) and metrics (8002), as Triton numbers them: the CLI's defaults,
    the container's ports, both Services and both images' EXPOSE agree."""
    defaults = icow_args([])
    assert (defaults.http_port, defaults.port, defaults.metrics_port) == (8000, 8001, 8002)
    (deployment,) = documents(ROOT / "deploy" / "kubernetes" / "deployment.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = icow_args(container["args"])
    served = {"http": args.http_port, "grpc": args.port, "metrics": args.metrics_port}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == served
    services = {d["metadata"]["name"]: d for d in documents(ROOT / "deploy" / "kubernetes" / "service.yaml")}
    for name, wanted in (("icow", {"http", "grpc", "metrics"}), ("icow-headless", {"http", "grpc"})):
        ports = {p["name"]: p for p in services[name]["spec"]["ports"]}
        assert set(ports) == wanted, name
        for port_name, port in ports.items():
            assert port["port"] == served[port_name] and port["targetPort"] == port_name, (name, port_name)
        assert ports["http"]["appProtocol"] == "http" and ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    for image in ("Dockerfile", "Dockerfile.gpu"):
        text = (ROOT / image).read_text()
        final = text[text.rindex("\nFROM "):]
        (exposed,) = re.findall(r"^EXPOSE (.+)$", final, flags=re.M)
        assert sorted(int(p) for p in exposed.split()) == sorted(served.values()), image
        run = re.search(r"^# Run: .*$", text, flags=re.M).group(0)
        assert all(f"-p {p}:{p}" in run for p in served.values()), image


def test_selectors_match_the_pods():
    (deployment,) = documents(ROOT / "deploy" / "kubernetes" / "deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for path in MANIFESTS:
        for doc in documents(path):
            selector = doc["spec"].get("selector")
            if selector is not None:
                wanted = selector.get("matchLabels", selector)
                assert wanted.items() <= labels.items(), (path.name, doc["metadata"]["name"])


def test_kserve_serving_runtime():
    (runtime,) = documents(ROOT / "deploy" / "kserve" / "servingruntime.yaml")
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    spec = runtime["spec"]
    assert {"name": "onnx", "version": "1"}.items() <= spec["supportedModelFormats"][0].items()
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]  # REST and gRPC
    assert set(spec) <= {"annotations", "supportedModelFormats", "protocolVersions", "containers",
                         "multiModel", "disabled", "nodeSelector", "tolerations", "affinity", "volumes",
                         "imagePullSecrets", "labels", "builtInAdapter", "grpcEndpoint", "grpcDataEndpoint",
                         "replicas", "storageHelper", "httpDataEndpoint"}
    (container,) = spec["containers"]
    # KServe's containers are Kubernetes containers: validate them inside a Pod
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "icow"}, "spec": {"containers": [container]}}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    args = icow_args(container["args"])
    # where KServe's storage initializer puts models
    assert [Path(p) for p in args.model_repository] == [Path("/mnt/models")]
    # No ports: Knative routes one port per pod, and an InferenceService's ports are merged into
    # these; REST goes to KServe's default 8080, gRPC to the h2c port an InferenceService names.
    assert "ports" not in container
    assert args.http_port == KSERVE_HTTP_PORT and args.port == 8001
    probe = container["readinessProbe"]["httpGet"]
    assert probe == {"path": "/v2/health/ready", "port": args.http_port}
    assert f"containerPort: {args.port}" in (ROOT / "deploy" / "kserve" / "servingruntime.yaml").read_text()


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_runs_icow_as_non_root(name):
    text = (ROOT / name).read_text()
    final = text[text.rindex("\nFROM "):]  # the stage that ships
    user = re.findall(r"^USER (\S+)", final, flags=re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert re.search(r'^ENTRYPOINT \["icow", "serve"', final, flags=re.M)
    assert re.search(r"^EXPOSE 8000 8001 8002$", final, flags=re.M)


def test_gpu_image_installs_only_onnxruntime_gpu():
    """onnxruntime and onnxruntime-gpu share a module: the GPU image must not get the CPU one
    through icow's [server] extra."""
    text = "\n".join(line for line in (ROOT / "Dockerfile.gpu").read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    assert "onnxruntime-gpu" in text and "[server]" not in text and not re.search(r"onnxruntime(?!-gpu)[\s=<>]", text)
    # the rest of what the server needs (health, reflection, metrics, HTTP: uvicorn, orjson, ...)
    assert '.whl)[server-common]"' in text
