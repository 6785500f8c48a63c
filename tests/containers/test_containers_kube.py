"""deploy/k8s/overlays/local under podman kube play (issue 24), brought up
and down by docs/operations.md's commands: the user's journey through its
Envoy over REST and gRPC, the pods as the manifests say, and what is left to
a real cluster said in the docs."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from container_flows import grpc_session, rest_session
from container_kit import OPERATIONS, ROOT, Stack, container_cmd, documented, port_free, run_documented

from localmesh.processes import free_port

# Bringing a stack up (images from nothing included) takes minutes.
pytestmark = [pytest.mark.containers, pytest.mark.timeout(1800)]
PODS = ("auth", "gateway", "converter", "envoy", "mysql", "rabbitmq", "mongo")


def _pods() -> set[str]:
    out = container_cmd("pod", "ps", "--format", "{{.Name}}").stdout.split()
    return {p.removesuffix("-pod-0") for p in out if p.removesuffix("-pod-0") in PODS}


@pytest.fixture(scope="module")
def stack():
    commands = documented("kube")
    *up, down = commands
    assert up[-1] == "make kube-up", commands
    assert down == "make kube-down", commands
    env = dict(os.environ)
    port = int(env.get("KUBE_PORT") or 8081)
    if not port_free(port):
        port = free_port()
        env["KUBE_PORT"] = str(port)
    try:
        for command in up:
            run_documented(command, env)
        assert _pods() == set(PODS)
        yield Stack(f"http://127.0.0.1:{port}", f"127.0.0.1:{port}",
                    {p: f"{p}-pod-0-{p}" for p in PODS})
    finally:
        run_documented(down, env)
    assert _pods() == set()


def test_a_rest_session_through_the_played_envoy(stack, media):
    rest_session(stack.base_url, media["video"])


def test_a_grpc_session_through_the_played_envoy(stack, media):
    grpc_session(stack.grpc_addr, media["video"])


def test_the_pods_run_as_the_manifests_say(stack):
    for app in ("auth", "gateway", "converter", "envoy"):
        name = stack.containers[app]
        assert container_cmd("exec", name, "id", "-u").stdout.strip() == "10001", app
        read_only = container_cmd("inspect", "-f", "{{.HostConfig.ReadonlyRootfs}}", name).stdout.strip()
        assert read_only == "true", app
    for dep in ("mysql", "rabbitmq", "mongo"):
        assert container_cmd("exec", stack.containers[dep], "id", "-u").stdout.strip() == "999", dep
    # Only Envoy is published, on this machine only.
    ports = container_cmd("ps", "--format", "{{.Names}} {{.Ports}}").stdout
    published = [line for line in ports.splitlines() if "->" in line and line.split()[0].endswith(tuple(PODS))]
    assert published, published
    assert all("127.0.0.1:" in line and "->8000/tcp" in line for line in published), published


def test_the_docs_say_what_was_not_played():
    r = subprocess.run([sys.executable, str(ROOT / "deploy" / "kube_play.py"), "plan"], capture_output=True,
                       text=True, timeout=120, check=True)
    skipped = r.stdout.rsplit("# not played: ", 1)[1].split(", ")
    kinds = {s.split("/")[0] for s in skipped}
    assert kinds == {"Service", "NetworkPolicy", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ScaledObject",
                     "TriggerAuthentication"}, kinds
    played = [d["kind"] for d in yaml.safe_load_all(r.stdout.rsplit("# not played: ", 1)[0]) if d]
    assert set(played) == {"Deployment"}
    assert len(played) == len(PODS)
    docs = OPERATIONS.read_text()
    for kind in ("Services", "NetworkPolicies", "HPA", "PodDisruptionBudgets", "KEDA ScaledObject",
                 "TriggerAuthentication", "StatefulSets"):
        assert kind in docs, kind
