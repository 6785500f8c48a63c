"""`make kube-up` and `make kube-down`: deploy/k8s/overlays/local, rendered by
kustomize, run as far as `podman kube play` (podman 4.3) runs it, to try the
manifests on a machine without a cluster.

    python deploy/kube_play.py up       # then waits until GET /health is 200 on 127.0.0.1:$KUBE_PORT (8081)
    python deploy/kube_play.py down     # pods, volumes, secrets and the network
    python deploy/kube_play.py plan     # what would be played and what is left to a cluster, as YAML

What podman plays, from the manifests as they are: the Deployments (as pods:
images, commands, args, env from the ConfigMap and the Secrets, volumes,
security contexts, resources), the ConfigMap, the PersistentVolumeClaims
(as volumes) and the Secrets (made here as `kubectl create secret` would,
with random passwords and a new signing key, none kept).

What needs a real cluster, and is left out here (tests/unit/test_deploy.py checks
it offline): Services and their DNS names, NetworkPolicies, the
HorizontalPodAutoscaler, PodDisruptionBudgets, KEDA's ScaledObject and
TriggerAuthentication, topology spread, gRPC and HTTP probes (podman runs
none; readiness commands are run here once, to order the start).

Changed for podman, in what is played, never in the manifests:
- StatefulSets are played as Deployments, their volumeClaimTemplates as
  PVCs named as Kubernetes names them (data-mysql-0);
- Services become names: each pod gets a fixed address on a network of its
  own, and every pod an /etc/hosts entry (hostAliases) for each Service,
  pointing at the pod the Service selects;
- emptyDirs are named after their pod (podman names the volume after the
  emptyDir alone, which pods would share);
- containerPorts go (podman would publish each on the host, where this
  machine's own MySQL and RabbitMQ listen), but Envoy's, published on
  127.0.0.1:$KUBE_PORT; one replica each;
- images that cannot be pulled here run as local stand-ins (deploy/images.sh);
- Secrets are handed to podman the way podman 4.3 reads them: for env, a JSON
  map of base64 values; for a volume, a Secret object with the files' contents
  undecoded in `data` (the volume, named after the Secret, goes with the rest).
"""
from __future__ import annotations

import base64
import copy
import ipaddress
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OVERLAY = ROOT / "deploy" / "k8s" / "overlays" / "local"
IMAGES = ROOT / "deploy" / "images.sh"
NETWORK = "video2mp3-kube"
NAMESPACE = "video2mp3"
PLAYED = {"Deployment", "StatefulSet", "ConfigMap", "PersistentVolumeClaim"}
# Official image -> stand-in kind (deploy/images.sh), for what cannot be pulled.
STANDINS = {"mysql": "mariadb", "rabbitmq": "rabbitmq", "mongo": "secantusdb"}
APP_IMAGES = ("video2mp3:latest", "video2mp3-envoy:latest")
# Started first, each until its readiness command passes: what the apps need.
DEPENDENCIES = ("mysql", "rabbitmq", "mongo")
ENVOY = "envoy"
READY_TIMEOUT_S = 180
HEALTH_TIMEOUT_S = 180
PODMAN_NOISE = ("unable to get systemd connection", "failed to connect to syslog")


def say(msg: str) -> None:
    print(f"kube: {msg}", file=sys.stderr, flush=True)


def fail(msg: str) -> None:
    say(msg)
    raise SystemExit(1)


