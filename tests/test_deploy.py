"""Offline checks of deploy/ and infra/: everything that cannot be applied from here is parsed and checked
with the tools that exist offline (RayCluster and RayJob against the official KubeRay CRDs, strictly; the
other Kubernetes objects against kubernetes-validate's strict schemas; Ray's JSON Schema for the launcher,
promtool for the Prometheus config and the dashboard's PromQL, python-hcl2 for the Terraform)."""

from __future__ import annotations

import ast
import contextlib
import copy
import datetime
import functools
import importlib.util
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hcl2
import jsonschema
import kubernetes_validate
import pyarrow.parquet as pq
import pytest
import ray
import yaml
from referencing import Registry, Resource
from servers import free_port

from labeler.run.metrics import exported_series

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
INFRA = ROOT / "infra"
KUBERAY = DEPLOY / "kuberay"
K8S_VERSION = "v1.33.0-local-strict"  # the Kubernetes schemas (additionalProperties false) of kubernetes-validate
IMAGE = "REGISTRY/labeler:0.1.0"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------------------------------------- parsing


def config_files() -> list[Path]:
    return sorted(
        path
        for folder in (DEPLOY, INFRA, ROOT / "docs")
        for path in folder.rglob("*")
        if path.suffix in {".yaml", ".yml", ".json"}
    )


def test_every_yaml_and_json_file_parses() -> None:
    files = config_files()
    assert len(files) >= 13, [str(f) for f in files]
    for path in files:
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
            assert documents, f"{path} holds no YAML document"


# ---------------------------------------------------------------------------------------------- KubeRay
#
# The KubeRay manifests are checked against the official CRDs of the operator version the runbook installs
# (ray-project/kuberay v1.4.2, kept outside the repository in ../shared/kuberay-crds/). The API server
# validates a custom resource against the `openAPIV3Schema` of its served version and, under
# `kubectl apply --validate=strict`, rejects every field the structural schema would prune; the walk
# below does both, keyword by keyword, and refuses a keyword or CEL rule it does not know rather than
# skipping it.

CRDS = ROOT.parent / "shared" / "kuberay-crds" / "v1.4.2"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
# Keywords of a structural schema that constrain nothing at create time.
INERT_KEYWORDS = {"description", "default", "x-kubernetes-map-type", "x-kubernetes-list-map-keys"}
CHECKED_KEYWORDS = {
    "type",
    "properties",
    "additionalProperties",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-type",
    "x-kubernetes-validations",
    "items",
    "required",
    "enum",
    "anyOf",
    "nullable",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
}
TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}
INTEGER_FORMATS = {"int32": 2**31, "int64": 2**63}
ONE_OF_RULE = re.compile(r"self in (\[[^\]]*\])")  # `self in ['a', 'b']`
TRANSITION_RULE = "self == oldSelf"  # immutability: checked on update only, as the API server does


@functools.cache
def load_crds() -> dict[tuple[str, str], dict[str, Any]]:
    """The official CRDs by (group, kind)."""
    if not CRDS.is_dir():
        pytest.fail(f"{CRDS} is missing: the official KubeRay v1.4.2 CRDs are expected beside the repository")
    crds = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
        crds[crd["spec"]["group"], crd["spec"]["names"]["kind"]] = crd
    return crds


def served_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    """The `openAPIV3Schema` of `version`, which must be served."""
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert entry["served"], f"{crd['metadata']['name']} does not serve {version}"
    return entry["schema"]["openAPIV3Schema"]


def kuberay_manifests() -> list[Path]:
    return sorted(p for p in KUBERAY.glob("*.yaml") if load_yaml(p)["apiVersion"].startswith("ray.io/"))


