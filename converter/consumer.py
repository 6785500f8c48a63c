"""The RabbitMQ side of a worker: pika mechanics, no decisions about jobs.

Consumes the task queue (prefetch 1, manual acks) and its dead-letter queue,
reconnecting with backoff. A task runs on its own thread while the
connection's thread keeps servicing heartbeats; its outcome comes back with
add_callback_threadsafe (pika's documented pattern for long work) and is
settled there. What a message's outcome is, the handlers say
(converter/worker.py's Worker, by the rules of converter/policy.py):

    on_task(body, waiting) -> Outcome                     (on the task thread)
        waiting() -> tasks queued behind it, kept fresh while it runs
    on_dead_letter(body, headers, queue_copy) -> Outcome  (on the connection thread)

HAND_BACK is a confirmed fresh copy of the task, then an ack of the delivery:
a requeued message counts against the quorum queue's delivery limit, a copy
starts afresh.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable

import pika
import pika.exceptions

from video2mp3.converter.policy import Outcome
from video2mp3.core.settings import RabbitSettings
from video2mp3.domain import job_events
from video2mp3.domain.queue import connection_parameters, dead_letter_queue, declare_topology
from video2mp3.telemetry import metrics, tracing

log = logging.getLogger(__name__)

# on_task(body, tasks waiting in the queue behind it, now) -> Outcome
TaskHandler = Callable[[bytes, Callable[[], int]], Outcome]
# queue_copy(extra_headers) -> whether a confirmed copy of the message was queued
DeadLetterHandler = Callable[[bytes, dict, Callable[[dict], bool]], Outcome]

# Headers the broker adds to a delivery: a copy must not carry them over.
_BROKER_HEADERS = ("x-delivery-count", "x-death", "x-first-death-queue",
                   "x-first-death-reason", "x-first-death-exchange")
# While a task runs, the queue's depth is asked again this often.
WAITING_REFRESH_S = 0.5


class Consumer:
    def __init__(self, settings: RabbitSettings, on_task: TaskHandler,
                 on_dead_letter: DeadLetterHandler, stopping: threading.Event,
                 count_waiting: bool = True, announce_to: str | None = None):
        # announce_to: the task queue whose gateways hear of final jobs
        # (domain/job_events.py); the express lane's workers announce to the
        # normal queue's, which is the one gateways listen on.
        # count_waiting: ask the queue's depth for on_task (a broker round
        # trip per task, and every WAITING_REFRESH_S while it runs); only
        # CONVERTER_OVERLAP=auto uses it.
        self.s = settings
        self.announce_to = announce_to or settings.queue
        self.count_waiting = count_waiting
        self._waiting_now = 0
        self._waiting_asked = 0.0
        self.on_task = on_task
        self.on_dead_letter = on_dead_letter
        self.stopping = stopping
        self._inflight: threading.Thread | None = None
        # The connection being consumed and a channel of its own for
        # announce_final: an error there (the exchange refused or deleted)
        # closes that channel only, never the one tasks come on.
        self._conn: pika.BlockingConnection | None = None
        self._ch = None

    def run(self) -> None:
        """Consumes until `stopping` is set and the task in hand is settled."""
        backoff = 0.5
        while not self.stopping.is_set():
            try:
                self._consume()
                backoff = 0.5
            except (pika.exceptions.AMQPError, OSError) as e:
                log.warning("RabbitMQ connection lost (%r); reconnecting in %.1fs", e, backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 10)

    def _consume(self) -> None:
        conn = pika.BlockingConnection(connection_parameters(self.s))
        try:
            ch = conn.channel()
            ch.basic_qos(prefetch_count=1)
            queue = self.s.queue
            declare_topology(ch, queue)
            self._conn, self._ch = conn, self._events_channel(conn, self.announce_to)
            tag = ch.basic_consume(queue, functools.partial(self._on_message, conn))
            dead_tag = ch.basic_consume(dead_letter_queue(queue), self._on_dead)
            log.info("consuming %s", queue)
            while not self.stopping.is_set() or self._busy():
                conn.process_data_events(time_limit=WAITING_REFRESH_S)
                if self.count_waiting and self._busy() \
                        and time.monotonic() - self._waiting_asked >= WAITING_REFRESH_S:
                    self._refresh_waiting(ch)
                if self.stopping.is_set():
                    self._stop_consuming(ch, tag, dead_tag)
            # Let the last ack/requeue callback go out before closing.
            conn.process_data_events(time_limit=0.2)
        finally:
            if conn.is_open:
                conn.close()

    @staticmethod
    def _events_channel(conn, queue: str):
        """The channel job ends are announced on, its exchange declared; None
        if the broker refuses (watchers then learn of job ends by polling)."""
        try:
            ch = conn.channel()
            job_events.declare(ch, queue)
            return ch
        except pika.exceptions.ChannelClosed as e:
            log.warning("cannot announce job ends on %s (%r); watchers will poll", job_events.exchange_name(queue), e)
            return None

    def announce_final(self, job_id: str) -> None:
        """Tell the gateways `job_id` is final (domain/job_events.py), from any
        thread: published on the connection's thread, best effort."""
        conn, ch = self._conn, self._ch
        if conn is None or ch is None:
            return

        def send() -> None:
            if ch.is_open:
                try:
                    job_events.announce(ch, self.announce_to, job_id)
                except pika.exceptions.AMQPError as e:
                    log.debug("could not announce job %s: %r", job_id, e)

        # Reconnecting: watchers learn of it on their next poll.
        with contextlib.suppress(pika.exceptions.ConnectionWrongStateError):
            conn.add_callback_threadsafe(send)

    def _stop_consuming(self, ch, *tags) -> None:
        for t in tags:
            if t in ch.consumer_tags:
                ch.basic_cancel(t)

    def _busy(self) -> bool:
        return self._inflight is not None and self._inflight.is_alive()

    def _on_message(self, conn, ch, method, props, body) -> None:
        if method.redelivered:
            metrics.QUEUE_REDELIVERIES.inc()
        self._waiting_now = 0
        if self.count_waiting:
            self._refresh_waiting(ch)

        def work():
            # The publisher's request id and trace continue here (telemetry/tracing.py).
            with metrics.BUSY_WORKERS.track_inprogress(), tracing.consuming(
                    props.headers, self.s.queue, props.message_id or "") as span:
                outcome = self.on_task(body, lambda: self._waiting_now)
                span.set_attribute("video2mp3.outcome", outcome.value)
            try:
                conn.add_callback_threadsafe(
                    functools.partial(self._settle, conn, ch, method.delivery_tag, props, body, outcome))
            except pika.exceptions.ConnectionWrongStateError:
                # The connection it came on was lost meanwhile: the broker has
                # requeued the task, and the job's state makes the redelivery harmless.
                log.info("connection gone before the task could be settled (%s); it is redelivered",
                         outcome.value)

        self._inflight = threading.Thread(target=work, name="convert", daemon=True)
        self._inflight.start()

    def _refresh_waiting(self, ch) -> None:
        """Tasks ready in the queue (not counting those other workers hold):
        one passive declare, a broker round trip. 0 if it cannot be asked."""
        self._waiting_asked = time.monotonic()
        try:
            self._waiting_now = ch.queue_declare(self.s.queue, passive=True).method.message_count
        except pika.exceptions.AMQPError as e:
            log.debug("could not read the queue's depth: %r", e)
            self._waiting_now = 0

    def _on_dead(self, ch, method, props, body) -> None:
        queue_copy = functools.partial(self._queue_copy, ch.connection, props, body)
        with tracing.consuming(props.headers, dead_letter_queue(self.s.queue), props.message_id or ""):
            outcome = self.on_dead_letter(body, dict(props.headers or {}), queue_copy)
        self._settle(ch.connection, ch, method.delivery_tag, props, body, outcome)

    def _settle(self, conn, ch, delivery_tag, props, body, outcome: Outcome) -> None:
        if not ch.is_open:
            return  # the broker redelivers it; the job state makes that harmless
        if outcome is Outcome.HAND_BACK and self._queue_copy(conn, props, body):
            outcome = Outcome.ACK
        if outcome is Outcome.ACK:
            ch.basic_ack(delivery_tag)
            metrics.QUEUE_ACKS.inc()
        else:
            ch.basic_nack(delivery_tag, requeue=True)
            metrics.QUEUE_NACKS.inc()

    def _queue_copy(self, conn, props, body, extra_headers: dict | None = None) -> bool:
        """Publish (confirmed) a fresh copy of a message on the task queue.
        If we die before acking the original, the job sees a duplicate: harmless."""
        headers = {k: v for k, v in (props.headers or {}).items() if k not in _BROKER_HEADERS}
        headers.update(extra_headers or {})
        copy = pika.BasicProperties(delivery_mode=props.delivery_mode, content_type=props.content_type,
                                    message_id=props.message_id, headers=headers or None)
        metrics.QUEUE_PUBLISHES.labels("copy").inc()
        try:
            pub = conn.channel()
            pub.confirm_delivery()
            pub.basic_publish("", self.s.queue, body, copy, mandatory=True)
            pub.close()
            metrics.QUEUE_CONFIRMS.labels("copy").inc()
            return True
        except pika.exceptions.AMQPError as e:
            metrics.QUEUE_PUBLISH_FAILURES.labels("copy").inc()
            log.warning("could not queue a copy of the task (%r)", e)
            return False
