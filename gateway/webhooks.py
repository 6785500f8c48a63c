"""Webhooks: endpoints a user registers to be told about job events, and the
log of what was sent to them (docs/webhooks-and-uploads.md).

Collections:

  webhooks            {_id, user_id, url, events, description, secret, create_time}
  webhook_deliveries  {_id (the webhook-id header), webhook_id, user_id, job_id,
                       event_type, body, state, attempts, step, gen, create_time,
                       next_attempt_time, last_attempt_time, last_response_code,
                       last_error, lease_owner, lease_until, log: [last attempts]}

This module is the API side (MediaService's webhook RPCs) and the settings;
gateway/webhook_dispatch.py makes deliveries from job events and sends them.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import logging
import os
import uuid

import pymongo
from google.protobuf import timestamp_pb2

from video2mp3.core.errors import InvalidArgument, NotFound, Reason, ResourceExhausted
from video2mp3.core.settings import setting
from video2mp3.domain import jobs
from video2mp3.gateway import safe_http
from video2mp3.media.v1 import media_pb2

log = logging.getLogger(__name__)

WEBHOOKS = "webhooks"
DELIVERIES = "webhook_deliveries"
EVENTS = ("job.processing", "job.done", "job.failed")
PENDING, SUCCEEDED, FAILED = "PENDING", "SUCCEEDED", "FAILED"
STATE_TO_PROTO = {PENDING: media_pb2.DELIVERY_STATE_PENDING, SUCCEEDED: media_pb2.DELIVERY_STATE_SUCCEEDED,
                  FAILED: media_pb2.DELIVERY_STATE_FAILED}
MAX_DESCRIPTION_CHARS = 200
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 1000
# Standard Webhooks' recommended schedule after the first attempt: 5 s, 5 min,
# 30 min, 2 h, 5 h, 10 h, 10 h (27.6 h in all).
DEFAULT_RETRY_DELAYS = "5,300,1800,7200,18000,36000,36000"


@dataclasses.dataclass(frozen=True)
class WebhookSettings:
    allow_private: bool = setting("WEBHOOK_ALLOW_PRIVATE", False, help=(
        "deliver to loopback, private and link-local addresses too (local development: a receiver on "
        "127.0.0.1; `make run` sets it); never in production"))
    allowed_networks: str = setting("WEBHOOK_ALLOWED_NETWORKS", "", help=(
        "deliver only to addresses in these networks (CIDRs, comma-separated); empty: any allowed one"))
    timeout_s: float = setting("WEBHOOK_TIMEOUT_S", 10.0, minimum=0.1, help=(
        "each network step of a delivery attempt (connect, TLS, send, answer) waits this long at most, seconds"))
    retry_delays_s: str = setting("WEBHOOK_RETRY_DELAYS_S", DEFAULT_RETRY_DELAYS, help=(
        "seconds between failed attempts, one per retry, comma-separated; after the last, the delivery is FAILED"))
    concurrency: int = setting("WEBHOOK_CONCURRENCY", 8, minimum=1, help=(
        "delivery attempts in flight at once per gateway"))
    poll_interval_s: float = setting("WEBHOOK_POLL_INTERVAL_S", 1.0, minimum=0.05, help=(
        "how often each gateway looks for job events and due deliveries, seconds"))
    max_per_user: int = setting("WEBHOOK_MAX_PER_USER", 20, minimum=1, help="webhooks one user may register")
    log_retention_s: float = setting("WEBHOOK_LOG_RETENTION_S", 7 * 86400.0, minimum=0, help=(
        "finished deliveries (succeeded or failed) stay in the delivery log this long, seconds"))

    def __post_init__(self):
        try:
            self.policy()
        except ValueError as e:
            raise SystemExit(f"WEBHOOK_ALLOWED_NETWORKS: {e}") from None
        try:
            delays = self.retry_delays()
        except ValueError:
            delays = []
        if not delays or any(d < 0 for d in delays):
            raise SystemExit(f"WEBHOOK_RETRY_DELAYS_S must be seconds separated by commas, "
                             f"e.g. {DEFAULT_RETRY_DELAYS}; got {self.retry_delays_s!r}")

    def policy(self) -> safe_http.AddressPolicy:
        return safe_http.AddressPolicy.parse(self.allow_private, self.allowed_networks)

    def retry_delays(self) -> list[float]:
        return [float(x) for x in self.retry_delays_s.replace(",", " ").split()]


def _ts(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    return jobs._ts(value)


def webhook_proto(doc: dict, with_secret: bool = False) -> media_pb2.Webhook:
    hook = media_pb2.Webhook(webhook_id=doc["_id"], url=doc["url"], events=doc["events"],
                             description=doc.get("description") or "")
    if with_secret:
        hook.secret = doc["secret"]
    ts = _ts(doc.get("create_time"))
    if ts is not None:
        hook.create_time.CopyFrom(ts)
    return hook


def delivery_proto(doc: dict) -> media_pb2.WebhookDelivery:
    d = media_pb2.WebhookDelivery(
        delivery_id=doc["_id"], webhook_id=doc["webhook_id"], event_type=doc["event_type"],
        job_id=doc.get("job_id") or "", state=STATE_TO_PROTO[doc["state"]],
        attempts=int(doc.get("attempts") or 0), last_response_code=int(doc.get("last_response_code") or 0),
        last_error=doc.get("last_error") or "")
    times = {"create_time": doc.get("create_time"), "last_attempt_time": doc.get("last_attempt_time"),
             "next_attempt_time": doc.get("next_attempt_time") if doc["state"] == PENDING else None}
    for field, value in times.items():
        ts = _ts(value)
        if ts is not None:
            getattr(d, field).CopyFrom(ts)
    return d


def new_secret() -> str:
    """Standard Webhooks: `whsec_` and the base64 of 24 random bytes."""
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def _invalid(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(message, reason=Reason.INVALID_WEBHOOK, violations=[(field, message)])


def _page(size: int) -> int:
    if size < 0:
        raise InvalidArgument("page_size must not be negative (0 means 50; at most 1000)",
                              reason=Reason.INVALID_PAGE, violations=[("page_size", "must not be negative")])
    return min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _encode_token(doc: dict) -> str:
    return base64.urlsafe_b64encode(f"{_aware(doc['create_time']).isoformat()}|{doc['_id']}".encode()).decode()


def _decode_token(token: str) -> tuple[dt.datetime, str] | None:
    if not token:
        return None
    try:
        t, _id = base64.urlsafe_b64decode(token.encode()).decode().split("|", 1)
        return dt.datetime.fromisoformat(t), _id
    except ValueError:
        message = "page_token is not valid; pass next_page_token as given"
        raise InvalidArgument(message, reason=Reason.INVALID_PAGE, violations=[("page_token", message)]) from None


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _newest_first(coll, query: dict, size: int, token: str) -> tuple[list[dict], str]:
    before = _decode_token(token)
    if before:
        t, _id = before
        query = {**query, "$or": [{"create_time": {"$lt": t}}, {"create_time": t, "_id": {"$lt": _id}}]}
    found = list(coll.find(query).sort([("create_time", -1), ("_id", -1)]).limit(size + 1))
    page = found[:size]
    return page, _encode_token(page[-1]) if len(found) > size else ""


def delete_user_webhooks(db, user_id: str) -> None:
    """A deleted account's webhooks and deliveries (gateway/user_data.py)."""
    db[DELIVERIES].delete_many({"user_id": user_id})
    db[WEBHOOKS].delete_many({"user_id": user_id})


