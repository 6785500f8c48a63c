"""Deleting an account with everything it owns, for DeleteMe and `python -m video2mp3.auth users delete`.

The Media service deletes the user's jobs, videos and MP3s first, authorised by
the user's own bearer token; only then does the MySQL row go. A failure at
either step leaves an account that still exists and can retry (deleting data
is idempotent); never an account-less pile of files.
"""
from __future__ import annotations

import logging
import threading

from video2mp3.auth.users import UserRepository
from video2mp3.media.v1 import media_pb2, media_pb2_grpc
from video2mp3.telemetry import tracing

log = logging.getLogger(__name__)

MEDIA_TIMEOUT_S = 60.0


class MediaData:
    """The Media service's DeleteMyData, over one lazily opened channel."""

    def __init__(self, media_addr: str):
        self._addr = media_addr
        self._lock = threading.Lock()
        self._stub: media_pb2_grpc.MediaServiceStub | None = None

    def _media(self) -> media_pb2_grpc.MediaServiceStub:
        with self._lock:
            if self._stub is None:
                # Short reconnect backoff: a user retrying after an outage gets through at once.
                # Its calls carry the request id and trace context (telemetry/tracing.py).
                channel = tracing.client_channel(self._addr, options=[("grpc.initial_reconnect_backoff_ms", 200),
                                                                      ("grpc.max_reconnect_backoff_ms", 2000)])
                self._stub = media_pb2_grpc.MediaServiceStub(channel)
            return self._stub

    def delete_all(self, bearer_token: str) -> media_pb2.DeleteMyDataResponse:
        """Raises grpc.RpcError when the Media service did not confirm."""
        return self._media().DeleteMyData(media_pb2.DeleteMyDataRequest(),
                                          metadata=[("authorization", f"Bearer {bearer_token}")],
                                          timeout=MEDIA_TIMEOUT_S)


def delete_account(users: UserRepository, media: MediaData, user_id: int, bearer_token: str) -> bool:
    """Delete the user's data, then the user. True if the user row existed.
    Raises grpc.RpcError (data not confirmed deleted; account kept) or DatabaseUnavailable."""
    deleted = media.delete_all(bearer_token)
    log.info("deleted data of user %d: %d jobs, %d videos, %d MP3s", user_id,
             deleted.jobs_deleted, deleted.videos_deleted, deleted.mp3s_deleted)
    existed = users.delete(user_id)
    log.info("deleted user %d", user_id)
    return existed
