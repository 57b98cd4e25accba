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
    assert Path(args.model_repository) == Path("/models") and args.host == "0.0.0.0"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["models"]["mountPath"] == "/models" and mounts["models"]["readOnly"]
    # the pod gets more time than the server's own grace period plus the preStop pause
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > args.shutdown_grace_secs + pause
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": args.port, "metrics": args.metrics_port}


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
    assert spec["protocolVersions"] == ["grpc-v2"]  # icow has no HTTP front end
    assert set(spec) <= {"annotations", "supportedModelFormats", "protocolVersions", "containers",
                         "multiModel", "disabled", "nodeSelector", "tolerations", "affinity", "volumes",
                         "imagePullSecrets", "labels", "builtInAdapter", "grpcEndpoint", "grpcDataEndpoint",
                         "replicas", "storageHelper", "httpDataEndpoint"}
    (container,) = spec["containers"]
    # KServe's containers are Kubernetes containers: validate them inside a Pod
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "icow"}, "spec": {"containers": [container]}}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    args = icow_args(container["args"])
    assert Path(args.model_repository) == Path("/mnt/models")  # where KServe's storage initializer puts models
    assert container["ports"][0] == {"name": "h2c", "containerPort": args.port, "protocol": "TCP"}


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_runs_icow_as_non_root(name):
    text = (ROOT / name).read_text()
    final = text[text.rindex("\nFROM "):]  # the stage that ships
    user = re.findall(r"^USER (\S+)", final, flags=re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert re.search(r'^ENTRYPOINT \["icow", "serve"', final, flags=re.M)
    assert "EXPOSE 8001 8002" in final


def test_gpu_image_installs_only_onnxruntime_gpu():
    """onnxruntime and onnxruntime-gpu share a module: the GPU image must not get the CPU one
    through icow's [server] extra."""
    text = "\n".join(line for line in (ROOT / "Dockerfile.gpu").read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    assert "onnxruntime-gpu" in text and "[server]" not in text and not re.search(r"onnxruntime(?!-gpu)[\s=<>]", text)