def podman(*args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(["podman", *args], input=stdin, capture_output=True, text=True)
    if check and r.returncode != 0:
        err = "\n".join(x for x in r.stderr.splitlines() if not any(n in x for n in PODMAN_NOISE))
        fail(f"podman {' '.join(args[:3])} failed: {err.strip()}")
    return r


def render() -> list[dict]:
    r = subprocess.run(["kubectl", "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        fail(f"kubectl kustomize {OVERLAY.relative_to(ROOT)} failed: {r.stderr.strip()}")
    return [d for d in yaml.safe_load_all(r.stdout) if d]


# ------------------------------------------------------------------ the plan

def _pod(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def _selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def as_deployment(sts: dict) -> tuple[dict, list[dict]]:
    """A StatefulSet as a Deployment of one pod, and its claims as PVCs."""
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": copy.deepcopy(sts["metadata"]),
           "spec": {"replicas": 1, "selector": copy.deepcopy(sts["spec"]["selector"]),
                    "template": copy.deepcopy(sts["spec"]["template"])}}
    name = sts["metadata"]["name"]
    pvcs = []
    for claim in sts["spec"].get("volumeClaimTemplates", []):
        claim_name = f"{claim['metadata']['name']}-{name}-0"
        pvcs.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                     "metadata": {"name": claim_name, "namespace": sts["metadata"].get("namespace")},
                     "spec": copy.deepcopy(claim["spec"])})
        _pod(dep).setdefault("volumes", []).append(
            {"name": claim["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim_name}})
    return dep, pvcs


def _service_aliases(docs: list[dict], workloads: list[tuple[dict, list[dict]]], ips: dict[str, str]) -> list[dict]:
    """Each Service's names -> the address of the one pod it selects, as hostAliases."""
    aliases: dict[str, list[str]] = {}
    for svc in (d for d in docs if d["kind"] == "Service"):
        selector = svc["spec"].get("selector", {})
        target = next((w for w, _ in workloads
                       if _selects(selector, w["spec"]["template"]["metadata"].get("labels", {}))), None)
        if target is not None:
            name = svc["metadata"]["name"]
            aliases.setdefault(ips[target["metadata"]["name"]], []).extend(
                [name, f"{name}.{NAMESPACE}", f"{name}.{NAMESPACE}.svc", f"{name}.{NAMESPACE}.svc.cluster.local"])
    return [{"ip": ip, "hostnames": names} for ip, names in sorted(aliases.items())]


def _own_empty_dirs(name: str, pod: dict) -> None:
    """podman names an emptyDir's volume after it alone (one "tmp" for every pod): prefix the pod's name."""
    renamed = {v["name"]: f"{name}-{v['name']}" for v in pod.get("volumes", []) if "emptyDir" in v}
    for v in pod.get("volumes", []):
        v["name"] = renamed.get(v["name"], v["name"])
    for c in pod["containers"]:
        for m in c.get("volumeMounts", []):
            m["name"] = renamed.get(m["name"], m["name"])


def _container_for_podman(name: str, c: dict, port: int, images: dict[str, str]) -> None:
    """Local images, probes by port number, and only Envoy's http port published (on 127.0.0.1)."""
    c["image"] = images.get(c["image"], c["image"])
    named = {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        for kind in ("httpGet", "tcpSocket", "grpc"):
            action = c.get(probe, {}).get(kind)
            if action and isinstance(action.get("port"), str):
                action["port"] = named[action["port"]]
    c["ports"] = [dict(p, hostPort=port, hostIP="127.0.0.1") for p in c.get("ports", [])
                  if name == ENVOY and p.get("name") == "http"]


def _secret_names(workloads: list[tuple[dict, list[dict]]]) -> tuple[list[str], list[str]]:
    """(every Secret a workload uses, those mounted as volumes)."""
    volumes = {v["secret"]["secretName"] for w, _ in workloads for v in _pod(w).get("volumes", []) if "secret" in v}
    env = {ref["name"] for w, _ in workloads for c in _pod(w)["containers"] for e in c.get("env", [])
           for ref in [e.get("valueFrom", {}).get("secretKeyRef")] if ref}
    return sorted(env | volumes), sorted(volumes)


def plan(docs: list[dict], subnet: str, port: int, images: dict[str, str]) -> dict:
    """What to play: {"workloads": [(name, ip, [docs to play])], "secrets_used": [names],
    "secret_volumes": [names of Secrets mounted as volumes], "skipped": ["Kind/name" left to a cluster]}."""
    configmaps = [d for d in docs if d["kind"] == "ConfigMap"]
    workloads: list[tuple[dict, list[dict]]] = []
    for d in docs:
        if d["kind"] == "Deployment":
            workloads.append((copy.deepcopy(d), []))
        elif d["kind"] == "StatefulSet":
            workloads.append(as_deployment(d))
    net = ipaddress.ip_network(subnet)
    ips = {w["metadata"]["name"]: str(net.network_address + 10 + i) for i, (w, _) in enumerate(workloads)}
    host_aliases = _service_aliases(docs, workloads, ips)
    out = []
    for workload, pvcs in workloads:
        name = workload["metadata"]["name"]
        workload["spec"]["replicas"] = 1
        pod = _pod(workload)
        pod["hostAliases"] = host_aliases
        _own_empty_dirs(name, pod)
        for c in pod["containers"]:
            _container_for_podman(name, c, port, images)
        out.append((name, ips[name], [*configmaps, *pvcs, workload]))
    used, volumes = _secret_names(workloads)
    skipped = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs if d["kind"] not in PLAYED)
    return {"workloads": out, "secrets_used": used, "secret_volumes": volumes, "skipped": skipped}


# ------------------------------------------------------------------ secrets

def make_secrets(keys_dir: Path) -> dict[str, dict[str, str]]:
    """What the operator creates before `kubectl apply` (docs/operations.md),
    with fresh random values: name -> {key: value}."""
    mysql, rabbit = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    subprocess.run([sys.executable, "-m", "video2mp3.auth", "keys", "new", "--dir", str(keys_dir)], check=True,
                   stdout=subprocess.DEVNULL)
    return {
        "video2mp3-secret": {
            "MYSQL_PASSWORD": mysql,
            "RABBITMQ_PASSWORD": rabbit,
            "RABBITMQ_MANAGEMENT_URL": f"http://video2mp3:{rabbit}@rabbitmq:15672/%2F",
            "MONGO_URI": "mongodb://mongo:27017/video2mp3",
        },
        "video2mp3-auth-keys": {p.name: p.read_text() for p in sorted(keys_dir.glob("*.pem"))},
    }


def podman_secret(name: str, values: dict[str, str], *, for_volume: bool) -> str:
    """A Secret as podman 4.3's kube play reads it: for env (secretKeyRef) a
    JSON map of base64 values; for a volume, a Secret object whose `data`
    holds the files' contents as they are (podman writes them undecoded, and
    ignores stringData)."""
    if for_volume:
        return json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": values})
    return json.dumps({k: base64.b64encode(v.encode()).decode() for k, v in values.items()})


# ------------------------------------------------------------------ up, down

def image_map(docs: list[dict]) -> dict[str, str]:
    out = {}
    for d in docs:
        if d["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for c in _pod(d)["containers"]:
            ref = c["image"]
            kind = STANDINS.get(ref.split(":")[0].split("/")[-1])
            if kind and ref not in out:
                r = subprocess.run(["bash", str(IMAGES), "resolve", kind, ref], stdout=subprocess.PIPE, text=True)
                if r.returncode != 0:
                    fail(f"no image for {ref}")
                out[ref] = r.stdout.strip()
    return out


def subnet_of_network() -> str:
    if podman("network", "exists", NETWORK, check=False).returncode != 0:
        podman("network", "create", "--label", "video2mp3.kube=1", NETWORK)
    return podman("network", "inspect", NETWORK, "-f", "{{range .Subnets}}{{.Subnet}}{{end}}").stdout.strip()


def ready_command(workload: dict) -> list[str] | None:
    probe = _pod(workload)["containers"][0].get("readinessProbe", {})
    return probe.get("exec", {}).get("command")


def wait_ready(name: str, workload: dict) -> None:
    """Until the pod's readiness command passes in its container, as a kubelet would ask."""
    command = ready_command(workload)
    container = f"{name}-pod-0-{_pod(workload)['containers'][0]['name']}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while command:
        r = podman("exec", container, *command, check=False)
        if r.returncode == 0:
            return
        state = podman("inspect", "-f", "{{.State.Status}}", container, check=False).stdout.strip()
        if state in ("exited", "stopped", "") or time.monotonic() > deadline:
            logs = podman("logs", "--tail", "30", container, check=False)
            fail(f"{name} did not become ready ({state or 'no container'}):\n{logs.stdout}{logs.stderr}")
        time.sleep(2)


def wait_for_health(port: int) -> None:
    url = f"http://127.0.0.1:{port}/health"
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as e:
            last = f"{e.code} {e.read()[:300]!r}"
        except OSError as e:
            last = str(e)
        time.sleep(1)
    fail(f"{url} did not answer 200 in {HEALTH_TIMEOUT_S} s (last: {last})")


def up() -> None:
    started = time.monotonic()
    for image in APP_IMAGES:
        if podman("image", "exists", image, check=False).returncode != 0:
            fail(f"no image {image}: run `make images` first")
    down(quiet=True)
    port = int(os.environ.get("KUBE_PORT") or 8081)
    docs = render()
    the_plan = plan(docs, subnet_of_network(), port, image_map(docs))
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys"
        made = make_secrets(keys)
        for name in the_plan["secrets_used"]:
            secret = Path(tmp) / f"{name}.json"
            secret.write_text(podman_secret(name, made[name], for_volume=name in the_plan["secret_volumes"]))
            podman("secret", "create", "--label", "video2mp3.kube=1", name, str(secret))
        order = sorted(the_plan["workloads"], key=lambda w: (w[0] not in DEPENDENCIES, w[0] == ENVOY))
        for name, ip, docs_ in order:
            path = Path(tmp) / f"{name}.yaml"
            path.write_text(yaml.safe_dump_all(docs_, sort_keys=False))
            podman("kube", "play", "--network", NETWORK, "--ip", ip, str(path))
            say(f"played {name} ({ip})")
            if name in DEPENDENCIES:
                wait_ready(name, docs_[-1])
                say(f"{name} is ready")
    say(f"not played (they need a cluster; checked offline by tests/unit/test_deploy.py): "
        f"{', '.join(the_plan['skipped'])}")
    wait_for_health(port)
    say(f"up in {time.monotonic() - started:.0f} s: http://127.0.0.1:{port}/ (GET /health answers 200)")


def down(quiet: bool = False) -> None:
    docs = render()
    names = [d["metadata"]["name"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    podman("pod", "rm", "--ignore", "-f", "-t", "10", *[f"{name}-pod-0" for name in names], check=False)
    volumes = [f"{c['metadata']['name']}-{d['metadata']['name']}-0" for d in docs if d["kind"] == "StatefulSet"
               for c in d["spec"].get("volumeClaimTemplates", [])]
    volumes += [f"{d['metadata']['name']}-{v['name']}" for d in docs if d["kind"] in ("Deployment", "StatefulSet")
                for v in _pod(d).get("volumes", []) if "emptyDir" in v]
    # (A Secret volume is a named volume podman fills once, named after the Secret.)
    volumes += ["video2mp3-auth-keys"]
    for volume in volumes:
        podman("volume", "rm", "-f", volume, check=False)
    for secret in ("video2mp3-secret", "video2mp3-auth-keys"):
        podman("secret", "rm", secret, check=False)
    podman("network", "rm", "-f", NETWORK, check=False)
    left = [f"pod {n}-pod-0" for n in names if podman("pod", "exists", f"{n}-pod-0", check=False).returncode == 0]
    left += [f"volume {v}" for v in volumes if podman("volume", "exists", v, check=False).returncode == 0]
    if podman("network", "exists", NETWORK, check=False).returncode == 0:
        left.append(f"network {NETWORK}")
    if left:
        fail(f"still there after down: {', '.join(left)}")
    if not quiet:
        say("down: no pod, volume, secret or network of it is left")


def show_plan() -> None:
    docs = render()
    the_plan = plan(docs, "10.89.0.0/24", int(os.environ.get("KUBE_PORT") or 8081), {})
    yaml.safe_dump_all([d for _, _, ds in the_plan["workloads"] for d in ds[-1:]], sys.stdout, sort_keys=False)
    print(f"# not played: {', '.join(the_plan['skipped'])}")


if __name__ == "__main__":
    actions = {"up": up, "down": down, "plan": show_plan}
    if len(sys.argv) != 2 or sys.argv[1] not in actions:
        fail("usage: python deploy/kube_play.py up | down | plan")
    actions[sys.argv[1]]()
