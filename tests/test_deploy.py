"""deploy/kubernetes without a cluster: every manifest validates (core kinds with
kubernetes-validate, the custom kinds against deploy/schemas), and the manifests agree with
each other and with the server (ports, probe paths, env names, metric names, secrets)."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pipeline.config import EngineConfig
from server.app import REGISTRY, create_app
from server.config import ClusterConfig, ServerConfig, load_config

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "kubernetes"
SCHEMAS = ROOT / "deploy" / "schemas"
KUBERNETES_VERSION = "1.33.0"
"""The oldest Kubernetes the manifests are checked against (GPU Operator and STUNner support it)."""


def documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return docs


def custom_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for path in SCHEMAS.glob("*.json"):
        schema = json.loads(path.read_text())
        props = schema["properties"]
        schemas[(props["apiVersion"]["const"], props["kind"]["const"])] = schema
    return schemas


def validate(doc: dict[str, Any]) -> None:
    """Raises when the document does not match its kind's schema (or its kind has none)."""
    schema = custom_schemas().get((doc["apiVersion"], doc["kind"]))
    if schema is not None:
        jsonschema.Draft202012Validator(schema).validate(doc)
    else:  # core kinds; SchemaNotFoundError for a kind neither knows
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in documents() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def server_routes() -> set[str]:
    return {r.canonical for r in create_app(ServerConfig(engine=EngineConfig(kind="preview"))).router.resources()}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_every_manifest_validates_and_kustomize_lists_every_file():
    docs = documents()
    kinds = {d["kind"] for _, d in docs}
    assert {"Namespace", "StatefulSet", "Service", "Secret", "Ingress", "HorizontalPodAutoscaler"} <= kinds
    assert {"PodDisruptionBudget", "GatewayClass", "Gateway", "GatewayConfig", "UDPRoute", "ServiceMonitor"} <= kinds
    for name, doc in docs:
        try:
            validate(doc)
        except Exception as exc:  # noqa: BLE001 - name the file and the object, then fail
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata'].get('name')}: {exc}")
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    files = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    for _, doc in docs:
        if doc["kind"] not in ("Namespace", "GatewayClass"):
            assert doc["metadata"]["namespace"] == "livestyle", doc["metadata"]["name"]


@pytest.mark.parametrize(
    ("kind", "breakage"),
    [
        ("StatefulSet", lambda d: d["spec"].__setitem__("replicas", "two")),
        ("Service", lambda d: d["spec"]["ports"][0].__setitem__("port", "http")),
        ("Gateway", lambda d: d["spec"].pop("gatewayClassName")),
        ("GatewayConfig", lambda d: d["spec"].__setitem__("authType", "open-door")),
        ("UDPRoute", lambda d: d["spec"]["rules"][0].__setitem__("backendRefs", [])),
        ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].__setitem__("interval", "soon")),
        ("GatewayClass", lambda d: d["spec"].__setitem__("controllerName", "no slash")),
    ],
)
def test_the_validation_catches_a_broken_manifest(kind, breakage):
    doc = copy.deepcopy(next(d for _, d in documents() if d["kind"] == kind))
    breakage(doc)
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate(doc)


def test_the_statefulset_matches_the_server_and_the_services():
    sts = one("StatefulSet")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    headless, service, anyone = (one("Service", n) for n in ("livestyle-headless", "livestyle", "livestyle-all"))

    # Ports: the container's, the server's setting and both Services agree.
    (port,) = container["ports"]
    assert port["name"] == "http" and port["containerPort"] == int(env["LIVESTYLE_PORT"]) == 8080
    for svc in (headless, service, anyone):
        assert svc["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
        assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(8080, "http")]
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"] and headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True  # full pods still serve their own streams
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in sts["spec"]["selector"]["matchLabels"].items())

    # Probes and the preStop hook name routes the server has.
    routes = server_routes()
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert {"/healthz", "/readyz", "/admin/drain", "/metrics"} <= routes
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == "http"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # a cold start compiles for minutes
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python", "-c"]
    compile(command[2], "preStop", "exec")  # the hook's program is valid Python (the image has no curl)
    pre_stop = " ".join(command)
    assert "127.0.0.1:8080/admin/drain?wait=1" in pre_stop and "LIVESTYLE_ADMIN_TOKEN" in pre_stop
    timeout = int(re.search(r"timeout=(\d+)", pre_stop)[1])
    grace = float(env["LIVESTYLE_DRAIN_GRACE"])
    assert grace < timeout < sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]

    # One GPU per pod; the compile cache on the pod's own volume.
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    (mount,) = container["volumeMounts"]
    assert mount["name"] == claim["metadata"]["name"] and env["LIVESTYLE_COMPILE_CACHE"].startswith(mount["mountPath"])


