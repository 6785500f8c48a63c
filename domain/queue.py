"""RabbitMQ: queue topology, the task message, and a confirming publisher.

Topology: the durable queue `video` (QUEUE_NAME) is a quorum queue with a
delivery limit, so a message that keeps failing or keeps killing its worker is
dead-lettered to `<queue>.dead` after MAX_DELIVERIES deliveries instead of
looping forever. Messages go through the default exchange, as in the seed.

The express lane `<queue>.express` (express_queue) has the same topology (its
dead letters go to `<queue>.express.dead`) and the same ConversionTask
message; the gateway's fair dispatcher (gateway/outbox.py) decides which lane
a job takes, and the converter's express workers consume it.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import threading
from queue import SimpleQueue

import pika
import pika.exceptions
from google.protobuf import json_format
from pika.adapters.blocking_connection import BlockingChannel

from video2mp3.core.settings import RabbitSettings
from video2mp3.media.v1 import queue_pb2
from video2mp3.telemetry import metrics, tracing

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


def express_queue(queue: str) -> str:
    return f"{queue}.express"


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
    """Publishes persistent task messages with publisher confirms, within a deadline.

    pika's BlockingConnection is not thread-safe and cannot time out a publish
    whose confirm never comes (a broker that accepts bytes and never answers),
    so one daemon thread owns the connection and does every publish and check,
    and callers (gRPC handlers, the outbox, the health monitor) wait for its
    answer at most RABBITMQ_TIMEOUT_S. A caller that gives up gets PublishError;
    the job stays unpublished for the outbox, and if the late publish does go
    through after all, the converter acks the duplicate task.
    """

    def __init__(self, settings: RabbitSettings):
        self.s = settings
        self._conn: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._calls: SimpleQueue = SimpleQueue()
        # Consumers of each queue as the last check() saw them.
        self.consumers: dict[str, int] = {}
        self._thread = threading.Thread(target=self._serve, name="amqp-publisher", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            fn, future = self._calls.get()
            if fn is None:
                return
            if future.set_running_or_notify_cancel():  # False: its caller gave up already
                try:
                    future.set_result(fn())
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    future.set_exception(e)

    def _call(self, fn, what: str):
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.put((fn, future))
        try:
            return future.result(timeout=self.s.timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise PublishError(f"RabbitMQ did not {what} within {self.s.timeout_s:g}s") from None

    def _open(self) -> tuple[pika.BlockingConnection, BlockingChannel]:
        conn = self._conn = pika.BlockingConnection(connection_parameters(self.s))
        ch = conn.channel()
        ch.confirm_delivery()
        declare_topology(ch, self.s.queue)
        declare_topology(ch, express_queue(self.s.queue))
        self._channel = ch
        return conn, ch

    def _connected(self) -> tuple[pika.BlockingConnection, BlockingChannel]:
        """The open connection and its channel, (re)opened if need be."""
        if self._conn is None or self._channel is None or self._conn.is_closed:
            return self._open()
        return self._conn, self._channel

    def _drop(self):
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken; nothing to save
                conn.close()

    def publish(self, task: queue_pb2.ConversionTask, express: bool = False) -> None:
        """Returns once RabbitMQ confirmed the message; raises PublishError if
        it is unreachable, refuses it or does not confirm within the deadline.
        `express`: on the express lane (express_queue) instead of the queue.
        The message carries the request id and trace context (telemetry/tracing.py)."""
        queue = express_queue(self.s.queue) if express else self.s.queue
        with tracing.producing(queue, task.job_id) as headers:
            metrics.QUEUE_PUBLISHES.labels("task").inc()
            try:
                self._publish(task, headers, queue)
            except PublishError:
                metrics.QUEUE_PUBLISH_FAILURES.labels("task").inc()
                raise
            metrics.QUEUE_CONFIRMS.labels("task").inc()

    def _publish(self, task: queue_pb2.ConversionTask, headers: dict, queue: str) -> None:
        body = encode_task(task)
        props = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent,
            content_type="application/json",
            message_id=task.job_id,
            headers=headers or None,
        )

        def publish():
            # One retry on a fresh connection: an idle connection may have been
            # dropped by the broker since the last publish.
            for attempt in (1, 2):
                try:
                    conn, channel = self._connected()
                    conn.process_data_events(0)  # service heartbeats
                    channel.basic_publish("", queue, body, props, mandatory=True)
                    return
                except (pika.exceptions.AMQPError, OSError) as e:
                    self._drop()
                    if attempt == 2:
                        raise PublishError(f"RabbitMQ did not accept the job: {e!r}") from None

        self._call(publish, "confirm the job")

    def check(self) -> None:
        """Raises PublishError if RabbitMQ cannot be reached now. Records the
        queues' depth and consumers (video2mp3_queue_messages / _consumers)."""
        def check():
            try:
                conn, channel = self._connected()
                conn.process_data_events(0)
                express = express_queue(self.s.queue)
                for queue in (self.s.queue, dead_letter_queue(self.s.queue), express, dead_letter_queue(express)):
                    ok = channel.queue_declare(queue, passive=True).method
                    metrics.QUEUE_MESSAGES.labels(queue).set(ok.message_count)
                    metrics.QUEUE_CONSUMERS.labels(queue).set(ok.consumer_count)
                    self.consumers[queue] = ok.consumer_count
            except (pika.exceptions.AMQPError, OSError) as e:
                self._drop()
                raise PublishError(f"{e!r}") from None

        self._call(check, "answer")

    def express_consumed(self) -> bool:
        """Whether the last check() saw a consumer on the express lane (a
        converter with express workers): the gateway uses the lane only then."""
        return self.consumers.get(express_queue(self.s.queue), 0) > 0

    def close(self) -> None:
        """Closes the connection (if the publisher thread is free to) and ends the thread."""
        # Stuck on a hung broker: the daemon thread dies with the process.
        with contextlib.suppress(PublishError):
            self._call(self._drop, "close the connection")
        self._calls.put((None, None))
