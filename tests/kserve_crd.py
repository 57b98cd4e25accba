"""The part of KServe's CRD schemas that icow's manifests use, for tests/test_deploy.py.

No package on PyPI ships KServe's CRDs as schemas, so these facts are copied by hand,
as JSON Schema, from kserve/kserve at commit aaac4e294dae2c7b1aa1886447793f3aa1c30912
(v0.20.0-rc0-104, 2026-08-21):

- config/crd/full/serving.kserve.io_servingruntimes.yaml, version v1alpha1,
  openAPIV3Schema.properties.spec: its property names (all of them), what it requires,
  and the types of the fields icow's runtime sets;
- config/crd/full/serving.kserve.io_inferenceservices.yaml, version v1beta1,
  openAPIV3Schema.properties.spec: the same for spec, spec.predictor and
  spec.predictor.model;
- pkg/constants/constants.go: the protocol versions (ProtocolV1 ... ProtocolGRPCV2) and
  InferenceServiceDefaultHttpPort (8080).

Objects are closed here (additionalProperties: false) where the CRD lists every field:
the API server then prunes an unknown field, or refuses it with
``kubectl --validate=strict``; here the test refuses it. Containers are Kubernetes
containers in both CRDs: the tests validate them as such with kubernetes-validate,
not here. Update the commit and the lists together when KServe adds fields.
"""

from __future__ import annotations

PROTOCOL_VERSIONS = ["v1", "v2", "grpc-v1", "grpc-v2"]  # pkg/constants/constants.go
DEFAULT_HTTP_PORT = 8080  # InferenceServiceDefaultHttpPort

_ANY = {}  # a field this subset does not look into
_SERVING_RUNTIME_SPEC_FIELDS = [
    "affinity", "annotations", "builtInAdapter", "containers", "disabled", "grpcDataEndpoint", "grpcEndpoint",
    "hostIPC", "httpDataEndpoint", "imagePullSecrets", "labels", "multiModel", "nodeSelector", "protocolVersions",
    "replicas", "resourceClaims", "schedulerName", "storageHelper", "supportedModelFormats", "tolerations",
    "volumes", "workerSpec",
]
_PREDICTOR_FIELDS = [
    "activeDeadlineSeconds", "affinity", "annotations", "autoScaling", "automountServiceAccountToken", "batcher",
    "canaryTrafficPercent", "containerConcurrency", "containers", "deploymentStrategy", "dnsConfig", "dnsPolicy",
    "enableServiceLinks", "hostAliases", "hostIPC", "hostNetwork", "hostPID", "hostUsers", "hostname",
    "hostnameOverride", "huggingface", "imagePullSecrets", "initContainers", "labels", "lightgbm", "logger",
    "maxReplicas", "minReplicas", "model", "name", "nodeName", "nodeSelector", "onnx", "os", "overhead", "paddle",
    "pmml", "preemptionPolicy", "priority", "priorityClassName", "pytorch", "readinessGates", "resourceClaims",
    "resources", "restartPolicy", "runtimeClassName", "scaleMetric", "scaleMetricType", "scaleTarget",
    "schedulerName", "schedulingGates", "securityContext", "serviceAccount", "serviceAccountName",
    "setHostnameAsFQDN", "shareProcessNamespace", "sklearn", "storageContainerName", "storageUris", "subdomain",
    "tensorflow", "terminationGracePeriodSeconds", "timeout", "tolerations", "topologySpreadConstraints", "triton",
    "volumes", "workerSpec", "xgboost",
]
# spec.predictor.model: a Kubernetes container's fields plus these (KServe's ModelSpec).
MODEL_SPEC_FIELDS = ["modelFormat", "protocolVersion", "runtime", "runtimeVersion", "storage", "storageUri"]
_MODEL_FIELDS = [
    "args", "command", "confidential", "env", "envFrom", "image", "imagePullPolicy", "lifecycle", "livenessProbe",
    "name", "ports", "readinessProbe", "resizePolicy", "resources", "restartPolicy", "restartPolicyRules",
    "securityContext", "startupProbe", "stdin", "stdinOnce", "terminationMessagePath", "terminationMessagePolicy",
    "tty", "volumeDevices", "volumeMounts", "workingDir", *MODEL_SPEC_FIELDS,
]
_INT32 = {"type": "integer", "minimum": -(2 ** 31), "maximum": 2 ** 31 - 1}


def _closed(fields: list[str], typed: dict, required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "additionalProperties": False, "required": list(required),
            "properties": {name: typed.get(name, _ANY) for name in fields}}


def _resource(api_version: str, kind: str, spec: dict) -> dict:
    return {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
            "additionalProperties": False,
            "properties": {"apiVersion": {"const": api_version}, "kind": {"const": kind},
                           "metadata": {"type": "object", "required": ["name"]}, "spec": spec, "status": _ANY}}


SERVING_RUNTIME = _resource("serving.kserve.io/v1alpha1", "ServingRuntime", _closed(
    _SERVING_RUNTIME_SPEC_FIELDS, {
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "containers": {"type": "array", "items": {"type": "object", "required": ["name"]}},
        "disabled": {"type": "boolean"},
        "multiModel": {"type": "boolean"},
        "protocolVersions": {"type": "array", "items": {"type": "string", "enum": PROTOCOL_VERSIONS}},
        "supportedModelFormats": {"type": "array", "items": _closed(
            ["autoSelect", "name", "priority", "version"],
            {"autoSelect": {"type": "boolean"}, "name": {"type": "string"}, "priority": {**_INT32, "minimum": 1},
             "version": {"type": "string"}}, required=("name",))},
    }, required=("containers",)))

INFERENCE_SERVICE = _resource("serving.kserve.io/v1beta1", "InferenceService", _closed(
    ["canary", "explainer", "predictor", "transformer"], {
        "predictor": _closed(_PREDICTOR_FIELDS, {
            "minReplicas": _INT32, "maxReplicas": _INT32, "scaleTarget": _INT32,
            "canaryTrafficPercent": {"type": "integer"},
            "scaleMetric": {"type": "string", "enum": ["cpu", "memory", "concurrency", "rps"]},
            "scaleMetricType": {"type": "string", "enum": ["Utilization", "Value", "AverageValue"]},
            "model": _closed(_MODEL_FIELDS, {
                "modelFormat": _closed(["name", "version"], {"name": {"type": "string"},
                                                             "version": {"type": "string"}}, required=("name",)),
                "protocolVersion": {"type": "string", "enum": PROTOCOL_VERSIONS},
                "runtime": {"type": "string"}, "storageUri": {"type": "string"},
                "args": {"type": "array", "items": {"type": "string"}},
            }),
        }),
    }, required=("predictor",)))
