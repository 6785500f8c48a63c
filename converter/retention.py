"""What is kept once a job is DONE: the MP3 and the job; the video goes.

One step, called by the JobRunner (converter/conversion.py) right after it
marks a job DONE. A later VIDEO_RETENTION setting decides here instead (e.g.
keep for N hours). Best effort: a video left behind by an error only costs disk.
"""
from __future__ import annotations

import logging

from common.gridfs_download import delete_file
from common.jobs import Job
from common.mongo import VIDEOS_BUCKET, Mongo

log = logging.getLogger(__name__)


def release_video(mongo: Mongo, job: Job) -> None:
    """Delete the job's source video (GridFS file and chunks) after DONE."""
    fid = job.video_fid
    if fid is None:
        return
    try:
        delete_file(mongo.db, VIDEOS_BUCKET, fid)
        log.info("job %s: video %s deleted (MP3 is DONE)", job.id, fid)
    except Exception as e:  # noqa: BLE001 - the MP3 is safe; only disk is at stake
        log.warning("job %s: could not delete video %s: %s", job.id, fid, e)