def schema_nodes(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every schema node of a structural schema."""
    yield schema
    children = [*schema.get("properties", {}).values(), *schema.get("anyOf", [])]
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            children.append(schema[key])
    for child in children:
        yield from schema_nodes(child)


def check_rule(rule: dict[str, Any], value: Any, path: str) -> list[str]:
    if rule["rule"] == TRANSITION_RULE:
        return []
    match = ONE_OF_RULE.fullmatch(rule["rule"])
    assert match, f"{path}: CEL rule {rule['rule']!r} is not one this test evaluates"
    return [] if value in ast.literal_eval(match.group(1)) else [f"{path}: Invalid value: {value!r}: {rule['message']}"]


def strict_errors(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    """What the API server would say about `value` at `path` under `schema`, unknown fields included."""
    unknown = set(schema) - CHECKED_KEYWORDS - INERT_KEYWORDS
    assert not unknown, f"{path}: schema keywords {unknown} are not checked by this test"
    if value is None:
        return [] if schema.get("nullable") else [f"{path}: Invalid value: null: must not be null"]
    if "anyOf" in schema:  # x-kubernetes-int-or-string is written as anyOf integer | string
        branches = [strict_errors(value, branch, path) for branch in schema["anyOf"]]
        if all(branches):
            return [f"{path}: Invalid value: {value!r}: matches none of {[b.get('type') for b in schema['anyOf']]}"]
    if schema.get("x-kubernetes-int-or-string") and not (TYPES["integer"](value) or TYPES["string"](value)):
        return [f"{path}: Invalid value: {value!r}: must be an integer or a string"]
    kind = schema.get("type")
    if kind is not None and not TYPES[kind](value):
        return [f"{path}: Invalid value: {value!r}: must be of type {kind}"]
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: Unsupported value: {value!r}: supported values: {schema['enum']}")
    for rule in schema.get("x-kubernetes-validations", []):
        errors += check_rule(rule, value, path)
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: Invalid value: {value!r}: must match {schema['pattern']!r}")
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            errors.append(f"{path}: Invalid value: {value!r}: length out of range")
        if schema.get("format") == "date-time":
            try:
                datetime.datetime.fromisoformat(value)
            except ValueError:
                errors.append(f"{path}: Invalid value: {value!r}: must be a date-time")
    if TYPES["number"](value):
        bound = INTEGER_FORMATS.get(schema.get("format", ""))
        if bound is not None and not -bound <= value < bound:
            errors.append(f"{path}: Invalid value: {value}: out of range for {schema['format']}")
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            errors.append(f"{path}: Invalid value: {value}: out of range")
    if isinstance(value, dict):
        errors += object_errors(value, schema, path)
    if isinstance(value, list):
        errors += array_errors(value, schema, path)
    return errors


def object_errors(value: dict[str, Any], schema: dict[str, Any], path: str) -> list[str]:
    errors = [f"{path}.{key}: Required value" for key in schema.get("required", []) if key not in value]
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", False)
    keep_unknown = schema.get("x-kubernetes-preserve-unknown-fields", False) or extra is True
    for key, item in value.items():
        where = f"{path}.{key}" if path else key
        if key in properties:
            errors += strict_errors(item, properties[key], where)
        elif isinstance(extra, dict):
            errors += strict_errors(item, extra, where)
        elif not keep_unknown:  # pruned by the API server: `--validate=strict` reports it
            errors.append(f'unknown field "{where}"')
    return errors


def array_errors(value: list[Any], schema: dict[str, Any], path: str) -> list[str]:
    errors = []
    if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
        errors.append(f"{path}: Invalid value: {len(value)} items: count out of range")
    for i, item in enumerate(value):
        errors += strict_errors(item, schema.get("items", {}), f"{path}[{i}]")
    list_type = schema.get("x-kubernetes-list-type", "atomic")
    keys = schema.get("x-kubernetes-list-map-keys", [])
    if list_type == "set":
        seen = [json.dumps(item, sort_keys=True) for item in value]
    elif list_type == "map":
        seen = [json.dumps([item.get(k) for k in keys]) for item in value if isinstance(item, dict)]
    else:
        seen = []
    errors += [f"{path}: Duplicate value: {key}" for key in sorted(set(seen)) if seen.count(key) > 1]
    return errors


def validate_strictly(doc: dict[str, Any]) -> list[str]:
    """Every error `kubectl apply --validate=strict` would report for a KubeRay object: the body against
    the CRD's served schema, and its metadata, which the API server checks itself (the CRD says only
    `type: object`), against the strict Kubernetes ObjectMeta."""
    group, version = doc["apiVersion"].split("/")
    schema = copy.deepcopy(served_schema(load_crds()[group, doc["kind"]], version))
    schema["properties"]["metadata"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    errors = strict_errors(doc, schema, "")
    meta = {"$ref": f"urn:k8s#/$defs/{OBJECT_META}"}
    definitions = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / K8S_VERSION
    registry: Registry[Any] = Registry().with_resource(
        "urn:k8s", Resource.from_contents(json.loads((definitions / "_definitions.json").read_text()))
    )
    validator = jsonschema.Draft202012Validator(meta, registry=registry)
    errors += [
        "".join(["metadata", *(f".{part}" for part in e.path)]) + f": {e.message}"
        for e in validator.iter_errors(doc["metadata"])
    ]
    return errors


def test_every_kuberay_schema_keyword_and_rule_is_checked() -> None:
    """The walk refuses what it does not know; this walks every node of every CRD, so that a keyword the
    manifests do not reach yet cannot be skipped silently later."""
    for crd in load_crds().values():
        for entry in crd["spec"]["versions"]:
            for node in schema_nodes(entry["schema"]["openAPIV3Schema"]):
                assert set(node) <= CHECKED_KEYWORDS | INERT_KEYWORDS, set(node) - CHECKED_KEYWORDS - INERT_KEYWORDS
                assert node.get("type", "object") in TYPES, node
                for rule in node.get("x-kubernetes-validations", []):
                    assert rule["rule"] == TRANSITION_RULE or ONE_OF_RULE.fullmatch(rule["rule"]), rule


def test_every_kuberay_manifest_validates_against_the_official_crd() -> None:
    manifests = kuberay_manifests()
    assert [p.name for p in manifests] == ["raycluster.yaml", "rayjob.yaml"]
    for path in manifests:
        assert validate_strictly(load_yaml(path)) == [], path


@pytest.mark.parametrize("manifest", ["configmap.yaml", "serviceaccount.yaml", "metrics-service.yaml"])
def test_kubernetes_manifests_validate_against_kubernetes_schemas(manifest: str) -> None:
    kubernetes_validate.validate(load_yaml(KUBERAY / manifest), "1.33", strict=True)


def _misspelt_worker_field(doc: dict[str, Any]) -> None:
    cluster = doc["spec"].get("rayClusterSpec", doc["spec"])
    cluster["workerGroupSpecs"][0]["maxReplica"] = cluster["workerGroupSpecs"][0].pop("maxReplicas")


def _misspelt_container_field(doc: dict[str, Any]) -> None:
    cluster = doc["spec"].get("rayClusterSpec", doc["spec"])
    cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["imag"] = "x"


def _misspelt_metadata_field(doc: dict[str, Any]) -> None:
    doc["metadata"]["label"] = doc["metadata"].pop("labels")


def _number_as_start_param(doc: dict[str, Any]) -> None:
    cluster = doc["spec"].get("rayClusterSpec", doc["spec"])
    cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] = 0


def _no_head(doc: dict[str, Any]) -> None:
    del doc["spec"].get("rayClusterSpec", doc["spec"])["headGroupSpec"]


def _string_as_bool(doc: dict[str, Any]) -> None:
    doc["spec"]["shutdownAfterJobFinishes"] = "yes"


def _misspelt_job_field(doc: dict[str, Any]) -> None:
    doc["spec"]["entrypont"] = doc["spec"].pop("entrypoint")


def _unknown_deletion_policy(doc: dict[str, Any]) -> None:
    doc["spec"]["deletionPolicy"] = "DeleteEverything"


def _quantity_typo(doc: dict[str, Any]) -> None:
    cluster = doc["spec"].get("rayClusterSpec", doc["spec"])
    cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "16 GiB"


# Each mistake with every error it causes (a renamed required field is also a missing one).
BROKEN = [
    (
        "raycluster.yaml",
        _misspelt_worker_field,
        ["spec.workerGroupSpecs[0].maxReplicas: Required value", 'unknown field "spec.workerGroupSpecs[0].maxReplica"'],
    ),
    (
        "raycluster.yaml",
        _misspelt_container_field,
        ['unknown field "spec.headGroupSpec.template.spec.containers[0].imag"'],
    ),
    ("raycluster.yaml", _misspelt_metadata_field, ["metadata: Additional properties are not allowed ('label'"]),
    (
        "raycluster.yaml",
        _number_as_start_param,
        ["spec.headGroupSpec.rayStartParams.num-gpus: Invalid value: 0: must be of type string"],
    ),
    ("raycluster.yaml", _no_head, ["spec.headGroupSpec: Required value"]),
    (
        "raycluster.yaml",
        _quantity_typo,
        ["spec.headGroupSpec.template.spec.containers[0].resources.limits.memory: Invalid value: '16 GiB'"],
    ),
    ("rayjob.yaml", _misspelt_job_field, ['unknown field "spec.entrypont"']),
    (
        "rayjob.yaml",
        _misspelt_worker_field,
        [
            "spec.rayClusterSpec.workerGroupSpecs[0].maxReplicas: Required value",
            'unknown field "spec.rayClusterSpec.workerGroupSpecs[0].maxReplica"',
        ],
    ),
    ("rayjob.yaml", _string_as_bool, ["spec.shutdownAfterJobFinishes: Invalid value: 'yes': must be of type boolean"]),
    ("rayjob.yaml", _unknown_deletion_policy, ["spec.deletionPolicy: Invalid value: 'DeleteEverything': the"]),
]


@pytest.mark.parametrize(("manifest", "mistake", "expected"), BROKEN, ids=[f"{m}-{f.__name__}" for m, f, _ in BROKEN])
def test_a_broken_kuberay_manifest_is_rejected(
    manifest: str, mistake: Callable[[dict[str, Any]], None], expected: list[str]
) -> None:
    """Each broken variant fails with exactly the errors its mistake causes: one more field check that
    goes quiet, or one that fires on the manifests themselves, fails here."""
    doc = copy.deepcopy(load_yaml(KUBERAY / manifest))
    mistake(doc)
    errors = sorted(validate_strictly(doc))
    assert len(errors) == len(expected), errors
    assert all(error.startswith(prefix) for error, prefix in zip(errors, sorted(expected), strict=True)), errors


@pytest.mark.parametrize(
    ("manifest", "mistake"),
    [
        ("configmap.yaml", lambda doc: doc.update(date=doc.pop("data"))),
        ("serviceaccount.yaml", lambda doc: doc["metadata"].update(annotation=doc["metadata"].pop("annotations"))),
        ("metrics-service.yaml", lambda doc: doc["spec"].update(selecter=doc["spec"].pop("selector"))),
    ],
)
def test_a_broken_kubernetes_manifest_is_rejected(manifest: str, mistake: Callable[[dict[str, Any]], None]) -> None:
    doc = load_yaml(KUBERAY / manifest)
    mistake(doc)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, "1.33", strict=True)


def test_every_kubernetes_object_lives_in_the_labeler_namespace() -> None:
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["metadata"]["namespace"] == "labeler", path
            assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "labeler", path


def test_rayjob_brings_the_same_cluster_as_raycluster() -> None:
    assert (
        load_yaml(KUBERAY / "rayjob.yaml")["spec"]["rayClusterSpec"] == load_yaml(KUBERAY / "raycluster.yaml")["spec"]
    )


def test_rayjob_runs_labeler_on_the_config_map() -> None:
    job = load_yaml(KUBERAY / "rayjob.yaml")["spec"]
    assert job["entrypoint"] == "labeler run --config /etc/labeler/run.yaml"
    head = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in head["volumes"]}
    assert mounts["run-config"] == "/etc/labeler"
    config_map = load_yaml(KUBERAY / "configmap.yaml")
    assert volumes["run-config"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert yaml.safe_load(config_map["data"]["run.yaml"]) == load_yaml(DEPLOY / "config" / "run.example.yaml")


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    cluster = load_yaml(KUBERAY / "raycluster.yaml")["spec"]
    yield "head", cluster["headGroupSpec"]["template"]
    for group in cluster["workerGroupSpecs"]:
        yield group["groupName"], group["template"]


def test_every_pod_is_found_by_prometheus_and_uses_the_aws_chain() -> None:
    service = load_yaml(KUBERAY / "metrics-service.yaml")["spec"]
    service_ports = {port["targetPort"] for port in service["ports"]}
    account = load_yaml(KUBERAY / "serviceaccount.yaml")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(":role/labeler-worker")
    for name, template in pod_specs():
        labels = template["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in service["selector"].items()), name
        assert template["spec"]["serviceAccountName"] == account["metadata"]["name"], name
        for container in template["spec"]["containers"]:
            assert container["image"] == IMAGE, name
            metrics_ports = {port["name"] for port in container["ports"] if port["name"].startswith("metrics")}
            assert "metrics" in metrics_ports, name
            assert metrics_ports <= service_ports, f"{name}: {metrics_ports - service_ports} not behind the service"
            # Credentials only from the chain: no literal AWS key variables in any container.
            assert not {e["name"] for e in container.get("env", []) if "value" in e} & {
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN",
            }, name


def test_gpu_workers_land_on_the_terraform_gpu_node_group() -> None:
    group = terraform_resource("eks.tf", "aws_eks_node_group", "gpu")
    node_label = group["labels"]
    taint = group["taint"][0]
    assert "NVIDIA" in group["ami_type"]
    (_, template), *_ = [(n, t) for n, t in pod_specs() if n == "gpu"]
    spec = template["spec"]
    assert spec["nodeSelector"] == node_label
    assert {"key": taint["key"], "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert taint["effect"] == "NO_SCHEDULE"
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


# vCPUs and GiB of the GPU instance types the node group may use (AWS's instance type pages).
GPU_INSTANCES = {"g5.xlarge": (4, 16), "g5.2xlarge": (8, 32), "g5.4xlarge": (16, 64), "g6.2xlarge": (8, 32)}


def _quantity(text: str) -> float:
    """A Kubernetes CPU or memory quantity as a number (cores; GiB)."""
    units = {"Gi": 1.0, "Mi": 1 / 1024, "m": 1 / 1000}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def test_a_gpu_worker_pod_fits_on_a_gpu_node_and_listens_only_where_labeler_serves() -> None:
    """The worker pod's requests leave the node room for the kubelet and system pods (about 0.5 vCPU and
    3 GiB kept back here), and every metrics port a pod declares is one a labeler process serves."""
    from labeler.run.loading import load_config

    (instance,) = terraform_blocks("variables.tf", "variable", "gpu_instance_types")["default"]
    cpus, memory = GPU_INSTANCES[instance]
    (_, template), *_ = [(n, t) for n, t in pod_specs() if n == "gpu"]
    requests = template["spec"]["containers"][0]["resources"]["requests"]
    assert _quantity(requests["cpu"]) <= cpus - 0.5 and _quantity(requests["memory"]) <= memory - 3, instance
    config = load_config(DEPLOY / "config" / "run.example.yaml")
    served = {config.workers.metrics_port, config.metrics.port}
    for name, pod in pod_specs():
        declared = {
            p["containerPort"] for p in pod["spec"]["containers"][0]["ports"] if p["name"].startswith("metrics")
        }
        assert declared <= served, f"{name}: ports {declared - served} are declared but nothing listens there"
    assert config.workers.num_gpus == 1, "one worker per GPU pod: a second one could not bind the fixed metrics port"
    assert config.workers.count <= terraform_blocks("variables.tf", "variable", "gpu_nodes")["default"]
    assert (config.workers.metrics_port,) == load_write_targets().DEFAULT_PORTS


def test_the_launcher_head_may_launch_from_a_public_ami_and_stop_only_its_own_workers() -> None:
    statements = terraform_blocks("iam.tf", "data", "aws_iam_policy_document")["launcher_head"]["statement"]
    by_sid = {statement["sid"]: statement for statement in statements}
    launch = by_sid["LaunchWorkers"]
    assert "ec2:RunInstances" in launch["actions"]
    assert any("::image/" in resource for resource in launch["resources"]), "RunInstances is checked on the AMI too"
    manage = by_sid["ManageOwnWorkers"]
    assert {"ec2:TerminateInstances", "ec2:StopInstances"} <= set(manage["actions"])
    (condition,) = manage["condition"]
    launcher = load_yaml(DEPLOY / "launcher" / "aws-gpu.yaml")
    assert condition["variable"] == "ec2:ResourceTag/ray-cluster-name"
    assert condition["values"] == [launcher["cluster_name"]]


# ---------------------------------------------------------------------------------------------- launcher


def test_launcher_config_validates_against_rays_schema() -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = load_yaml(DEPLOY / "launcher" / "aws-gpu.yaml")
    jsonschema.validate(config, schema)
    assert config["docker"]["image"] == IMAGE
    gpu = config["available_node_types"]["gpu"]["node_config"]
    assert gpu["InstanceType"].startswith(("g", "p"))
    assert gpu["IamInstanceProfile"]["Arn"].endswith("instance-profile/labeler-node")


def load_write_targets() -> Any:
    spec = importlib.util.spec_from_file_location("write_targets", DEPLOY / "launcher" / "write_targets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_write_targets_lists_alive_nodes_in_file_sd_format(tmp_path: Path) -> None:
    write_targets = load_write_targets()
    nodes = [
        {"Alive": True, "NodeManagerAddress": "10.0.2.4", "NodeID": "w1", "Resources": {"GPU": 1.0}},
        {"Alive": False, "NodeManagerAddress": "10.0.2.5", "NodeID": "gone", "Resources": {}},
        {"Alive": True, "NodeManagerAddress": "10.0.1.2", "NodeID": "h", "Resources": {"node:__internal_head__": 1}},
    ]
    groups = write_targets.target_groups(nodes, (9310, 9311))
    assert [g["labels"]["component"] for g in groups] == ["head", "worker"]
    assert groups[1]["targets"] == ["10.0.2.4:9310", "10.0.2.4:9311"]
    out = tmp_path / "labeler.json"
    write_targets.write_atomically(out, groups)
    assert json.loads(out.read_text()) == groups
    example = json.loads((DEPLOY / "prometheus" / "targets.example.json").read_text())
    for group in [*groups, *example]:
        assert set(group) == {"targets", "labels"}
        assert all(re.fullmatch(r"[\w.-]+:\d+", target) for target in group["targets"])


# ---------------------------------------------------------------------------------------------- Prometheus

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing (.ci/run installs Debian's prometheus package)"
)


@needs_promtool
def test_promtool_accepts_the_prometheus_config() -> None:
    result = subprocess.run(
        [str(PROMTOOL), "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_rejects_a_broken_config(tmp_path: Path) -> None:
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    config["scrape_configs"][0]["dns_sd_configs"][0]["type"] = "SRVV"
    broken = tmp_path / "prometheus.yml"
    broken.write_text(yaml.safe_dump(config))
    result = subprocess.run([str(PROMTOOL), "check", "config", str(broken)], capture_output=True, check=False)
    assert result.returncode != 0


def test_prometheus_scrapes_the_pods_metrics_ports() -> None:
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    service = load_yaml(KUBERAY / "metrics-service.yaml")
    namespace, name = service["metadata"]["namespace"], service["metadata"]["name"]
    names = jobs["labeler-kubernetes"]["dns_sd_configs"][0]["names"]
    assert names == [f"_{p['name']}._tcp.{name}.{namespace}.svc.cluster.local" for p in service["spec"]["ports"]]
    launcher = load_yaml(DEPLOY / "launcher" / "aws-gpu.yaml")
    target_dir = jobs["labeler-launcher"]["file_sd_configs"][0]["files"][0].rsplit("/", 1)[0]
    assert any(target_dir in command for command in launcher["head_start_ray_commands"])


# ---------------------------------------------------------------------------------------------- dashboard

PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "inf",
    "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: what is left after strings, Grafana variables, label matchers,
    ranges, grouping clauses, numbers, durations, keywords and function names are removed."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', " ", expr)
    text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"(?<![\w:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", text):
        is_function = re.match(r"\s*\(", text[match.end() :]) is not None
        if not is_function and match.group().lower() not in PROMQL_KEYWORDS:
            names.add(match.group())
    return names


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "labeler.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("sum by (status) (rate(labeler_features_total[$__rate_interval]))", {"labeler_features_total"}),
        (
            'histogram_quantile(0.95, sum by (le) (rate(labeler_chunk_seconds_bucket{job=~"a|b"}[5m])))',
            {"labeler_chunk_seconds_bucket"},
        ),
        ("max by (instance, device, kind) (labeler_device_memory_bytes) / 1e9", {"labeler_device_memory_bytes"}),
        ("a_total / on (pod) group_left(node) b offset 1h > bool 0.5", {"a_total", "b"}),
        ('sum(x) without (le) or label_replace(y, "d", "$1", "s", "(.*)")', {"x", "y"}),
        ("rate(c[${interval}]) and ignoring(job) d:recorded:rate5m", {"c", "d:recorded:rate5m"}),
    ],
)
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


def test_dashboard_queries_only_exported_metrics() -> None:
    exported = exported_series()
    exprs = dashboard_exprs()
    used = set().union(*(promql_metric_names(expr) for expr in exprs))
    assert used, "the dashboard has no queries"
    assert used <= exported, f"not exported by labeler/run/metrics.py: {sorted(used - exported)}"
    # It shows what the service issue asks for.
    wanted = {
        "labeler_features_total",
        "labeler_restarts_total",
        "labeler_optimisation_steps_total",
        "labeler_chunk_seconds_bucket",
        "labeler_queue_depth",
        "labeler_chunks_in_flight",
        "labeler_workers",
        "labeler_device_memory_bytes",
    }
    assert wanted <= used, sorted(wanted - used)
    assert any("histogram_quantile(0.95" in e for e in exprs) and any("histogram_quantile(0.5" in e for e in exprs)
    assert any("by (reason)" in e and "labeler_features_total" in e for e in exprs)


def test_a_dashboard_with_an_unknown_metric_is_caught() -> None:
    planted = [*dashboard_exprs(), "sum(rate(labeler_feature_total[5m]))"]  # one letter off
    used = set().union(*(promql_metric_names(expr) for expr in planted))
    assert used - exported_series() == {"labeler_feature_total"}


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"labeler:dashboard:{i}", "expr": expr.replace("$__rate_interval", "5m")}
                    for i, expr in enumerate(dashboard_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([str(PROMTOOL), "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    datasource = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")
    uids = {source["uid"] for source in datasource["datasources"]}
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "labeler.json").read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] in uids, panel["title"]
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "labeler.yaml")
    assert provider["providers"][0]["type"] == "file"


# ---------------------------------------------------------------------------------------------- Terraform


def unquote(value: Any) -> Any:
    """python-hcl2 keeps HCL's quotes around strings and block labels; strip them, recursively."""
    if isinstance(value, str):
        return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    if isinstance(value, list):
        return [unquote(item) for item in value]
    if isinstance(value, dict):
        return {unquote(k): unquote(v) for k, v in value.items() if k != "__is_block__"}
    return value


