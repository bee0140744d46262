"""Running stored-video jobs: claim a job, read its video a batch of sampled frames at a time through the
governed operation (gate → analysis → audit, per batch), store what each batch found, finish, notify.

A job is claimed by one worker ("host:pid:nonce") at a time, through the store, so servers sharing a database
never run one twice. A worker refreshes its jobs' heartbeats; a job whose worker died (a process of this host
that is gone, or a heartbeat older than ``LEASE_S``) is taken over and analysed again from the start, at most
``MAX_ATTEMPTS`` times, so a restart resumes jobs and none stays IN_PROGRESS for ever.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

from facegate.crops import face_crop
from facegate.engine.video import SAMPLE_INTERVAL_MS, VideoError, VideoFile
from facegate.errors import FacegateError
from facegate.governed import GovernedService
from facegate.notifications import notification_url
from facegate.results import PersonMatch
from facegate.sources import VideoObjects
from facegate.store import Store, VideoJob
from facegate.tracking import PersonTracker
from facegate.video import FAILED, IN_PROGRESS, SUCCEEDED, requested_locally

log = logging.getLogger("facegate.jobs")

BATCH_FRAMES = 8  # sampled frames per governed batch: the gate is asked again, and findings stored, per batch
LEASE_S = 60.0
STALL_S = 600.0  # a batch taking this long is a hung decoder or worker: its lease is no longer renewed
MAX_ATTEMPTS = 3
POLL_S = 1.0
NOTIFY_TIMEOUT_S = 5.0
_LIVE: set[str] = set()  # the workers of this process that are running


class JobLost(Exception):
    """Another worker took the job over, or this one is closing: stop without finishing it."""


Progress = Callable[[VideoJob, int], None]  # (job, milliseconds of video analysed)


class VideoJobs:
    """Runs the video jobs in the store: in the background (``start``, for `facegate serve`) or one in the
    foreground (``run``, for `facegate video`)."""

    def __init__(
        self,
        governed: GovernedService,
        store: Store,
        videos: VideoObjects,
        *,
        concurrency: int = 2,
        interval_ms: int = SAMPLE_INTERVAL_MS,
        lease_s: float = LEASE_S,
    ) -> None:
        self.governed = governed
        self.store = store
        self.videos = videos
        self.concurrency = concurrency
        self.interval_ms = interval_ms
        self.lease_s = lease_s
        self.worker = f"{_host()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        _LIVE.add(self.worker)
        self._running: dict[str, int] = {}  # job id → ms analysed
        self._moved: dict[str, float] = {}  # job id → when its analysis last moved (monotonic)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._last_heartbeat = 0.0

    # Background

    def start(self) -> None:
        """Claim and run jobs on threads until ``close``; new jobs wake the loop at once. Downloads a stopped
        server left in the scratch folder are deleted (their jobs start again from the start)."""
        if self.videos.scratch.is_dir():
            for leftover in self.videos.scratch.glob("*.video"):
                leftover.unlink(missing_ok=True)
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="facegate-video")
        self.governed.service.on_job_added = self._wake.set
        self._thread = threading.Thread(target=self._loop, name="facegate-video-jobs", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop: jobs in progress stop at their next batch and are left to the next worker (a restart)."""
        self._closing.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        _LIVE.discard(self.worker)

    def _loop(self) -> None:
        while not self._closing.is_set():
            try:
                self._heartbeat()
                for job in self._claimable():
                    with self._lock:
                        if len(self._running) >= self.concurrency:
                            break
                    claimed = self.store.claim_job(job.job_id, self.worker, job.worker)
                    if claimed is not None:
                        with self._lock:
                            self._running[claimed.job_id] = 0
                        self._pool.submit(self._run_claimed, claimed)
            except Exception:
                log.exception("the video job loop failed; retrying")
            self._wake.wait(POLL_S)
            self._wake.clear()

    def _claimable(self) -> list[VideoJob]:
        now = time.time()
        with self._lock:
            mine = set(self._running)
        return [
            job
            for job in reversed(self.store.list_jobs(status=IN_PROGRESS))  # oldest first
            if job.job_id not in mine
            and (job.worker is None or (job.heartbeat or 0) < now - self.lease_s or _gone(job.worker))
            # A local file's job is the CLI's that started it: taken over only once that has had time to claim it.
            and not (
                job.worker is None and "File" in job.request.get("Video", {}) and job.created_at > now - self.lease_s
            )
        ]

    def _heartbeat(self) -> None:
        """Refresh the lease of jobs whose batches are slow to come (a long download): every quarter lease."""
        now = time.monotonic()
        if now - self._last_heartbeat < self.lease_s / 4:
            return
        self._last_heartbeat = now
        with self._lock:
            running = dict(self._running)
            moved = dict(self._moved)
        for job_id, done in running.items():
            # A job whose analysis has not moved for STALL_S keeps no lease: another worker may take it over.
            if time.monotonic() - moved.get(job_id, now) < STALL_S:
                self.store.record_job_progress(job_id, self.worker, [], done)

    # One job

    def stop(self, job_id: str, reason: str) -> VideoJob | None:
        """Fail a job this worker is running (the operator interrupted `facegate video`)."""
        self._closing.set()
        return self.store.finish_job(job_id, self.worker, FAILED, reason)

    def run(self, job_id: str, owner: str, progress: Progress | None = None) -> VideoJob:
        """Claim the job (unclaimed, or its worker gone) and run it here, now; returns it as it ended."""
        job = self.store.get_job(owner, job_id)
        if job is None:
            raise ValueError(f"No job {job_id} of {owner}.")
        if job.status == IN_PROGRESS:
            claimable = job.worker is None or _gone(job.worker) or (job.heartbeat or 0) < time.time() - self.lease_s
            claimed = self.store.claim_job(job_id, self.worker, job.worker) if claimable else None
            if claimed is not None:
                with self._lock:
                    self._running[job_id] = 0
                beating = threading.Event()
                if self._thread is None:  # no background loop here (the CLI): a thread of its own keeps the lease
                    threading.Thread(target=self._beat_until, args=(beating,), daemon=True).start()
                try:
                    self._run_claimed(claimed, progress)
                finally:
                    beating.set()
        return self.store.get_job(owner, job_id) or job

    def _beat_until(self, stop: threading.Event) -> None:
        while not stop.wait(self.lease_s / 4):
            try:
                self._heartbeat()
            except Exception:  # a missed heartbeat costs at most the lease; the next one tries again
                log.exception("video job heartbeat failed")

    def _run_claimed(self, job: VideoJob, progress: Progress | None = None) -> None:
        try:
            try:
                ended = self._analyse(job, progress)
            finally:
                with self._lock:
                    self._running.pop(job.job_id, None)
                    self._moved.pop(job.job_id, None)
            if ended is not None:
                self._finished(ended)
        except JobLost:
            return
        except Exception:  # on a pool thread nothing else would see it
            log.exception("video job %s: finishing failed", job.job_id)

    def _analyse(self, job: VideoJob, progress: Progress | None) -> VideoJob | None:
        if job.attempts > MAX_ATTEMPTS:
            return self._finish(
                job, FAILED, f"facegate stopped during this job {job.attempts - 1} times; it is not started again."
            )
        local = requested_locally(job.requester)
        try:
            with self.videos.open(job.owner, job.request["Video"], local=local) as path, VideoFile(path) as video:
                metadata = asdict(video.metadata)
                self._progress(job, [], 0, metadata)
                tracker = PersonTracker()
                batch: list = []
                for sample in video.frames(self.interval_ms):
                    batch.append(sample)
                    if len(batch) == BATCH_FRAMES:
                        self._batch(job, batch, tracker, progress)
                        batch = []
                if batch:
                    self._batch(job, batch, tracker, progress)
                self._progress(job, [], video.metadata.duration_ms)
            # Before SUCCEEDED: matches that need review are never answered before their cases exist.
            self.governed.open_video_reviews(job, lambda sightings: self._crops(job, sightings))
        except JobLost:
            raise
        except VideoError as exc:
            return self._finish(job, FAILED, str(exc))
        except FacegateError as exc:  # a denial at a batch, a source gone, the collection deleted
            return self._finish(job, FAILED, f"{exc.code}: {exc.message}")
        except Exception:
            log.exception("video job %s failed", job.job_id)
            return self._finish(job, FAILED, "facegate failed to analyse the video; it has been logged.")
        return self._finish(job, SUCCEEDED, None)

    def _batch(self, job: VideoJob, frames: list, tracker: PersonTracker, progress: Progress | None) -> None:
        if self._closing.is_set():
            raise JobLost
        found = self.governed.analyse_video(job, frames, tracker)
        self._progress(job, list(found.findings), frames[-1][0])
        if progress is not None:
            progress(job, frames[-1][0])

    def _progress(self, job: VideoJob, findings: list, done_ms: int, metadata: dict | None = None) -> None:
        if not self.store.record_job_progress(job.job_id, self.worker, findings, done_ms, metadata):
            raise JobLost
        with self._lock:
            self._running[job.job_id] = done_ms
            self._moved[job.job_id] = time.monotonic()

    def _finish(self, job: VideoJob, status: str, message: str | None) -> VideoJob | None:
        return self.store.finish_job(job.job_id, self.worker, status, message)

    def _finished(self, job: VideoJob) -> None:
        """Audit the end, then notify."""
        self.governed.job_finished(job)
        channel = job.request.get("NotificationChannel")
        if channel:
            self._notify(job, channel["SNSTopicArn"])

    def _crops(self, job: VideoJob, sightings: dict[int, PersonMatch]) -> dict[int, bytes]:
        """Each person's face at the given sighting, cut from the video read once more (for reviewers)."""
        wanted = sorted(sightings.items(), key=lambda item: item[1].timestamp_ms)
        crops: dict[int, bytes] = {}
        local = requested_locally(job.requester)
        try:
            with self.videos.open(job.owner, job.request["Video"], local=local) as path, VideoFile(path) as video:
                for at, frame in video.frames(self.interval_ms):
                    while wanted and wanted[0][1].timestamp_ms <= at:
                        index, sighting = wanted.pop(0)
                        try:
                            crop = face_crop(frame, sighting.face)
                        except Exception:  # a crop that cannot be cut: the reviewer sees no probe image
                            crop = None
                        if crop is not None:
                            crops[index] = crop
                    if not wanted:
                        break
        except (VideoError, FacegateError):
            log.warning("job %s: the video could not be read again for reviewers' crops", job.job_id)
        return crops

    def _notify(self, job: VideoJob, topic: str) -> None:
        url = notification_url(self.store, job.owner, topic)
        if url is None:
            log.warning("job %s: notification channel %s is no longer configured", job.job_id, topic)
            return
        message = completion_message(job)
        envelope = {
            "Type": "Notification",
            "MessageId": str(uuid.uuid4()),
            "TopicArn": topic,
            "Message": json.dumps(message),
            "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        }
        request = urllib.request.Request(
            url,
            data=json.dumps(envelope).encode(),
            headers={"Content-Type": "application/json", "x-amz-sns-message-type": "Notification"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=NOTIFY_TIMEOUT_S) as response:
                response.read(1024)
            delivered = True
        except Exception as exc:  # the job's result stands; the failed delivery is logged and audited
            log.warning("job %s: notifying %s failed: %s", job.job_id, url, exc)
            delivered = False
        self.governed.governance.record_event(
            "video-job-notified",
            "video-jobs",
            organisation=job.owner,
            job_id=job.job_id,
            topic=topic,
            delivered=delivered,
        )


def completion_message(job: VideoJob) -> dict:
    """Rekognition's completion message, as it publishes it to the job's SNS topic."""
    video = job.request.get("Video", {})
    s3_object = video.get("S3Object", {})
    message = {
        "JobId": job.job_id,
        "Status": job.status,
        "API": f"Start{job.api}",
        "Timestamp": int(job.updated_at * 1000),
        "Video": {"S3ObjectName": s3_object.get("Name", video.get("File")), "S3Bucket": s3_object.get("Bucket")},
    }
    if job.request.get("JobTag"):
        message["JobTag"] = job.request["JobTag"]
    return message


def _host() -> str:
    """This host as worker ids name it: its name and its PID namespace (containers sharing a host name each have
    their own pids, so a pid is only comparable within one namespace)."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}/{namespace}"


def _gone(worker: str) -> bool:
    """Whether ``worker`` is a process of this host that no longer runs (or a closed worker of this process)."""
    host, pid_text = worker.split(":")[:2] if worker.count(":") >= 2 else ("", "")
    if host != _host() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return worker not in _LIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
