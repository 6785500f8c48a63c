"""Webhook deliveries: made from job events, sent at least once, signed.

Where events come from. Every update that moves a job to PROCESSING, DONE or
FAILED (domain/jobs.py, whoever makes it: converter or gateway) adds the
event to the job's `pending_events` and sets `notify: true` in the same
conditional update. Each gateway, every WEBHOOK_POLL_INTERVAL_S, takes the
visible jobs so flagged (Events.record): for each event, and each webhook of
the job's owner subscribed to it, it inserts a delivery whose id is derived
from (webhook, job, event), so a second gateway doing the same, the same one
after a crash, or a retried conversion's second job.processing inserts
nothing new; then it removes the events it handled. A converter dying right
after DONE loses nothing: the event is in the DONE update itself. A job still
hidden (its upload not answered yet) waits; a deleted one is never announced.
The body carries the job as it is when the delivery is made.

How deliveries are sent (Dispatcher). Deliveries live in MongoDB
(`webhook_deliveries`, an outbox), so they survive any restart. A delivery is
due when PENDING and its next_attempt_time has come; a gateway claims it
with one conditional update that sets a lease (owner, until), so several
gateways never send the same attempt at once; a gateway that dies mid-attempt
leaves a lease that runs out, and the attempt is made again (at least once).
Each attempt POSTs the body stored with the delivery (the same on every
attempt) with the headers of the Standard Webhooks spec: webhook-id (the
delivery's id, the same on every attempt), webhook-timestamp (now) and
webhook-signature (`v1,` + base64 HMAC-SHA256 of `id.timestamp.body` under
the webhook's secret: the `standardwebhooks` package signs). A 2xx answer is
SUCCEEDED; anything else (another status, a redirect, a timeout, a refused
address: gateway/safe_http.py) is recorded and retried after the next delay
of WEBHOOK_RETRY_DELAYS_S (+-10 % jitter), FAILED after the last.
"""
from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import hashlib
import json
import logging
import random
import threading
import uuid
from collections.abc import Callable

import pymongo
import pymongo.errors
from google.protobuf import json_format
from standardwebhooks.webhooks import Webhook as Signer

from video2mp3.domain import jobs
from video2mp3.gateway import safe_http
from video2mp3.gateway.webhooks import DELIVERIES, FAILED, PENDING, SUCCEEDED, WEBHOOKS, WebhookSettings
from video2mp3.telemetry import metrics

log = logging.getLogger(__name__)

USER_AGENT = "video2mp3-webhooks/1"
LOG_ATTEMPTS = 10  # attempts kept in a delivery's own log


def delivery_id(webhook_id: str, job_id: str, event: str) -> str:
    """The same for the same (webhook, job, event): fan-out is idempotent."""
    return "msg_" + hashlib.sha256(f"{webhook_id}|{job_id}|{event}".encode()).hexdigest()[:32]


