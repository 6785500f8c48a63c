"""domain/job_events.py against the real RabbitMQ: what a converter announces
reaches every gateway listening on the same queue name, and nobody else's."""
from __future__ import annotations

import threading
import time

from testkit import testbed
from video2mp3.core.settings import RabbitSettings, load
from video2mp3.domain import job_events


def test_an_announcement_reaches_every_listener_of_its_queue_only(rabbitmq_server):
    name = f"video_events_{testbed.hex_id()}"
    other = f"video_events_{testbed.hex_id()}"
    settings = load(RabbitSettings, {**rabbitmq_server, "QUEUE_NAME": name})
    heard: dict[str, list[str]] = {"a": [], "b": [], "other": []}
    got = threading.Event()

    def ear(key: str):
        def on_final(job_id: str) -> None:
            heard[key].append(job_id)
            if heard["a"] and heard["b"]:
                got.set()
        return on_final

    listeners = [job_events.Listener(settings, ear("a")), job_events.Listener(settings, ear("b")),
                 job_events.Listener(load(RabbitSettings, {**rabbitmq_server, "QUEUE_NAME": other}),
                                     ear("other"))]
    try:
        for listener in listeners:
            listener.start()
        deadline = time.monotonic() + 10
        conn = testbed.rabbit_connection(rabbitmq_server)
        try:
            ch = conn.channel()
            job_events.declare(ch, name)
            # Bound once both listeners' queues are: announce until they hear it.
            while not got.is_set() and time.monotonic() < deadline:
                job_events.announce(ch, name, "job-1")
                got.wait(0.2)
        finally:
            conn.close()
        assert got.is_set(), heard
        assert set(heard["a"]) == set(heard["b"]) == {"job-1"}
        assert heard["other"] == []
    finally:
        for listener in listeners:
            listener.stop()
        testbed.delete_queues(rabbitmq_server, name)
        testbed.delete_queues(rabbitmq_server, other)
