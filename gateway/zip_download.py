"""MP3s as one ZIP, streamed: a split job's chapters (DownloadMp3 without a
track) and any set of the caller's DONE jobs (ZipJobs).

zipstream-ng writes the archive as it goes: entries are stored (MP3 does not
compress), each followed by a data descriptor (its CRC is known only once it
is read), ZIP64 wherever sizes or offsets pass 4 GB. Each MP3 is read from
GridFS in bounded ranges (storage/gridfs_download.ChunkedDownload) only when
the archive reaches it, so memory stays a few chunks whatever the count or
size. Every job is checked before the first byte goes out: once the stream has
started, an error can only cut it short.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import zipstream

from video2mp3.core.errors import FailedPrecondition, InvalidArgument, NotFound, Reason
from video2mp3.domain import jobs, mp3_files, retention
from video2mp3.storage.gridfs_download import ChunkedDownload
from video2mp3.storage.mongo import MP3S_BUCKET

MAX_JOBS = 1000
READ_CHUNK = 256 * 1024
# Ids named in an error message at most (all are in its metadata's count).
_SHOWN_IDS = 20


@dataclass(frozen=True)
class Entry:
    arcname: str
    fid: object
    size: int


def job_ids(raw: list[str]) -> list[str]:
    """ZipJobs' ids: repeated (`job_ids=a&job_ids=b`) or comma-separated,
    in order, each once; InvalidArgument when none or too many."""
    ids = list(dict.fromkeys(i.strip() for item in raw for i in item.split(",") if i.strip()))
    if not ids or len(ids) > MAX_JOBS:
        message = (f"job_ids must name 1 to {MAX_JOBS} jobs (e.g. ?job_ids=A&job_ids=B), "
                   f"got {len(ids)}")
        raise InvalidArgument(message, reason=Reason.INVALID_JOB_ID, violations=[("job_ids", message)])
    return ids


def _listed(ids: list[str]) -> str:
    shown = ", ".join(ids[:_SHOWN_IDS])
    return shown + (f" and {len(ids) - _SHOWN_IDS} more" if len(ids) > _SHOWN_IDS else "")


def downloadable(store: jobs.JobStore, user_id: str, ids: list[str],
                 settings: retention.RetentionSettings) -> list[jobs.Job]:
    """The caller's jobs `ids`, in order, each DONE with its MP3s kept; else
    NOT_FOUND naming those that are not the caller's, or FAILED_PRECONDITION
    (REST 409) naming those not DONE or expired."""
    found = store.get_many_for_user(ids, user_id)
    missing = [i for i in ids if i not in found]
    if missing:
        raise NotFound(f"no such job(s) of yours: {_listed(missing)}", reason=Reason.JOB_NOT_FOUND,
                       metadata={"job_ids": ",".join(missing[:_SHOWN_IDS]), "count": str(len(missing))})
    unready = [i for i in ids if found[i].state != jobs.DONE or retention.mp3_expired(found[i], settings)]
    if unready:
        states = ", ".join(f"{i} ({'expired' if found[i].state == jobs.DONE else found[i].state})"
                           for i in unready[:_SHOWN_IDS])
        raise FailedPrecondition(
            f"only DONE jobs with their MP3s kept can be zipped; not these: {states}"
            + (f" and {len(unready) - _SHOWN_IDS} more" if len(unready) > _SHOWN_IDS else ""),
            reason=Reason.JOB_NOT_DONE, metadata={"job_ids": ",".join(unready[:_SHOWN_IDS])},
            trailers=[("x-http-status", "409")])
    return [found[i] for i in ids]


def entries(selected: list[jobs.Job], *, folders: bool) -> list[Entry]:
    """The ZIP's files: each job's MP3s under their names, a split job's in a
    folder named after its video when `folders`; names made unique
    (`talk.mp3`, `talk (2).mp3`; folders `talk/`, `talk (2)/`)."""
    out: list[Entry] = []
    taken: set[str] = set()
    for job in selected:
        prefix = ""
        if folders and job.split:
            prefix = _unique(mp3_files.stem(job.filename), "", taken) + "/"
        for f in job.files:
            stem, dot, ext = f.name.rpartition(".")
            out.append(Entry(_unique(prefix + stem, dot + ext, taken), f.fid, f.size))
    return out


def _unique(stem: str, ext: str, taken: set[str]) -> str:
    candidate, n = stem + ext, 1
    while candidate.lower() in taken:
        n += 1
        candidate = f"{stem} ({n}){ext}"
    taken.add(candidate.lower())
    return candidate


def stream(db, files: list[Entry]) -> Iterator[bytes]:
    """The ZIP's bytes, each MP3 read only when the archive reaches it."""
    archive = zipstream.ZipStream(compress_type=zipstream.ZIP_STORED)
    for entry in files:
        archive.add(_read(db, entry.fid), entry.arcname, size=entry.size)
    yield from archive


def _read(db, fid) -> Iterator[bytes]:
    with ChunkedDownload(db, MP3S_BUCKET, fid) as src:
        while data := src.read(READ_CHUNK):
            yield data