def event_body(event: str, job: jobs.Job, proto) -> str:
    """The JSON body: {type, timestamp, data: the Job as the REST API shows it}."""
    data = json_format.MessageToDict(proto, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    return json.dumps({"type": event, "timestamp": jobs.now().strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                       "data": data}, separators=(",", ":"))


def signed_headers(secret: str, msg_id: str, body: str, when: dt.datetime) -> dict[str, str]:
    return {"content-type": "application/json", "user-agent": USER_AGENT,
            "webhook-id": msg_id, "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": Signer(secret).sign(msg_id, when, body)}


class Events:
    """Turns flagged jobs into deliveries (see the module doc)."""

    def __init__(self, db, store: jobs.JobStore, to_proto: Callable[[jobs.Job], object]):
        self.hooks, self.deliveries, self.store, self.to_proto = db[WEBHOOKS], db[DELIVERIES], store, to_proto

    def record(self, limit: int = 100) -> int:
        made = 0
        for job, events in self.store.with_events(limit):
            for event in events:
                made += self._fan_out(job, event)
            self.store.events_recorded(job.id, events)
        return made

    def _fan_out(self, job: jobs.Job, event: str) -> int:
        hooks = list(self.hooks.find({"user_id": job.user_id, "events": event}, {"_id": 1}))
        if not hooks:
            return 0
        body = event_body(event, job, self.to_proto(job))
        t = jobs.now()
        docs = [{"_id": delivery_id(h["_id"], job.id, event), "webhook_id": h["_id"], "user_id": job.user_id,
                 "job_id": job.id, "event_type": event, "body": body, "state": PENDING, "attempts": 0,
                 "step": 0, "gen": 0, "create_time": t, "next_attempt_time": t, "last_attempt_time": None,
                 "last_response_code": 0, "last_error": "", "lease_owner": None, "lease_until": None,
                 "log": []} for h in hooks]
        try:
            self.deliveries.insert_many(docs, ordered=False)
            made = len(docs)
        except pymongo.errors.BulkWriteError as e:  # made already (another gateway, an earlier pass)
            if any(err.get("code") != 11000 for err in e.details.get("writeErrors", [])):
                raise
            made = e.details.get("nInserted", 0)
        if made:
            metrics.WEBHOOK_DELIVERIES.labels(event).inc(made)
            log.info("job %s: %s for %d webhook(s)", job.id, event, made, extra={"job_id": job.id})
        return made


class Dispatcher:
    """Claims due deliveries and sends them on a pool of WEBHOOK_CONCURRENCY threads."""

    def __init__(self, db, settings: WebhookSettings, events: Events | None = None,
                 post: Callable[..., safe_http.Answer] = safe_http.post):
        self.hooks, self.deliveries = db[WEBHOOKS], db[DELIVERIES]
        self.s = settings
        self.policy = settings.policy()
        self.delays = settings.retry_delays()
        self.events = events
        self.post = post
        self.owner = uuid.uuid4().hex
        self._pool = cf.ThreadPoolExecutor(settings.concurrency, thread_name_prefix="webhook")
        self._busy = threading.Semaphore(settings.concurrency)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="webhook-dispatch", daemon=True)

    @property
    def lease_s(self) -> float:
        # Resolve, connect, TLS, send, answer: each may take the timeout.
        return 5 * self.s.timeout_s + 5

    def start(self) -> Dispatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.s.poll_interval_s):
            try:
                self.tick()
            except pymongo.errors.PyMongoError as e:
                log.warning("webhook dispatch: %s", e)

    def tick(self) -> int:
        """Record new events, then start every due delivery there is room for."""
        if self.events is not None:
            self.events.record()
        started = 0
        while not self._stop.is_set() and self._busy.acquire(blocking=False):
            doc = self.claim()
            if doc is None:
                self._busy.release()
                break
            started += 1
            try:
                self._pool.submit(self._run, doc)
            except RuntimeError:  # shutting down: the lease runs out, another attempt comes
                self._busy.release()
                break
        return started

    def claim(self) -> dict | None:
        t = jobs.now()
        return self.deliveries.find_one_and_update(
            {"state": PENDING, "next_attempt_time": {"$lte": t},
             "$or": [{"lease_until": None}, {"lease_until": {"$lt": t}}]},
            {"$set": {"lease_owner": self.owner, "lease_until": t + dt.timedelta(seconds=self.lease_s)}},
            sort=[("next_attempt_time", 1)], return_document=pymongo.ReturnDocument.AFTER)

    def _run(self, doc: dict) -> None:
        try:
            self.attempt(doc)
        except Exception:
            log.exception("webhook delivery %s: attempt failed unexpectedly", doc["_id"])
        finally:
            self._busy.release()

    def attempt(self, doc: dict) -> dict:
        """One attempt of a claimed delivery; returns what was recorded."""
        hook = self.hooks.find_one({"_id": doc["webhook_id"]})
        if hook is None:  # deleted meanwhile
            self.deliveries.delete_one({"_id": doc["_id"]})
            return {}
        when = jobs.now()
        headers = signed_headers(hook["secret"], doc["_id"], doc["body"], when)
        code, error = 0, ""
        try:
            answer = self.post(hook["url"], doc["body"].encode(), headers, policy=self.policy,
                               timeout=self.s.timeout_s)
            code = answer.status
            if 300 <= code < 400:
                error = "redirect not followed"
            elif not 200 <= code < 300:
                error = f"HTTP {code}"
        except safe_http.Refused as e:
            error = str(e)
        except (OSError, ValueError) as e:  # http.client's errors are OSError or HTTPException
            error = _describe(e)
        except Exception as e:  # noqa: BLE001 - http.client.HTTPException and the like
            error = _describe(e)
        return self._record(doc, when, code, error)

    def _record(self, doc: dict, when: dt.datetime, code: int, error: str) -> dict:
        ok = not error
        step = int(doc.get("step") or 0) + 1
        fields: dict = {"last_attempt_time": when, "last_response_code": code, "last_error": error,
                        "lease_owner": None, "lease_until": None}
        if ok:
            fields.update(state=SUCCEEDED, next_attempt_time=None, step=step)
            outcome = "succeeded"
        elif step <= len(self.delays):
            delay = self.delays[step - 1] * random.uniform(0.9, 1.1)
            fields.update(state=PENDING, step=step, next_attempt_time=when + dt.timedelta(seconds=delay))
            outcome = "retry"
        else:
            fields.update(state=FAILED, next_attempt_time=None, step=step)
            outcome = "failed"
        entry = {"time": when, "code": code, "error": error}
        r = self.deliveries.update_one(
            {"_id": doc["_id"], "lease_owner": self.owner, "gen": doc.get("gen", 0)},
            {"$set": fields, "$inc": {"attempts": 1},
             "$push": {"log": {"$each": [entry], "$slice": -LOG_ATTEMPTS}}})
        if r.matched_count != 1:
            # Redelivery asked meanwhile (or the lease ran out): log the attempt only.
            self.deliveries.update_one(
                {"_id": doc["_id"]}, {"$inc": {"attempts": 1},
                                      "$push": {"log": {"$each": [entry], "$slice": -LOG_ATTEMPTS}}})
            self.deliveries.update_one({"_id": doc["_id"], "lease_owner": self.owner},
                                       {"$set": {"lease_owner": None, "lease_until": None}})
        metrics.WEBHOOK_ATTEMPTS.labels(outcome).inc()
        log_fn = log.info if ok else log.warning
        log_fn("webhook delivery %s (%s, job %s) to webhook %s: %s", doc["_id"], doc["event_type"],
               doc.get("job_id"), doc["webhook_id"], f"HTTP {code}" if ok else f"{error}; {outcome}",
               extra={"job_id": doc.get("job_id")})
        return fields

    def sweep(self) -> int:
        """Finished deliveries older than WEBHOOK_LOG_RETENTION_S go; the pending
        ones are counted for the metrics."""
        cutoff = jobs.now() - dt.timedelta(seconds=self.s.log_retention_s)
        gone = self.deliveries.delete_many(
            {"state": {"$in": [SUCCEEDED, FAILED]}, "last_attempt_time": {"$lt": cutoff}}).deleted_count
        metrics.WEBHOOK_PENDING.set(self.deliveries.count_documents({"state": PENDING}))
        return gone


def _describe(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, TimeoutError | ConnectionError) or "timed out" in text:
        return f"{type(e).__name__}: {text}" if text != type(e).__name__ else text
    return text[:300]