def test_the_environment_is_what_the_config_reader_reads():
    sts = one("StatefulSet")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    source = (ROOT / "server" / "config.py").read_text()
    read = set(re.findall(r'"(LIVESTYLE_[A-Z_]+)"', source))
    unknown = {name for name in env if name.startswith("LIVESTYLE_")} - read
    assert not unknown, f"the server reads no such variables: {sorted(unknown)}"

    # Secrets: every reference names a key that the Secret manifest has.
    secrets = {d["metadata"]["name"]: d["stringData"] for _, d in documents() if d["kind"] == "Secret"}
    given: dict[str, str] = {}
    for name, value in env.items():
        if isinstance(value, dict) and "secretKeyRef" in value:
            ref = value["secretKeyRef"]
            assert ref["key"] in secrets[ref["name"]], (name, ref)
            given[name] = "x" * 24  # a stand-in of the allowed length
        elif isinstance(value, dict):
            assert value == {"fieldRef": {"fieldPath": "metadata.name"}}, name
            given[name] = "livestyle-0"
        else:
            given[name] = value
    config = load_config([], environ=given)  # the server accepts this environment as it is
    assert config.port == 8080 and config.cluster.pod_name == "livestyle-0" and config.turn is not None
    headless = one("Service", "livestyle-headless")
    dns = f"{headless['metadata']['name']}.{headless['metadata']['namespace']}.svc.cluster.local"
    assert config.cluster.peer_url("livestyle-3") == f"http://livestyle-3.{dns}:8080"
    assert config.cluster.drain_grace_s == float(env["LIVESTYLE_DRAIN_GRACE"])


def test_stunner_hpa_monitoring_and_ingress_point_at_the_right_things():
    gateway_class, gateway = one("GatewayClass"), one("Gateway")
    config, route = one("GatewayConfig"), one("UDPRoute")
    assert gateway["spec"]["gatewayClassName"] == gateway_class["metadata"]["name"]
    assert gateway_class["spec"]["controllerName"] == "stunner.l7mp.io/gateway-operator"
    ref = gateway_class["spec"]["parametersRef"]
    assert (ref["kind"], ref["name"], ref["namespace"]) == ("GatewayConfig", config["metadata"]["name"], "livestyle")
    # STUNner's ephemeral credentials are the server's TURN scheme, with the same secret.
    auth = one("Secret", config["spec"]["authRef"]["name"])["stringData"]
    assert auth["type"] == "ephemeral"
    assert auth["secret"] == one("Secret", "livestyle-secrets")["stringData"]["turn-secret"]
    assert [p["name"] for p in route["spec"]["parentRefs"]] == [gateway["metadata"]["name"]]
    assert route["spec"]["rules"][0]["backendRefs"][0]["name"] == "livestyle-headless"
    listener = gateway["spec"]["listeners"][0]
    turn_urls = env_of(one("StatefulSet")["spec"]["template"]["spec"]["containers"][0])["LIVESTYLE_TURN_URLS"]
    assert listener["protocol"] == "TURN-UDP" and f":{listener['port']}?transport=udp" in turn_urls

    hpa = one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "livestyle"}
    (metric,) = hpa["spec"]["metrics"]
    rules = yaml.safe_load(one("ConfigMap", "livestyle-adapter-rules")["data"]["config.yaml"])["rules"]
    assert metric["pods"]["metric"]["name"] in [r["name"]["as"] for r in rules]
    metrics_source = (ROOT / "server" / "metrics.py").read_text()
    for name in re.findall(r"\b(livestyle_[a-z_]+)\{", json.dumps(rules)):
        assert f'"{name}"' in metrics_source, f"the server exports no metric {name}"

    monitor, headless = one("ServiceMonitor"), one("Service", "livestyle-headless")
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert all(headless["metadata"]["labels"].get(k) == v for k, v in selected.items())
    for other in ("livestyle", "livestyle-all"):  # each pod scraped once
        assert not all(one("Service", other)["metadata"]["labels"].get(k) == v for k, v in selected.items())
    assert monitor["spec"]["endpoints"][0]["port"] == headless["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"

    # New sessions only to ready pods; everything else (viewers, WHIP resources, the page) to any pod.
    ingress = one("Ingress")
    assert ingress["spec"]["tls"]
    routes = {(p["path"], p["pathType"]): p["backend"]["service"] for p in ingress["spec"]["rules"][0]["http"]["paths"]}
    ready, anyone = one("Service", "livestyle"), one("Service", "livestyle-all")
    assert "publishNotReadyAddresses" not in ready["spec"] and anyone["spec"]["publishNotReadyAddresses"] is True
    assert routes == {
        ("/offer", "Exact"): {"name": "livestyle", "port": {"name": "http"}},
        ("/whip", "Exact"): {"name": "livestyle", "port": {"name": "http"}},
        ("/", "Prefix"): {"name": "livestyle-all", "port": {"name": "http"}},
    }
    assert {"/offer", "/whip"} <= server_routes()
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"] == one("StatefulSet")["spec"]["selector"]


async def test_the_prestop_hook_drains_a_real_server(preview_server):
    """The StatefulSet's preStop program, run as the kubelet would (pointed at a test server):
    it returns once the server has drained, and fails loudly with a wrong token."""
    (container,) = one("StatefulSet")["spec"]["template"]["spec"]["containers"]
    admin = "admin-token-0123456789"
    srv, base = await preview_server(cluster=ClusterConfig(admin_token=admin, drain_grace_s=0))
    program = container["lifecycle"]["preStop"]["exec"]["command"][2].replace("127.0.0.1:8080", base[len("http://") :])

    async def run(token: str) -> int:
        env = {**os.environ, "LIVESTYLE_ADMIN_TOKEN": token}
        quiet = asyncio.subprocess.DEVNULL
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", program, env=env, stderr=quiet)
        return await asyncio.wait_for(proc.wait(), 60)

    assert await run("wrong-token-0123456789") != 0
    assert not srv.app[REGISTRY].draining
    assert await run(admin) == 0
    assert srv.app[REGISTRY].draining