def terraform(file: str) -> dict[str, Any]:
    with (INFRA / file).open() as handle:
        parsed: dict[str, Any] = unquote(hcl2.load(handle))
        return parsed


def terraform_blocks(file: str, section: str, kind: str) -> dict[str, Any]:
    return {name: body for block in terraform(file).get(section, []) for name, body in block.get(kind, {}).items()}


def terraform_resource(file: str, kind: str, name: str) -> dict[str, Any]:
    resource: dict[str, Any] = terraform_blocks(file, "resource", kind)[name]
    return resource


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform not installed (the other checks parse HCL)")
def test_terraform_is_formatted() -> None:
    result = subprocess.run(
        ["terraform", "fmt", "-check", "-diff", "-recursive", str(INFRA)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_terraform_file_parses() -> None:
    files = sorted(INFRA.glob("*.tf"))
    assert {f.name for f in files} >= {"versions.tf", "variables.tf", "bucket.tf", "iam.tf", "eks.tf", "outputs.tf"}
    for path in files:
        assert terraform(path.name), path


def test_bucket_is_private_versioned_encrypted_and_aborts_multipart_uploads() -> None:
    block = terraform_resource("bucket.tf", "aws_s3_bucket_public_access_block", "labels")
    flags = ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets")
    assert all(block[flag] is True for flag in flags), block
    assert block["bucket"] == "${aws_s3_bucket.labels.id}"
    versioning = terraform_resource("bucket.tf", "aws_s3_bucket_versioning", "labels")
    assert versioning["versioning_configuration"][0]["status"] == "Enabled"
    sse = terraform_resource("bucket.tf", "aws_s3_bucket_server_side_encryption_configuration", "labels")
    assert sse["rule"][0]["apply_server_side_encryption_by_default"][0]["sse_algorithm"] in {"aws:kms", "AES256"}
    lifecycle = terraform_resource("bucket.tf", "aws_s3_bucket_lifecycle_configuration", "labels")
    aborts = [
        rule
        for rule in lifecycle["rule"]
        if rule["status"] == "Enabled" and rule.get("abort_incomplete_multipart_upload")
    ]
    assert aborts, "no enabled rule aborts incomplete multipart uploads"
    assert aborts[0]["filter"] == [{}], "the abort rule must cover the whole bucket"
    days = aborts[0]["abort_incomplete_multipart_upload"][0]["days_after_initiation"]
    if isinstance(days, str):  # a variable: its default
        variables = {k: v for block in terraform("variables.tf")["variable"] for k, v in block.items()}
        days = variables[re.fullmatch(r"\$\{var\.(\w+)\}", days).group(1)]["default"]  # type: ignore[union-attr]
    assert 1 <= days <= 7, f"incomplete uploads kept {days} days"
    # No ACL or policy anywhere grants public access.
    text = "\n".join(path.read_text() for path in INFRA.glob("*.tf"))
    assert "public-read" not in text and "aws_s3_bucket_acl" not in text


def worker_statements() -> list[dict[str, Any]]:
    locals_ = {k: v for block in terraform("iam.tf")["locals"] for k, v in block.items()}
    statements: list[dict[str, Any]] = terraform_blocks("iam.tf", "data", "aws_iam_policy_document")["worker"][
        "statement"
    ]
    for statement in statements:
        statement["resources"] = [
            re.sub(r"\$\{local\.(\w+)\}", lambda m: str(locals_[m.group(1)]), r) for r in statement["resources"]
        ]
    return statements


def check_least_privilege(statements: list[dict[str, Any]]) -> list[str]:
    """What is wrong with a worker policy: wildcard actions, wildcard resources, anything outside the
    bucket's prefix, listing without a prefix condition."""
    bucket, objects, key = (
        "${aws_s3_bucket.labels.arn}",
        "${aws_s3_bucket.labels.arn}/${var.prefix}/*",
        "${aws_kms_key.bucket.arn}",
    )
    problems = []
    for statement in statements:
        if statement.get("effect", "Allow") != "Allow":
            continue
        for action in statement["actions"]:
            if action == "*" or action.endswith(":*"):
                problems.append(f"wildcard action {action}")
        for resource in statement["resources"]:
            if resource not in {bucket, objects, key}:
                problems.append(f"resource outside the bucket's prefix: {resource}")
            if resource == bucket and statement["actions"] != ["s3:ListBucket"]:
                problems.append(f"bucket-level actions besides listing: {statement['actions']}")
            if resource == bucket and not any(
                c["variable"] == "s3:prefix" and all(v.startswith("${var.prefix}") for v in c["values"])
                for c in statement.get("condition", [])
            ):
                problems.append("s3:ListBucket without an s3:prefix condition")
    return problems


def test_worker_policy_is_least_privilege_on_the_bucket_prefix() -> None:
    statements = worker_statements()
    assert check_least_privilege(statements) == []
    granted = {action for statement in statements for action in statement["actions"]}
    assert {"s3:GetObject", "s3:PutObject", "s3:ListBucket"} <= granted


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda s: s[1].update(actions=["s3:*"]), "wildcard action s3:*"),
        (lambda s: s[1].update(resources=["*"]), "resource outside the bucket's prefix: *"),
        (lambda s: s[1].update(resources=["${aws_s3_bucket.labels.arn}/*"]), "outside the bucket's prefix"),
        (lambda s: s[0].pop("condition"), "without an s3:prefix condition"),
    ],
)
def test_least_privilege_check_catches_a_broad_policy(
    change: Callable[[list[dict[str, Any]]], None], problem: str
) -> None:
    statements = worker_statements()
    change(statements)
    assert any(problem in found for found in check_least_privilege(statements))


