"""One converter worker process: consumes `video` with prefetch 1 and manual acks.

The conversion runs on a thread while the connection's own thread keeps
servicing heartbeats; the ack is handed back with add_callback_threadsafe
(pika's documented pattern for long work), and only after the MP3 is stored
and the job updated. A message is acked once its job is final (DONE/FAILED),
retried in place (unacked, so no delivery is spent) while MongoDB is
unreachable, and handed back when we are shutting down: a fresh copy is
queued and the delivery acked, because a requeued message counts against the
queue's delivery limit, and a job caught by a few restarts in a row must not
be dead-lettered as if it had crashed its worker. Only an unexpected error
requeues (and counts).

Exactly one MP3 per job: each attempt takes a lease on the job and writes a
new GridFS id that is recorded on the job *before* writing; the next attempt
deletes leftovers of crashed ones, and DONE is set only by the attempt that
holds the lease, so a losing duplicate deletes its own MP3.
"""
from __future__ import annotations

import functools
import logging
import signal
import threading
import time

import pika
import pika.exceptions
import pymongo.errors
from bson import ObjectId
from bson.errors import InvalidId
from google.protobuf import json_format
from video2mp3.media.v1 import media_pb2

from common import jobs
from common.gridfs_download import ChunkedDownload
from common.mongo import VIDEOS_BUCKET, Mongo
from common.process import die_with_parent
from common.queue import MAX_DELIVERIES, connection_parameters, dead_letter_queue, decode_task, declare_topology
from converter import mp3_store, retention
from converter.config import ConverterConfig
from converter.transcode import ConversionError, transcode

log = logging.getLogger(__name__)

ACK, REQUEUE, HAND_BACK = "ack", "requeue", "hand back"
PROGRESS_EVERY_S = 0.5
# A dead letter whose job was not really attempted MAX_DELIVERIES times is
# queued again at most this often (marked by this header).
REVIVED_HEADER = "x-video2mp3-revived"
MAX_REVIVALS = 3
CRASHED_REASON = (f"the converter stopped unexpectedly on this file {MAX_DELIVERIES} times; "
                  "it may be corrupt or unsupported")


class Cancelled(Exception):
    """Shutdown deadline reached mid-conversion: hand the task back."""


class LostLease(Exception):
    """Our lease ran out (we stalled) and another worker took the job over."""


