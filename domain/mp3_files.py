"""A DONE job's MP3s: one, or one per chapter (`split_chapters`), as the job
document records them (`mp3_files`) and the API shows them (Job.files).

The converter writes the list when the job becomes DONE (domain/jobs.py,
finish_done); the gateway serves each file by its track (DownloadMp3) and all
of them as a ZIP; retention deletes each (domain/retention.py). A job DONE
before the list existed has only `mp3_fid`: it reads as one file.

Names are what a download is offered under and a ZIP holds: the video's
stem with .mp3, or `stem - 02 - Chapter title.mp3` for a part, with nothing
a file system would refuse.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import PurePosixPath

from bson import ObjectId

from video2mp3.media.v1 import media_pb2

MAX_TITLE_CHARS = 80
# Refused or awkward in file names on Windows, macOS or Linux.
_UNSAFE = re.compile(r'[\\/:*?"<>|]+')


@dataclass(frozen=True)
class Mp3File:
    fid: ObjectId
    name: str
    size: int
    track: int = 1
    title: str = ""        # the chapter's; "" for a job's one MP3
    duration_ms: int = 0   # 0: not recorded (older jobs)

    def to_doc(self) -> dict:
        return {"fid": self.fid, "name": self.name, "size": self.size, "track": self.track,
                "title": self.title, "duration_ms": self.duration_ms}

    @classmethod
    def from_doc(cls, doc: dict) -> Mp3File:
        return cls(fid=doc["fid"], name=doc.get("name") or "audio.mp3", size=int(doc.get("size") or 0),
                   track=int(doc.get("track") or 1), title=doc.get("title") or "",
                   duration_ms=int(doc.get("duration_ms") or 0))

    def to_proto(self) -> media_pb2.Mp3File:
        return media_pb2.Mp3File(name=self.name, size_bytes=self.size, track=self.track,
                                 chapter_title=self.title, duration_ms=self.duration_ms)


def stem(video_name: str) -> str:
    return PurePosixPath(video_name.replace("\\", "/")).stem or "audio"


def single_name(video_name: str) -> str:
    """holiday.mp4 -> holiday.mp3 (the name the MP3 is offered under)."""
    return f"{stem(video_name)}.mp3"


def part_name(video_name: str, track: int, count: int, title: str) -> str:
    """talk.mp4, chapter 2 of 12, "Q&A: part 1" -> `talk - 02 - Q&A_ part 1.mp3`."""
    width = max(2, len(str(count)))
    clean = "".join(c for c in title if unicodedata.category(c)[0] != "C")
    clean = _UNSAFE.sub("_", clean).strip(" .")[:MAX_TITLE_CHARS].strip(" .")
    label = f"{stem(video_name)} - {track:0{width}d}"
    return f"{label} - {clean}.mp3" if clean else f"{label}.mp3"


def zip_name(video_name: str) -> str:
    """The ZIP of a split job's MP3s: holiday.mp4 -> holiday.zip."""
    return f"{stem(video_name)}.zip"