def test_worker_role_is_assumed_by_the_labeler_service_account_only() -> None:
    trust = terraform_blocks("iam.tf", "data", "aws_iam_policy_document")["worker_trust_irsa"]["statement"][0]
    subjects = [c["values"] for c in trust["condition"] if c["variable"].endswith(":sub")]
    account = load_yaml(KUBERAY / "serviceaccount.yaml")["metadata"]
    assert subjects == [[f"system:serviceaccount:{account['namespace']}:{account['name']}"]]


# ---------------------------------------------------------------------------------------------- image


def pins(text: str) -> dict[str, str]:
    return {
        name.lower(): version for name, version in re.findall(r"\b([A-Za-z0-9_.-]+)(?:\[[\w,]+\])?==([\w.+-]+)", text)
    }


def test_image_installs_with_the_projects_pins() -> None:
    dockerfile = (DEPLOY / "image" / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:[\w.-]+$", dockerfile, re.MULTILINE), "the image needs a CUDA base"
    install = " ".join(line for line in dockerfile.replace("\\\n", " ").splitlines() if "pip install" in line)
    image = pins(install)
    # Other tools' packages that only the tests install (the interop extra's --no-deps lines) stay out of the image.
    test_only = {"eai-sparsify", "eai-delphi", "sentence-transformers"}
    # The device-stack job's second environment pins the GPU image's own transformers and tokenizers on purpose.
    project_part = (ROOT / "Makefile").read_text().split("\nDEVICE_VENV")[0]
    makefile = {name: pin for name, pin in pins(project_part).items() if name not in test_only}
    pyproject = pins((ROOT / "pyproject.toml").read_text())
    assert makefile, "no pins found in the Makefile"
    assert not test_only & {name for name, pin in image.items() if pin is not None}
    assert {name: image.get(name) for name in makefile} == makefile
    assert {name: image.get(name) for name in pyproject} == pyproject
    readme = re.search(r"torch is pinned to ([\w.]+)", (ROOT / "README.md").read_text())
    assert readme is not None, "README.md no longer says which torch it pins"
    assert image["torch"] == readme.group(1)
    # The torch pin is installed on its own, first, as the Makefile does.
    assert install.index('"torch==2.13.0"') < install.index("pip install .")
    # The cluster runs the Ray version baked into the image.
    assert load_yaml(KUBERAY / "raycluster.yaml")["spec"]["rayVersion"] == image["ray"]


# ---------------------------------------------------------------------------------------------- secrets

SECRET_PATTERNS = {
    "AWS access key id": r"(?<![A-Z0-9])(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{16}(?![A-Z0-9])",
    "AWS secret access key": r"(?i)aws_?secret_?access_?key\W{0,4}[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])",
    "private key": r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----",
    "GitHub token": r"\bgh[pousr]_[A-Za-z0-9]{36,}",
    "Slack token": r"\bxox[abprs]-[A-Za-z0-9-]{10,}",
    "Hugging Face token": r"\bhf_[A-Za-z0-9]{34,}",
    "password or token assignment": (
        r"(?i)\b(?:password|passwd|api_?key|secret_?key|auth_?token)\s*[:=]\s*[\"'][^\"'\s$]{8,}[\"']"
    ),
}


def find_secrets(files: list[Path]) -> list[str]:
    found = []
    for path in files:
        try:
            text = path.read_text()
        except (UnicodeDecodeError, IsADirectoryError):
            continue
        for kind, pattern in SECRET_PATTERNS.items():
            for match in re.finditer(pattern, text):
                if match.group().endswith("EXAMPLE"):  # AWS's documented fake key id, as moto's docs use
                    continue
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path}:{line}: {kind}")
    return found


