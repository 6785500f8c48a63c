"""The auth service process: its keys, its dependencies, its gRPC server (`python -m video2mp3.auth`)."""
from __future__ import annotations

import logging

from video2mp3.auth import tables
from video2mp3.auth.accounts import MediaData
from video2mp3.auth.api_keys import ApiKeys
from video2mp3.auth.config import AuthConfig
from video2mp3.auth.keys import configured_ring
from video2mp3.auth.login_limits import LoginLimits
from video2mp3.auth.passwords import Passwords
from video2mp3.auth.service import SERVICE_NAME, AuthService
from video2mp3.auth.sessions import Sessions
from video2mp3.auth.users import DatabaseUnavailable
from video2mp3.auth.v1 import auth_pb2_grpc
from video2mp3.core.logging import setup_logging
from video2mp3.core.periodic import Periodic
from video2mp3.core.settings import load
from video2mp3.rpc import server as grpc_server
from video2mp3.rpc.health import DependencyMonitor
from video2mp3.telemetry import metrics, tracing

log = logging.getLogger("auth")


def serve() -> None:
    setup_logging("auth")
    tracing.setup_tracing("auth")
    cfg = load(AuthConfig)
    keys = configured_ring(cfg)
    metrics.serve(cfg.metrics_port)
    log.info("signing with key %s; publishing %s", keys.signing().kid,
             ", ".join(k.kid for k in keys.published()))

    users = tables.repository(cfg.mysql)
    limits = LoginLimits(users, cfg.login_limits)
    sessions = Sessions(users, cfg.sessions)
    service = AuthService(
        users,
        Passwords(cfg.hash_concurrency),
        keys,
        cfg.token_ttl_seconds,
        limits,
        MediaData(cfg.media.addr),
        api_keys=ApiKeys(users),
        sessions=sessions,
        allow_signup=cfg.allow_signup,
    )
    health = grpc_server.new_health()
    # Checks MySQL every few seconds: drives grpc.health.v1 (SERVING / NOT_SERVING)
    # and, until it first succeeds, keeps retrying the creation of the users table,
    # so a start while MySQL is down neither crashes nor needs a restart later.
    monitor = DependencyMonitor({"mysql": users.check}, health, [SERVICE_NAME],
                                interval=cfg.db_check_interval)
    server, _ = grpc_server.build_server(
        [grpc_server.Service(service, auth_pb2_grpc.add_AuthServiceServicer_to_server,
                             SERVICE_NAME)],
        cfg.port, health_servicer=health)
    monitor.start()
    # New key files (rotation) are picked up without a restart.
    reloader = Periodic("keys-reload", cfg.keys_reload_s, keys.reload, errors=(OSError,)).start()
    pruner = Periodic("login-failures-prune", 600, limits.prune, errors=(DatabaseUnavailable,)).start()
    session_pruner = Periodic("sessions-prune", 3600, sessions.prune, errors=(DatabaseUnavailable,)).start()
    log.info("AuthService on :%d, users in MySQL %s@%s:%d/%s", cfg.port, cfg.mysql.user,
             cfg.mysql.host, cfg.mysql.port, cfg.mysql.db)

    def on_stop():
        monitor.stop()
        reloader.stop()
        pruner.stop()
        session_pruner.stop()

    try:
        grpc_server.run_until_signalled(server, health, grace_seconds=cfg.grace_seconds, on_stop=on_stop)
    finally:
        users.close()

