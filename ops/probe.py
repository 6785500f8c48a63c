"""Exit 0 if a gRPC server's grpc.health.v1 Check answers SERVING, else 1.

For container health checks where no native gRPC probe exists (docker compose):

    python -m video2mp3.ops.probe 127.0.0.1:50051 [SERVICE]
    python -m video2mp3.ops.probe --from-env    # the image's HEALTHCHECK: this container's own port
    python -m video2mp3.ops.probe --http http://127.0.0.1:9103/metrics   # an HTTP endpoint answers 200

--from-env probes 127.0.0.1 on AUTH_PORT (50051) or MEDIA_PORT (50052),
whichever this container listens on; the converter listens on neither and
passes (it is watched through its queue's consumers instead).
"""
from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def serving(address: str, service: str = "", timeout: float = 3.0) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as e:
            print(f"{address}: {e.code().name} {e.details() or ''}".rstrip(), file=sys.stderr)
            return False
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{address} {service or '(server)'}: {status}")
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _own_port() -> int | None:
    import os
    import socket

    for name, default in (("AUTH_PORT", 50051), ("MEDIA_PORT", 50052)):
        port = int(os.environ.get(name) or default)
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return port
    return None


def http_ok(url: str, timeout: float = 3.0) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            ok = r.status == 200
    except (urllib.error.URLError, OSError) as e:
        print(f"{url}: {e}", file=sys.stderr)
        return False
    print(f"{url}: {'OK' if ok else 'not OK'}")
    return ok


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--http":
        return 0 if http_ok(argv[1]) else 1
    if argv == ["--from-env"]:
        port = _own_port()
        return 0 if port is None else main([f"127.0.0.1:{port}"])
    if not argv or len(argv) > 2:
        print(__doc__, file=sys.stderr)
        return 2
    return 0 if serving(argv[0], argv[1] if len(argv) > 1 else "") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