def test_no_secret_in_any_committed_file() -> None:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    files = [ROOT / name for name in listed.decode().split("\0") if name and (ROOT / name).is_file()]
    assert len(files) > 30
    assert find_secrets(files) == []


def test_secret_scan_finds_planted_secrets(tmp_path: Path) -> None:
    # Built from pieces so that this file itself holds no secret-looking string.
    planted = {
        "config.yaml": "aws_access_key_id: " + "AKIA" + "Q" * 16 + "\n",
        "env.sh": "export AWS_SECRET_ACCESS_KEY=" + "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "Z" * 10 + "\n",
        "id_rsa": "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIE...\n",
        "notes.md": "token: gh" + "p_" + "a1B2" * 9 + "\n",
        "hf.txt": "HF_TOKEN=" + "hf_" + "x" * 34 + "\n",
        "app.py": "password = " + '"' + "hunter2hunter2" + '"\n',
    }
    for name, text in planted.items():
        (tmp_path / name).write_text(text)
    clean = tmp_path / "clean.yaml"
    clean.write_text(
        "password: ${DB_PASSWORD}\n"
        "role: arn:aws:iam::ACCOUNT_ID:role/labeler-worker\n"
        "key: " + "AKIA" + "IOSFODNN7EXAMPLE\n"  # AWS's documented example id
    )
    found = find_secrets(sorted(tmp_path.iterdir()))
    assert sorted(f.split(":")[0].rsplit("/", 1)[1] for f in found) == sorted(planted)


