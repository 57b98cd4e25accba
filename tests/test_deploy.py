"""The deployment files: Kubernetes manifests validated offline against the
Kubernetes schemas (kubernetes-validate), the KServe ServingRuntime and InferenceService
against KServe's CRD schemas (the subset in kserve_crd.py, which says where it comes
from), the queue autoscaling through the Prometheus adapter, and the Dockerfiles. Every
icow command line in them must parse with icow's own parser."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

import kserve_crd
from icow.cli import build_parser
from icow.services.metrics import TRITON_FAMILIES

ROOT = Path(__file__).resolve().parent.parent
K8S_VERSION = "1.30.0"  # the oldest Kubernetes these manifests target (gRPC probes are GA since 1.27)
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
KSERVE_HTTP_PORT = kserve_crd.DEFAULT_HTTP_PORT  # where KServe and Knative route when a runtime declares no port
QUEUE = ROOT / "deploy" / "kubernetes" / "queue-autoscaling"


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
    assert args.model_repository == ["/models"] and args.host == "0.0.0.0"
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
    jsonschema.validate(runtime, kserve_crd.SERVING_RUNTIME)
    (container,) = spec["containers"]
    validate_container(container)
    args = icow_args(container["args"])
    assert args.routing_in_memory  # /mnt/models is each pod's own copy: no change there reaches the others
    assert args.model_repository == ["/mnt/models"]  # where KServe's storage initializer puts models
    # No ports: Knative routes one port per pod, and an InferenceService's ports are merged into
    # these; REST goes to KServe's default 8080, gRPC to the h2c port an InferenceService names.
    assert "ports" not in container
    assert args.http_port == KSERVE_HTTP_PORT and args.port == 8001
    probe = container["readinessProbe"]["httpGet"]
    assert probe == {"path": "/v2/health/ready", "port": args.http_port}
    assert f"containerPort: {args.port}" in (ROOT / "deploy" / "kserve" / "servingruntime.yaml").read_text()


def validate_container(container: dict) -> None:
    """KServe's containers are Kubernetes containers: validated inside a Pod."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "icow"}, "spec": {"containers": [container]}}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_kserve_inference_service():
    (service,) = documents(ROOT / "deploy" / "kserve" / "inferenceservice.yaml")
    jsonschema.validate(service, kserve_crd.INFERENCE_SERVICE)
    model = dict(service["spec"]["predictor"]["model"])
    (runtime,) = documents(ROOT / "deploy" / "kserve" / "servingruntime.yaml")
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    # gRPC: the one port Knative routes is icow's gRPC port, named h2c
    args = icow_args(runtime["spec"]["containers"][0]["args"])
    assert [(p["name"], p["containerPort"]) for p in model["ports"]] == [("h2c", args.port)]
    for field in kserve_crd.MODEL_SPEC_FIELDS:  # what is left is a container's
        model.pop(field, None)
    validate_container({"name": "kserve-container", **model})


@pytest.mark.parametrize("schema, path, field", [
    (kserve_crd.SERVING_RUNTIME, "servingruntime.yaml", ("spec", "supportedModelFormat")),
    (kserve_crd.SERVING_RUNTIME, "servingruntime.yaml", ("spec", "supportedModelFormats", 0, "autoselect")),
    (kserve_crd.INFERENCE_SERVICE, "inferenceservice.yaml", ("spec", "predictor", "minReplica")),
    (kserve_crd.INFERENCE_SERVICE, "inferenceservice.yaml", ("spec", "predictor", "model", "storageURI")),
], ids=["runtime-spec", "model-format", "predictor", "model"])
def test_kserve_validation_catches_a_wrong_field(schema, path, field):
    (doc,) = documents(ROOT / "deploy" / "kserve" / path)
    *parents, name = field
    target = doc
    for key in parents:
        target = target[key]
    target[name] = "x"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)


def test_kserve_validation_catches_a_wrong_protocol():
    (doc,) = documents(ROOT / "deploy" / "kserve" / "inferenceservice.yaml")
    doc["spec"]["predictor"]["model"]["protocolVersion"] = "grpc_v2"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, kserve_crd.INFERENCE_SERVICE)


def test_queue_autoscaling_reads_a_metric_icow_exports():
    """The HPA's Pods metric is the adapter rule's name for a gauge icow serves."""
    (hpa,) = documents(QUEUE / "hpa.yaml")
    kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)
    (default_hpa,) = documents(ROOT / "deploy" / "kubernetes" / "hpa.yaml")
    assert hpa["metadata"]["name"] == default_hpa["metadata"]["name"]  # it replaces the CPU one, never beside it
    assert hpa["spec"]["scaleTargetRef"] == default_hpa["spec"]["scaleTargetRef"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    (values,) = documents(QUEUE / "prometheus-adapter-values.yaml")
    (rule,) = values["rules"]["custom"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    series = re.fullmatch(r"(\w+)\{.*\}", rule["seriesQuery"]).group(1)
    assert re.fullmatch(rule["name"]["matches"], series)
    gauges = {name for name, kind, _ in TRITON_FAMILIES if kind == "gauge"}
    assert series in gauges, gauges
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}  # per pod, as a Pods metric needs
    (deployment,) = documents(ROOT / "deploy" / "kubernetes" / "deployment.yaml")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"  # where the series come from
    assert int(annotations["prometheus.io/port"]) == icow_args(
        deployment["spec"]["template"]["spec"]["containers"][0]["args"]).metrics_port


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
