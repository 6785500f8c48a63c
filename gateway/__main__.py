"""Runs the gateway: `python -m video2mp3.gateway`; `python -m video2mp3.gateway quota ...`
runs the admin command of quotas per user (gateway/cli.py)."""
from __future__ import annotations

import logging
import sys

import grpc
import pymongo.errors
from grpc_health.v1 import health_pb2, health_pb2_grpc

from video2mp3.auth.v1 import auth_pb2
from video2mp3.core.logging import setup_logging
from video2mp3.core.periodic import Periodic
from video2mp3.core.settings import load
from video2mp3.domain import job_events, jobs, retention
from video2mp3.domain.queue import Publisher
from video2mp3.domain.usage import WINDOW
from video2mp3.gateway import early_jobs
from video2mp3.gateway import stats as job_stats
from video2mp3.gateway.api_keys import ApiKeyCheck, grpc_get_credential
from video2mp3.gateway.auth import Authenticator, AuthInterceptor
from video2mp3.gateway.config import GatewayConfig
from video2mp3.gateway.janitor import OrphanChunkJanitor
from video2mp3.gateway.jwks import JwksCache, auth_channel, grpc_fetcher
from video2mp3.gateway.quotas import Quotas
from video2mp3.gateway.service import MediaService
from video2mp3.gateway.storage_space import StorageSpace
from video2mp3.gateway.tus import Tus
from video2mp3.gateway.uploads import Uploads
from video2mp3.gateway.user_check import UserCheck, grpc_get_me
from video2mp3.gateway.watch import WatchHub
from video2mp3.gateway.webhook_dispatch import Dispatcher, Events
from video2mp3.gateway.webhooks import Webhooks
from video2mp3.media.v1 import media_pb2, media_pb2_grpc
from video2mp3.rpc import server as grpc_server
from video2mp3.rpc.health import DependencyMonitor
from video2mp3.storage.mongo import MP3S_BUCKET, Mongo
from video2mp3.telemetry import metrics, tracing

SERVICE_NAME = media_pb2.DESCRIPTOR.services_by_name["MediaService"].full_name
AUTH_SERVICE_NAME = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
log = logging.getLogger("gateway")