# ---------------------------------------------------------------------------------------------- runbook


def test_runbook_commands_use_the_committed_files() -> None:
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    for path in sorted(set(re.findall(r"\b((?:deploy|infra)/[\w./-]+\.(?:yaml|yml|json|tf|py|md)|infra/)", runbook))):
        assert (ROOT / path).exists(), f"docs/runbook.md names {path}, which does not exist"
    assert "ray start --head --node-ip-address=127.0.0.1" in runbook
    local = (
        "ray job submit --address http://127.0.0.1:8265 --working-dir . "
        "-- labeler run --config deploy/config/run.local.yaml"
    )
    assert local in runbook
    assert "render deploy/kuberay/rayjob.yaml | kubectl apply -f -" in runbook
    # The Prometheus chart mounts the ConfigMap named RELEASE-OVERRIDE (its server deployment template).
    release, override = re.search(
        r"helm install (\S+) prometheus-community/prometheus.*?configMapOverrideName=(\S+)", runbook, re.S
    ).groups()
    assert f"kubectl -n labeler create configmap {release}-{override} " in runbook
    # The runbook uploads the harvest where the example config reads it.
    example = load_yaml(DEPLOY / "config" / "run.example.yaml")["source"]
    upload = re.search(r'aws s3 sync \S+ "s3://\$BUCKET/(labeler/harvest/[^"]+)"', runbook).group(1)
    for url in (example["exemplars"], example["features"]):
        assert url.startswith(f"s3://BUCKET/{upload}"), url


