"""How a video job is laid out in a row: the same columns in every SQL store."""

from __future__ import annotations

import json

from facegate.store import VideoJob

JOB_COLUMNS = (
    "job_id, owner, api, status, request, requester, created_at, updated_at, client_token, fingerprint, "
    "status_message, video_metadata, progress_ms, attempts, worker, heartbeat"
)
JOB_COLUMN_COUNT = len(JOB_COLUMNS.split(","))


def job_row(job: VideoJob) -> tuple:
    return (
        job.job_id,
        job.owner,
        job.api,
        job.status,
        json.dumps(job.request),
        json.dumps(job.requester),
        job.created_at,
        job.updated_at,
        job.client_token,
        job.fingerprint,
        job.status_message,
        json_or_none(job.video_metadata),
        job.progress_ms,
        job.attempts,
        job.worker,
        job.heartbeat,
    )


def job_from_row(row: tuple) -> VideoJob:
    values = list(row)
    for i in (4, 5, 11):
        values[i] = json.loads(values[i]) if values[i] is not None else None
    return VideoJob(*values)


def json_or_none(value: dict | None) -> str | None:
    return json.dumps(value) if value is not None else None