def auth_health_check(channel: grpc.Channel, addr: str):
    """MySQL is behind the auth service; its grpc.health.v1 status says whether it is reachable.
    Asked over the same channel as the key fetches and user checks (gateway/jwks.auth_channel)."""
    stub = health_pb2_grpc.HealthStub(channel)

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
    mongo = Mongo(cfg.mongo)
    job_store = jobs.JobStore(mongo.jobs, queue=cfg.rabbit.queue)
    publisher = Publisher(cfg.rabbit)
    # Uploads are refused (507) before the store's disk fills (gateway/storage_space.py).
    space = StorageSpace(mongo.db, data_dir=cfg.mongo.data_dir, reserve_bytes=cfg.storage_reserve_bytes)
    quotas = Quotas(mongo.db, job_store, cfg.quotas, cfg.limits, cfg.retention)
    uploads = Uploads(mongo, job_store, publisher, cfg.max_upload_bytes, cfg.max_concurrent_uploads, space,
                      quotas, fair=cfg.fair_queue, dispatch_interval_s=cfg.republish_interval_s,
                      spool_after_bytes=cfg.spool_after_bytes)

    health = grpc_server.new_health()
    to_auth = auth_channel(cfg.auth.addr)
    monitor = DependencyMonitor(
        {"mongodb": mongo.ping, "rabbitmq": publisher.check, "mysql": auth_health_check(to_auth, cfg.auth.addr)},
        health, [SERVICE_NAME], critical={"mongodb"})
    keys = JwksCache(grpc_fetcher(to_auth), min_refetch_s=cfg.jwks_min_refetch_s)
    users = UserCheck(grpc_get_me(to_auth), ttl_s=cfg.user_cache_ttl_s, stale_s=cfg.user_cache_stale_s)
    api_keys = ApiKeyCheck(grpc_get_credential(to_auth), ttl_s=cfg.api_key_cache_ttl_s)
    hub = WatchHub(job_store, interval_s=cfg.watch_poll_interval_s, max_watchers=cfg.max_watchers)
    tus = Tus(mongo, job_store, uploads, expiry_s=cfg.upload_expiry_s)
    webhooks = Webhooks(mongo.db, cfg.webhooks)
    service = MediaService(mongo, job_store, uploads, monitor, hub, cfg.retention, users, tus=tus,
                           webhooks=webhooks, quotas=quotas)
    server, _ = grpc_server.build_server(
        [grpc_server.Service(service, media_pb2_grpc.add_MediaServiceServicer_to_server, SERVICE_NAME)],
        cfg.port,
        max_workers=cfg.max_workers,
        health_servicer=health,
        interceptors=[AuthInterceptor(Authenticator(keys, users, api_keys))],
        # Envoy sends every reflection request to the gateway; offering
        # AuthService's descriptors too lets `grpcurl` through Envoy's single
        # port describe and call both services without .proto files.
        also_reflect=[AUTH_SERVICE_NAME],
    )
    monitor.start()
    # Auth may not be up yet: an unknown kid fetches on demand anyway.
    if not keys.refresh():
        log.warning("no token keys yet; fetching them from auth at %s when the first token arrives",
                    cfg.auth.addr)
    key_refresher = Periodic("jwks-refresh", cfg.jwks_refresh_s, keys.refresh).start()
    try:
        job_store.ensure_indexes()
        tus.ensure_indexes()
        webhooks.ensure_indexes()
        quotas.ensure_indexes()
    except Exception as e:  # noqa: BLE001 - MongoDB down at start: indexes are made on a later start
        log.warning("could not create job indexes now: %s", e)
    outbox = uploads.outbox.start()
    heartbeat = Periodic("upload-heartbeat", jobs.UPLOAD_TOUCH_S, uploads.heartbeat.beat,
                         errors=(pymongo.errors.PyMongoError,)).start()
    # Also deletes the hidden jobs of streamed uploads whose gateway died (gateway/early_jobs.py).
    janitor = OrphanChunkJanitor(mongo.db, max_age_s=cfg.orphan_chunk_age_s,
                                 interval_s=cfg.janitor_interval_s,
                                 stale_jobs=lambda cutoff: early_jobs.delete_stale(mongo, job_store, cutoff)
                                 ).start()
    stats = Periodic("job-stats", cfg.job_stats_interval_s, lambda: job_stats.collect(job_store),
                     errors=(pymongo.errors.PyMongoError,)).start()
    # MP3 chunks of a conversion whose job was deleted and whose worker died
    # before it could delete them: found by their `mp3s.uploads` record (the
    # converter writes MP3s with the same ChunkedUpload), never by a chunk scan.
    mp3_janitor = OrphanChunkJanitor(mongo.db, max_age_s=cfg.orphan_chunk_age_s,
                                     interval_s=cfg.janitor_interval_s, bucket=MP3S_BUCKET).start()

    # Job events become webhook deliveries, sent from every gateway (gateway/webhook_dispatch.py).
    dispatcher = Dispatcher(mongo.db, cfg.webhooks, Events(mongo.db, job_store, service._proto)).start()

    def sweep():
        retention.sweep(mongo, job_store, cfg.retention)
        uploads.request_ids.sweep()
        tus.sweep_expired()
        dispatcher.sweep()
        quotas.ledger.prune(jobs.now() - WINDOW)

    sweeper = Periodic("retention-sweep", cfg.retention.sweep_interval_s, sweep,
                       errors=(pymongo.errors.PyMongoError,)).start()
    hub.start()
    # The converter announces each job's end: watchers hear of it at once (domain/job_events.py).
    final_events = job_events.Listener(cfg.rabbit, hub.nudge).start()

    def on_stop():
        dispatcher.stop()
        stats.stop()
        final_events.stop()
        hub.stop()
        sweeper.stop()
        key_refresher.stop()
        outbox.stop()
        heartbeat.stop()
        janitor.stop()
        mp3_janitor.stop()
        monitor.stop()

    grpc_server.run_until_signalled(server, health, grace_seconds=cfg.grace_seconds, on_stop=on_stop)
    publisher.close()
    mongo.close()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        from video2mp3.gateway import cli

        sys.exit(cli.main(sys.argv[1:]))
    main()