class Worker:
    def __init__(self, cfg: ConverterConfig):
        self.cfg = cfg
        self.mongo = Mongo(cfg.mongo)
        self.jobs = jobs.JobStore(self.mongo.jobs)
        self.stopping = threading.Event()
        self.cancel = threading.Event()
        self._inflight: threading.Thread | None = None

    # --- AMQP side (connection thread) --------------------------------------

    def run(self) -> None:
        backoff = 0.5
        while not self.stopping.is_set():
            try:
                self._consume()
                backoff = 0.5
            except (pika.exceptions.AMQPError, OSError) as e:
                log.warning("RabbitMQ connection lost (%r); reconnecting in %.1fs", e, backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 10)
        self.mongo.close()

    def _consume(self) -> None:
        conn = pika.BlockingConnection(connection_parameters(self.cfg.rabbit))
        try:
            ch = conn.channel()
            ch.basic_qos(prefetch_count=1)
            queue = self.cfg.rabbit.queue
            declare_topology(ch, queue)
            tag = ch.basic_consume(queue, functools.partial(self._on_message, conn))
            dead_tag = ch.basic_consume(dead_letter_queue(queue), self._on_dead)
            log.info("consuming %s", queue)
            while not self.stopping.is_set() or self._busy():
                conn.process_data_events(time_limit=0.5)
                if self.stopping.is_set():
                    self._stop_consuming(ch, tag, dead_tag)
            # Let the last ack/requeue callback go out before closing.
            conn.process_data_events(time_limit=0.2)
        finally:
            if conn.is_open:
                conn.close()

    def _stop_consuming(self, ch, *tags) -> None:
        for t in tags:
            if t in ch.consumer_tags:
                ch.basic_cancel(t)

    def _busy(self) -> bool:
        return self._inflight is not None and self._inflight.is_alive()

    def _on_message(self, conn, ch, method, props, body) -> None:
        def work():
            outcome = self.process(body)
            try:
                conn.add_callback_threadsafe(
                    functools.partial(self._settle, conn, ch, method.delivery_tag, props, body, outcome))
            except pika.exceptions.ConnectionWrongStateError:
                # The connection it came on was lost meanwhile: the broker has
                # requeued the task, and the job's state makes the redelivery harmless.
                log.info("connection gone before the task could be settled (%s); it is redelivered", outcome)

        self._inflight = threading.Thread(target=work, name="convert", daemon=True)
        self._inflight.start()

    def _settle(self, conn, ch, delivery_tag, props, body, outcome) -> None:
        if not ch.is_open:
            return  # the broker redelivers it; the job state makes that harmless
        if outcome == HAND_BACK and self._queue_copy(conn, props, body):
            outcome = ACK
        if outcome == ACK:
            ch.basic_ack(delivery_tag)
        else:
            ch.basic_nack(delivery_tag, requeue=True)

    def _queue_copy(self, conn, props, body, extra_headers: dict | None = None) -> bool:
        """Publish (confirmed) a fresh copy of a task: one we hand back at
        shutdown, or a dead letter that deserves another go. If we die before
        acking the original, the job sees a duplicate: harmless."""
        # The broker counts deliveries itself; the header it added is not carried over.
        headers = {k: v for k, v in (props.headers or {}).items()
                   if k not in ("x-delivery-count", "x-death", "x-first-death-queue",
                                "x-first-death-reason", "x-first-death-exchange")}
        headers.update(extra_headers or {})
        copy = pika.BasicProperties(delivery_mode=props.delivery_mode, content_type=props.content_type,
                                    message_id=props.message_id, headers=headers or None)
        try:
            pub = conn.channel()
            pub.confirm_delivery()
            pub.basic_publish("", self.cfg.rabbit.queue, body, copy, mandatory=True)
            pub.close()
            return True
        except pika.exceptions.AMQPError as e:
            log.warning("could not queue a copy of the task (%r)", e)
            return False

    def _on_dead(self, ch, method, props, body) -> None:
        """A message dead-lettered after MAX_DELIVERIES. If its conversion
        really started that often, the file keeps killing workers: the job
        ends FAILED and the MP3s its attempts half-wrote are deleted. If not,
        the deliveries were spent on lost connections (RabbitMQ cuts), so the
        task is queued again, a bounded number of times."""
        try:
            job_id = decode_task(body).job_id
            job = self.jobs.get(job_id)
            revived = int((props.headers or {}).get(REVIVED_HEADER, 0))
            if (job is not None and job["state"] not in jobs.FINAL_STATES
                    and job.get("attempts", 0) < MAX_DELIVERIES and revived < MAX_REVIVALS
                    and self._queue_copy(ch.connection, props, body, {REVIVED_HEADER: revived + 1})):
                log.warning("job %s dead-lettered after only %d conversion attempt(s); queued again",
                            job_id, job.get("attempts", 0))
            else:
                if self.jobs.finish_failed(job_id, CRASHED_REASON):
                    log.error("job %s dead-lettered after %d deliveries; marked FAILED", job_id, MAX_DELIVERIES)
                job = self.jobs.get(job_id)
                if job is not None and job["state"] == jobs.FAILED:
                    self._delete_leftovers(job_id, job.get("pending_mp3_fids") or [])
        except ValueError as e:
            log.error("dropping unreadable dead-lettered message: %s", e)
        except pymongo.errors.PyMongoError as e:
            log.warning("cannot settle dead-lettered job yet: %s", e)
            ch.basic_nack(method.delivery_tag, requeue=True)
            return
        ch.basic_ack(method.delivery_tag)

    # --- conversion side (worker thread) ------------------------------------

    def process(self, body: bytes) -> str:
        """Converts one task message; returns ACK, REQUEUE or HAND_BACK. Never raises."""
        try:
            task = decode_task(body)
        except ValueError as e:
            log.error("dropping message: %s", e)
            return ACK
        while True:
            try:
                return self._convert(task.job_id)
            except Cancelled:
                log.info("job %s interrupted by shutdown; handed back", task.job_id)
                return HAND_BACK
            except pymongo.errors.PyMongoError as e:
                log.warning("job %s: storage unavailable (%s); retrying", task.job_id, e)
                if self.stopping.wait(self.cfg.retry_delay_s):
                    return HAND_BACK
            except Exception:
                # A bug or a decoder crash we did not foresee: requeue, and let
                # the queue's delivery limit dead-letter a file that keeps doing it.
                log.exception("job %s: unexpected error; requeueing", task.job_id)
                return REQUEUE

    def _convert(self, job_id: str) -> str:
        mp3_fid = ObjectId()
        while True:
            job = self.jobs.get(job_id)
            if job is None:
                log.error("dropping task for unknown job %s", job_id)
                return ACK
            if job["state"] in jobs.FINAL_STATES:
                log.info("job %s already %s; duplicate task acked", job_id, job["state"])
                return ACK
            before = self.jobs.start_attempt(job_id, mp3_fid, self.cfg.lease_s)
            if before is not None:
                break
            # Another worker holds a live lease on it (a duplicate delivery):
            # wait until it finishes, or until its lease runs out because it died.
            if self.stopping.wait(1.0):
                return HAND_BACK
        self._delete_leftovers(job_id, [f for f in before.get("pending_mp3_fids") or [] if f != mp3_fid])
        log.info("job %s: converting %s (attempt %d)", job_id, before["filename"], before["attempts"] + 1)
        options = json_format.ParseDict(before.get("options", {}), media_pb2.ConversionOptions())
        dst = mp3_store.open_mp3(self.mongo, mp3_fid, before)
        try:
            with ChunkedDownload(self.mongo.db, VIDEOS_BUCKET, _oid(before["video_fid"])) as src:
                result = transcode(src, dst, options, filename=before["filename"],
                                   on_progress=self._progress_writer(job_id, mp3_fid),
                                   overlap=self.cfg.overlap)
            dst.close()
        except ConversionError as e:
            self._discard(job_id, mp3_fid)
            self.jobs.finish_failed(job_id, str(e))
            log.info("job %s FAILED: %s", job_id, e)
            return ACK
        except LostLease:
            self._discard(job_id, mp3_fid)
            log.warning("job %s was taken over by another worker; this attempt stops", job_id)
            return ACK
        except Exception:
            self._discard_quietly(job_id, mp3_fid)
            raise
        if result.header_patch:
            mp3_store.patch_bytes(self.mongo, mp3_fid, *result.header_patch)
        if self.jobs.finish_done(job_id, mp3_fid, result.bytes_written):
            log.info("job %s DONE: %d bytes, %.2fs of audio", job_id, result.bytes_written,
                     result.duration_seconds)
            retention.release_video(self.mongo, before)
        else:
            log.info("job %s was finished by another attempt; discarding this MP3", job_id)
            self._discard(job_id, mp3_fid)
        return ACK

    def _discard(self, job_id: str, mp3_fid: ObjectId) -> None:
        mp3_store.delete_quietly(self.mongo, mp3_fid)
        self.jobs.forget_pending(job_id, [mp3_fid])

    def _discard_quietly(self, job_id: str, mp3_fid: ObjectId) -> None:
        """Drop this attempt and hand the job back, best effort while MongoDB may
        be down; the next attempt cleans up whatever is left."""
        try:
            self._discard(job_id, mp3_fid)
            self.jobs.release(job_id, mp3_fid)
        except pymongo.errors.PyMongoError:
            pass

    def _delete_leftovers(self, job_id: str, leftovers: list) -> None:
        """MP3s of earlier attempts that crashed mid-write."""
        for fid in leftovers:
            mp3_store.delete_quietly(self.mongo, fid)
        if leftovers:
            self.jobs.forget_pending(job_id, leftovers)
            log.info("job %s: removed %d half-written MP3(s) of earlier attempts", job_id, len(leftovers))

    def _progress_writer(self, job_id: str, mp3_fid: ObjectId):
        last = {"at": 0.0}

        def on_progress(fraction: float) -> None:
            if self.cancel.is_set():
                raise Cancelled()
            now = time.monotonic()
            if now - last["at"] < PROGRESS_EVERY_S:
                return
            last["at"] = now
            percent = max(0, min(99, int(fraction * 100)))
            try:
                still_ours = self.jobs.renew(job_id, mp3_fid, percent, self.cfg.lease_s)
            except pymongo.errors.PyMongoError:
                return  # progress is advisory; the final write is what counts
            if not still_ours:
                raise LostLease()

        return on_progress


def _oid(value) -> ObjectId:
    try:
        return value if isinstance(value, ObjectId) else ObjectId(value)
    except InvalidId:
        raise ConversionError("the job's video reference is not valid") from None


def run_worker(cfg: ConverterConfig, index: int) -> None:
    """Entry point of a worker process. SIGTERM: stop taking work, let the
    in-flight job finish within the grace period, else requeue it."""
    from common.logging import setup_logging

    setup_logging(f"converter[{index}]")
    die_with_parent()  # never an orphan consuming with no supervisor
    worker = Worker(cfg)

    def on_term(_signum, _frame):
        worker.stopping.set()
        timer = threading.Timer(cfg.grace_seconds, worker.cancel.set)
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor turns Ctrl-C into SIGTERM
    worker.run()