# ---------------------------------------------------------------------------------------------- local cluster


def processes_mentioning(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.fixture
def local_ray_cluster(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """`ray start --head` on 127.0.0.1 as the runbook's local path does, on free ports and a private temp
    folder, with token auth (Ray's default for local clusters); yields the job API address and the
    environment for `ray job submit`. Stopped by killing its own processes: `ray stop` would stop every
    Ray cluster of the machine."""
    bin_dir = Path(sys.executable).parent
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-labeler-deploy-", dir="/tmp"))  # short: Ray's socket paths
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
        "HOME": str(tmp_path / "home"),  # the demo SAE's cache (~/.cache/labeler) stays in the test's folder
    }
    gcs, dashboard, client, agent, agent_grpc, runtime_env, metrics, node_manager, object_manager = (
        free_port() for _ in range(9)
    )
    start = [
        str(bin_dir / "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}",
        f"--node-manager-port={node_manager}",
        f"--object-manager-port={object_manager}",
        f"--temp-dir={temp_dir}",
        "--num-cpus=2",
        "--disable-usage-stats",
    ]
    try:
        subprocess.run(start, env=env, capture_output=True, text=True, check=True, timeout=120)
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        for signal_number in (signal.SIGTERM, signal.SIGKILL):
            for pid in processes_mentioning(str(temp_dir)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal_number)
            time.sleep(3)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_run_configs_are_valid_labeler_run_configs() -> None:
    """Every run config deploy/ ships loads with `labeler run`'s own loader (unknown keys and wrong types fail)."""
    from labeler.run.loading import load_config

    example = load_config(DEPLOY / "config" / "run.example.yaml")
    assert example.discriminator.kind == "hf" and example.out.startswith("s3://BUCKET/")
    assert example.workers.num_gpus == 1 and example.workers.metrics_port == example.metrics.port == 9310
    local = load_config(DEPLOY / "config" / "run.local.yaml")
    assert local.source.exemplars is None and local.harvest is not None and local.harvest["demo"] is True


@pytest.mark.slow
def test_local_cluster_runs_the_runbooks_job_on_the_demo(
    local_ray_cluster: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """The runbook's local path: `ray job submit --address ... --working-dir . -- labeler run --config
    deploy/config/run.local.yaml` (output moved to tmp) harvests the demo SAE and labels its features. About
    1.5 minutes here: the one check that the runbook's own commands and config work as written."""
    address, env = local_ray_cluster
    out = tmp_path / "run"
    run = f"labeler run --config deploy/config/run.local.yaml --out {out} --no-progress"
    submit = f"ray job submit --address {address} --working-dir . -- {run}"
    result = subprocess.run(
        shlex.split(submit), cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=1200
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "succeeded" in result.stdout + result.stderr
    labels = pq.read_table(out / "labels").to_pylist()
    assert sorted(row["feature"] for row in labels) == list(range(8))
    assert all(row["status"] in ("labelled", "dead") for row in labels)
    assert any(row["status"] == "labelled" and row["label"] for row in labels)
    assert {row["hook_point"] for row in labels} == {"blocks.3.hook_resid_post"}
