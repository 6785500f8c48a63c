"""Runs the gateway: `python -m gateway`."""
from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from video2mp3.auth.v1 import auth_pb2
from video2mp3.media.v1 import media_pb2, media_pb2_grpc

from common import grpc_server, jobs, metrics, tracing
from common.health import DependencyMonitor
from common.logging import setup_logging
from common.mongo import Mongo
from common.queue import Publisher
from common.settings import load
from gateway.auth import AuthInterceptor
from gateway.config import GatewayConfig
from gateway.janitor import OrphanChunkJanitor
from gateway.outbox import Outbox
from gateway.service import MediaService
from gateway.stats import JobStats
from gateway.uploads import Uploads

SERVICE_NAME = media_pb2.DESCRIPTOR.services_by_name["MediaService"].full_name
AUTH_SERVICE_NAME = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
log = logging.getLogger("gateway")


def auth_health_check(addr: str):
    """MySQL is behind the auth service; its grpc.health.v1 status says whether it is reachable."""
    stub = health_pb2_grpc.HealthStub(tracing.client_channel(addr))

    def check():
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=AUTH_SERVICE_NAME), timeout=1.5)
        except grpc.RpcError as e:
            raise RuntimeError(f"auth service at {addr} unreachable ({e.code().name})") from None
        if resp.status != health_pb2.HealthCheckResponse.SERVING:
            raise RuntimeError("auth service reports its user database unreachable")

    return check


def main() -> None:
    setup_logging("gateway")
    tracing.setup_tracing("gateway")
    cfg = load(GatewayConfig)
    metrics.serve(cfg.metrics_port)
    cfg.tokens.warn_if_insecure(log)
    mongo = Mongo(cfg.mongo)
    job_store = jobs.JobStore(mongo.jobs)
    publisher = Publisher(cfg.rabbit)
    uploads = Uploads(mongo, job_store, publisher, cfg.max_upload_bytes, cfg.max_concurrent_uploads)

    health = grpc_server.new_health()
    monitor = DependencyMonitor(
        {"mongodb": mongo.ping, "rabbitmq": publisher.check, "mysql": auth_health_check(cfg.auth.addr)},
        health, [SERVICE_NAME], critical={"mongodb"})
    service = MediaService(mongo, job_store, uploads, monitor)
    server, _ = grpc_server.build_server(
        [grpc_server.Service(service, media_pb2_grpc.add_MediaServiceServicer_to_server, SERVICE_NAME)],
        cfg.port, max_workers=cfg.max_workers, health_servicer=health,
        interceptors=[AuthInterceptor(cfg.tokens.secret_key)],
        # Envoy sends every reflection request to the gateway; offering
        # AuthService's descriptors too lets `grpcurl` through Envoy's single
        # port describe and call both services without .proto files.
        also_reflect=[AUTH_SERVICE_NAME])
    monitor.start()
    try:
        job_store.ensure_indexes()
    except Exception as e:  # noqa: BLE001 - MongoDB down at start: indexes are made on a later start
        log.warning("could not create job indexes now: %s", e)
    outbox = Outbox(job_store, uploads.publish, cfg.republish_interval_s).start()
    janitor = OrphanChunkJanitor(mongo.db, max_age_s=cfg.orphan_chunk_age_s,
                                 interval_s=cfg.janitor_interval_s).start()
    stats = JobStats(job_store, cfg.job_stats_interval_s).start()

    def on_stop():
        stats.stop()
        outbox.stop()
        janitor.stop()
        monitor.stop()

    grpc_server.run_until_signalled(server, health, grace_seconds=cfg.grace_seconds, on_stop=on_stop)
    publisher.close()
    mongo.close()


if __name__ == "__main__":
    main()
