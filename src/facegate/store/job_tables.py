"""Video jobs and their findings: the same tables and statements on every SQL store, over its primitives
(``sql_tables.SqlTables``)."""

from __future__ import annotations

import json
import time

from facegate.errors import ConflictException
from facegate.store import JobFinding, VideoJob
from facegate.store.sql_tables import SqlTables, json_or_none

JOB_COLUMNS = (
    "job_id, owner, api, status, request, requester, created_at, updated_at, client_token, fingerprint, "
    "status_message, video_metadata, progress_ms, attempts, worker, heartbeat, review_cases"
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
        json_or_none(job.review_cases),
    )


def job_from_row(row: tuple) -> VideoJob:
    values = list(row)
    for i in (4, 5, 11, 16):
        values[i] = json.loads(values[i]) if values[i] is not None else None
    return VideoJob(*values)


class JobTables(SqlTables):
    """``JobStore``."""

    def add_job(self, job: VideoJob) -> VideoJob:
        with self._transaction() as run:
            inserted = run(
                f"INSERT INTO video_jobs ({JOB_COLUMNS}) VALUES ({', '.join('?' * JOB_COLUMN_COUNT)}) "
                "ON CONFLICT DO NOTHING",
                job_row(job),
            ).rowcount
            if inserted:
                return job
            row = run(
                f"SELECT {JOB_COLUMNS} FROM video_jobs WHERE owner = ? AND api = ? AND client_token = ?",
                (job.owner, job.api, job.client_token),
            ).fetchone()
        if row is None:
            raise ConflictException(f"Job id {job.job_id} is already taken.")
        return job_from_row(row)

    def get_job(self, owner: str, job_id: str) -> VideoJob | None:
        with self._transaction() as run:
            row = run(
                f"SELECT {JOB_COLUMNS} FROM video_jobs WHERE owner = ? AND job_id = ?", (owner, job_id)
            ).fetchone()
        return job_from_row(row) if row else None

    def list_jobs(self, owner: str | None = None, status: str | None = None) -> list[VideoJob]:
        rows = self._query(
            f"SELECT {JOB_COLUMNS} FROM video_jobs WHERE (CAST(? AS TEXT) IS NULL OR owner = ?) "
            "AND (CAST(? AS TEXT) IS NULL OR status = ?) ORDER BY created_at DESC, job_id",
            (owner, owner, status, status),
        )
        return [job_from_row(row) for row in rows]

    def claim_job(self, job_id: str, worker: str, expected_worker: str | None) -> VideoJob | None:
        now = time.time()
        with self._transaction() as run:
            row = run(
                "UPDATE video_jobs SET worker = ?, heartbeat = ?, attempts = attempts + 1, progress_ms = 0, "
                "updated_at = ? WHERE job_id = ? AND status = 'IN_PROGRESS' AND worker IS NOT DISTINCT FROM ? "
                f"RETURNING {JOB_COLUMNS}",
                (worker, now, now, job_id, expected_worker),
            ).fetchone()
            if row:
                run("DELETE FROM video_job_findings WHERE job_id = ?", (job_id,))
        return job_from_row(row) if row else None

    def record_job_progress(
        self,
        job_id: str,
        worker: str,
        findings: list[JobFinding],
        progress_ms: int,
        video_metadata: dict | None = None,
    ) -> bool:
        now = time.time()
        with self._transaction() as run:
            updated = run(
                "UPDATE video_jobs SET heartbeat = ?, updated_at = ?, "
                "progress_ms = CASE WHEN progress_ms > ? THEN progress_ms ELSE ? END, "
                "video_metadata = COALESCE(?, video_metadata) WHERE job_id = ? AND worker = ? AND status = 'IN_PROGRESS'",
                (now, now, progress_ms, progress_ms, json_or_none(video_metadata), job_id, worker),
            ).rowcount
            if updated:
                for f in findings:
                    run(
                        "INSERT INTO video_job_findings (job_id, timestamp_ms, person_index, body) VALUES (?, ?, ?, ?)",
                        (job_id, f.timestamp_ms, f.person_index, json.dumps(f.body)),
                    )
        return bool(updated)

    def finish_job(self, job_id: str, worker: str | None, status: str, message: str | None) -> VideoJob | None:
        with self._transaction() as run:
            row = run(
                "UPDATE video_jobs SET status = ?, status_message = ?, worker = NULL, updated_at = ? "
                "WHERE job_id = ? AND worker IS NOT DISTINCT FROM ? AND status = 'IN_PROGRESS' "
                f"RETURNING {JOB_COLUMNS}",
                (status, message, time.time(), job_id, worker),
            ).fetchone()
        return job_from_row(row) if row else None

    def set_job_review_cases(self, job_id: str, cases: dict[str, str]) -> None:
        with self._transaction() as run:
            run("UPDATE video_jobs SET review_cases = ? WHERE job_id = ?", (json.dumps(cases), job_id))

    def job_findings(self, job_id: str, order: str, offset: int, limit: int) -> list[JobFinding]:
        by = "timestamp_ms, person_index, seq" if order == "TIMESTAMP" else "person_index, timestamp_ms, seq"
        rows = self._query(
            "SELECT timestamp_ms, person_index, body FROM video_job_findings WHERE job_id = ? "
            f"ORDER BY {by} LIMIT ? OFFSET ?",
            (job_id, limit, offset),
        )
        return [JobFinding(t, i, json.loads(body)) for t, i, body in rows]
