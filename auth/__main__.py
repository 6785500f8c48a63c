"""Runs the auth service: `python -m auth`."""
from __future__ import annotations

import logging

from video2mp3.auth.v1 import auth_pb2_grpc

from auth.config import AuthConfig
from auth.passwords import Passwords
from auth.service import SERVICE_NAME, AuthService
from auth.users import UserRepository
from common import grpc_server, metrics, tracing
from common.health import DependencyMonitor
from common.logging import setup_logging
from common.settings import load

log = logging.getLogger("auth")


def main() -> None:
    setup_logging("auth")
    tracing.setup_tracing("auth")
    cfg = load(AuthConfig)
    metrics.serve(cfg.metrics_port)
    cfg.tokens.warn_if_insecure(log)

    users = UserRepository(cfg.mysql)
    service = AuthService(users, Passwords(cfg.hash_concurrency), cfg.tokens.secret_key,
                          cfg.token_ttl_seconds)
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
    log.info("AuthService on :%d, users in MySQL %s@%s:%d/%s", cfg.port, cfg.mysql.user,
             cfg.mysql.host, cfg.mysql.port, cfg.mysql.db)
    try:
        grpc_server.run_until_signalled(server, health, grace_seconds=cfg.grace_seconds,
                                        on_stop=monitor.stop)
    finally:
        users.close()


if __name__ == "__main__":
    main()