class Webhooks:
    def __init__(self, db, settings: WebhookSettings):
        self.hooks = db[WEBHOOKS]
        self.deliveries = db[DELIVERIES]
        self.s = settings
        self.policy = settings.policy()

    def ensure_indexes(self) -> None:
        self.hooks.create_index([("user_id", 1), ("create_time", -1)])
        self.deliveries.create_index([("state", 1), ("next_attempt_time", 1)])
        self.deliveries.create_index([("webhook_id", 1), ("create_time", -1)])
        self.deliveries.create_index([("user_id", 1)])

    # --------------------------------------------------------------- the RPCs

    def create(self, hook: media_pb2.Webhook, caller) -> media_pb2.Webhook:
        try:
            url = safe_http.check_url(hook.url.strip(), self.policy)
        except ValueError as e:
            raise _invalid("webhook.url", str(e)) from None
        events = list(dict.fromkeys(e.strip() for e in hook.events))
        if not events or any(e not in EVENTS for e in events):
            raise _invalid("webhook.events", f"events must name at least one of {', '.join(EVENTS)}")
        if len(hook.description) > MAX_DESCRIPTION_CHARS:
            raise _invalid("webhook.description", f"description is longer than {MAX_DESCRIPTION_CHARS} characters")
        if self.hooks.count_documents({"user_id": caller.user_id}) >= self.s.max_per_user:
            raise ResourceExhausted(f"you have {self.s.max_per_user} webhooks already, the most allowed; "
                                    "delete one first", reason=Reason.TOO_MANY_WEBHOOKS,
                                    metadata={"limit": str(self.s.max_per_user)})
        t = jobs.now()
        doc = {"_id": uuid.uuid4().hex, "user_id": caller.user_id, "url": url, "events": events,
               "description": hook.description, "secret": new_secret(),
               # Milliseconds, as MongoDB keeps them: the same time in every answer.
               "create_time": t.replace(microsecond=t.microsecond // 1000 * 1000)}
        self.hooks.insert_one(doc)
        log.info("webhook %s created for %s: %s on %s", doc["_id"], caller.email, ", ".join(events), url)
        return webhook_proto(doc, with_secret=True)

    def list(self, request, caller) -> media_pb2.ListWebhooksResponse:
        page, token = _newest_first(self.hooks, {"user_id": caller.user_id}, _page(request.page_size),
                                    request.page_token)
        return media_pb2.ListWebhooksResponse(webhooks=[webhook_proto(d) for d in page], next_page_token=token)

    def _owned(self, webhook_id: str, caller) -> dict:
        doc = self.hooks.find_one({"_id": webhook_id, "user_id": caller.user_id}) if webhook_id else None
        if doc is None:
            raise NotFound(f"webhook {webhook_id} not found", reason=Reason.WEBHOOK_NOT_FOUND,
                           metadata={"webhook_id": webhook_id})
        return doc

    def get(self, webhook_id: str, caller) -> media_pb2.Webhook:
        return webhook_proto(self._owned(webhook_id, caller))

    def delete(self, webhook_id: str, caller) -> None:
        doc = self._owned(webhook_id, caller)
        self.hooks.delete_one({"_id": doc["_id"]})
        # An attempt in flight may still finish; nothing is tried after this.
        self.deliveries.delete_many({"webhook_id": doc["_id"]})
        log.info("webhook %s deleted", doc["_id"])

    def list_deliveries(self, request, caller) -> media_pb2.ListWebhookDeliveriesResponse:
        hook = self._owned(request.webhook_id, caller)
        page, token = _newest_first(self.deliveries, {"webhook_id": hook["_id"]}, _page(request.page_size),
                                    request.page_token)
        return media_pb2.ListWebhookDeliveriesResponse(deliveries=[delivery_proto(d) for d in page],
                                                       next_page_token=token)

    def redeliver(self, webhook_id: str, delivery_id: str, caller) -> media_pb2.WebhookDelivery:
        hook = self._owned(webhook_id, caller)
        doc = self.deliveries.find_one_and_update(
            {"_id": delivery_id, "webhook_id": hook["_id"]},
            # Same id and body; the schedule starts over. An attempt in flight
            # meanwhile records only its log line (`gen` changed), not its outcome.
            {"$set": {"state": PENDING, "step": 0, "next_attempt_time": jobs.now()}, "$inc": {"gen": 1}},
            return_document=pymongo.ReturnDocument.AFTER) if delivery_id else None
        if doc is None:
            raise NotFound(f"delivery {delivery_id} of webhook {webhook_id} not found",
                           reason=Reason.DELIVERY_NOT_FOUND, metadata={"delivery_id": delivery_id})
        log.info("delivery %s of webhook %s: redelivery asked", delivery_id, webhook_id)
        return delivery_proto(doc)
