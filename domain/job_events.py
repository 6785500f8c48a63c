"""Job-final announcements: a converter says "job X is final", every gateway hears it.

WatchJob's poller (gateway/watch.py) reads the watched jobs every
WATCH_POLL_INTERVAL_S, which is plenty for progress but makes a watcher learn
of DONE up to a whole interval late: on a 10-second clip that was most of the
time to MP3 (docs/benchmarks.md, "bench-latency"). So the converter, right
after it has written DONE or FAILED, publishes the job id to a fanout
exchange, `<QUEUE_NAME>.final`, and each gateway process listens on a queue
of its own bound to it (exclusive, deleted with its connection) and polls at
once when the job is one it watches.

Best effort on both sides, never a source of truth: the message is
transient and unconfirmed, and a gateway whose listener is disconnected
still learns of DONE on its next poll. The job document says what the job
is; the message only says "look now".

    announce(channel, queue, job_id)         converter: on its consumer's channel
    Listener(settings, on_final).start()     gateway: on_final(job_id) on the listener's thread
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pika
import pika.exceptions

from video2mp3.core.settings import RabbitSettings
from video2mp3.domain.queue import connection_parameters

log = logging.getLogger(__name__)

RECONNECT_MAX_S = 10.0


def exchange_name(queue: str) -> str:
    """One exchange per task queue, so meshes sharing a broker (tests) do not hear each other."""
    return f"{queue}.final"


def declare(channel, queue: str) -> None:
    """The fanout exchange (idempotent). Not durable: its bindings are the
    gateways' exclusive queues, which a broker restart loses anyway, and every
    (re)connection of either side declares it again."""
    channel.exchange_declare(exchange_name(queue), exchange_type="fanout", durable=False)


def announce(channel, queue: str, job_id: str) -> None:
    """Tell every gateway that `job_id` is final. Transient, unconfirmed:
    a lost message costs a watcher one poll interval, nothing more."""
    channel.basic_publish(exchange_name(queue), "", job_id.encode(),
                          pika.BasicProperties(delivery_mode=pika.DeliveryMode.Transient))


class Listener:
    """A gateway's ear: on_final(job_id) for each announcement, on its own
    thread and connection, reconnecting with backoff until stop()."""

    def __init__(self, settings: RabbitSettings, on_final: Callable[[str], None]):
        self.s = settings
        self.on_final = on_final
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-events", daemon=True)

    def start(self) -> Listener:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops listening within ~0.5 s; never holds a shutdown up for long
        (a connection attempt to an unanswering broker is left to die with
        the process: the thread is a daemon)."""
        self._stop.set()
        self._thread.join(1.0)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._listen()
                backoff = 0.5
            except (pika.exceptions.AMQPError, OSError) as e:
                log.info("job events: RabbitMQ connection lost (%r); watchers poll meanwhile; "
                         "reconnecting in %.1fs", e, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX_S)

    def _listen(self) -> None:
        conn = pika.BlockingConnection(connection_parameters(self.s))
        try:
            ch = conn.channel()
            declare(ch, self.s.queue)
            mine = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
            ch.queue_bind(mine, exchange_name(self.s.queue))
            ch.basic_consume(mine, self._on_message, auto_ack=True)
            while not self._stop.is_set():
                conn.process_data_events(time_limit=0.5)
        finally:
            if conn.is_open:
                conn.close()

    def _on_message(self, _ch, _method, _props, body: bytes) -> None:
        try:
            self.on_final(body.decode())
        except Exception:  # a nudge must never end the listener
            log.exception("job events: handling an announcement failed")
