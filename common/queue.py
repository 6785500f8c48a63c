"""RabbitMQ: queue topology, the task message, and a confirming publisher.

Topology: the durable queue `video` (QUEUE_NAME) is a quorum queue with a
delivery limit, so a message that keeps failing or keeps killing its worker is
dead-lettered to `<queue>.dead` after MAX_DELIVERIES deliveries instead of
looping forever. Messages go through the default exchange, as in the seed.
"""
from __future__ import annotations

import json
import logging
import threading

import pika
import pika.exceptions
from google.protobuf import json_format
from video2mp3.media.v1 import queue_pb2

from common.settings import RabbitSettings

log = logging.getLogger(__name__)

MAX_DELIVERIES = 3


class PublishError(Exception):
    """RabbitMQ is unreachable or did not confirm the message."""


def connection_parameters(s: RabbitSettings) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host=s.host,
        port=s.port,
        virtual_host=s.vhost,
        credentials=pika.PlainCredentials(s.user, s.password),
        heartbeat=s.heartbeat,
        socket_timeout=s.timeout_s,
        stack_timeout=s.timeout_s * 2,
        blocked_connection_timeout=s.timeout_s * 5,
        connection_attempts=1,
    )


def dead_letter_queue(queue: str) -> str:
    return f"{queue}.dead"


def declare_topology(channel, queue: str) -> None:
    channel.queue_declare(queue=dead_letter_queue(queue), durable=True)
    channel.queue_declare(
        queue=queue,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            # Deliveries beyond the first that are allowed before dead-lettering.
            "x-delivery-limit": MAX_DELIVERIES - 1,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead_letter_queue(queue),
        },
    )


def encode_task(task: queue_pb2.ConversionTask) -> bytes:
    fields = json_format.MessageToDict(task, preserving_proto_field_name=True)
    # The seed's keys first, in the seed's order, mp3_fid null as it always was.
    body = {"video_fid": fields.pop("video_fid", ""), "mp3_fid": fields.pop("mp3_fid", None),
            "user_email": fields.pop("user_email", ""), **fields}
    return json.dumps(body).encode()


def decode_task(body: bytes) -> queue_pb2.ConversionTask:
    """Raises ValueError for a body that is not a task message."""
    try:
        data = json.loads(body)
        return json_format.ParseDict(data, queue_pb2.ConversionTask(), ignore_unknown_fields=True)
    except (ValueError, json_format.ParseError) as e:
        raise ValueError(f"not a conversion task: {e}") from None


class Publisher:
    """Publishes persistent task messages with publisher confirms.

    pika's BlockingConnection is not thread-safe, and gRPC handlers run on many
    threads, so one lock serialises publishes over one connection, reopened on
    demand after any failure.
    """

    def __init__(self, settings: RabbitSettings):
        self.s = settings
        self._lock = threading.Lock()
        self._conn: pika.BlockingConnection | None = None
        self._channel = None

    def _open(self):
        self._conn = pika.BlockingConnection(connection_parameters(self.s))
        ch = self._conn.channel()
        ch.confirm_delivery()
        declare_topology(ch, self.s.queue)
        self._channel = ch

    def _drop(self):
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken; nothing to save
                pass

    def publish(self, task: queue_pb2.ConversionTask) -> None:
        body = encode_task(task)
        props = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent,
            content_type="application/json",
            message_id=task.job_id,
        )
        with self._lock:
            # One retry on a fresh connection: an idle connection may have been
            # dropped by the broker since the last publish.
            for attempt in (1, 2):
                try:
                    if self._channel is None or self._conn.is_closed:
                        self._open()
                    self._conn.process_data_events(0)  # service heartbeats
                    self._channel.basic_publish("", self.s.queue, body, props, mandatory=True)
                    return
                except (pika.exceptions.AMQPError, OSError) as e:
                    self._drop()
                    if attempt == 2:
                        raise PublishError(f"RabbitMQ did not accept the job: {e!r}") from None

    def check(self) -> None:
        """Raises PublishError if RabbitMQ cannot be reached now."""
        with self._lock:
            try:
                if self._channel is None or self._conn.is_closed:
                    self._open()
                self._conn.process_data_events(0)
            except (pika.exceptions.AMQPError, OSError) as e:
                self._drop()
                raise PublishError(f"{e!r}") from None

    def close(self) -> None:
        with self._lock:
            self._drop()
