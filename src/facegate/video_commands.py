"""`facegate video`, `facegate jobs` and `facegate notifications`: stored-video jobs from the command line.

`facegate video search|detect VIDEO` runs StartFaceSearch / StartFaceDetection on a local file as the local
operator, through the gate and into the audit log like any request, analyses it here with a progress bar, and
prints a summary per person (or `--json`: the Get response, every page joined)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from facegate.cli_errors import fail

video_app = typer.Typer(no_args_is_help=True, help="Search or detect faces in a stored video (a local file).")
jobs_app = typer.Typer(no_args_is_help=True, help="Video jobs: their state and progress.")
notifications_app = typer.Typer(no_args_is_help=True, help="Webhooks for video jobs' SNS notification channels.")

out = Console()
err = Console(stderr=True)
JsonOption = Annotated[bool, typer.Option("--json", help="Print the Rekognition JSON response.")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why (recorded in the audit log).")]


@video_app.command("search")
def video_search(
    video: Annotated[Path, typer.Argument(metavar="VIDEO", help="An MP4, MOV or AVI file (H.264).")],
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection id.")],
    threshold: Annotated[float, typer.Option(help="Minimum similarity 0–100.")] = 80.0,
    as_json: JsonOption = False,
) -> None:
    """Find the collection's faces in a video: who, when, and their best match."""
    params = {"Video": _file(video), "CollectionId": collection, "FaceMatchThreshold": threshold}
    results = _run("StartFaceSearch", "GetFaceSearch", params, as_json)
    if results is None:
        return
    from facegate.video import summarise_persons

    persons = summarise_persons(list(results.persons))
    table = Table(title=f"{len(persons)} persons matched in {video.name} at similarity ≥ {threshold:g}")
    for column in ("person", "seen", "frames", "similarity", "best match"):
        table.add_column(column, no_wrap=True)
    for p in persons:
        best = p.best
        table.add_row(
            str(p.index),
            f"{_clock(p.first_ms)}–{_clock(p.last_ms)}",
            str(p.sightings),
            f"{best.similarity:.2f}" if best else "",
            (best.face.external_image_id or best.face.face_id) if best else "",
        )
    out.print(table)


@video_app.command("detect")
def video_detect(
    video: Annotated[Path, typer.Argument(metavar="VIDEO", help="An MP4, MOV or AVI file (H.264).")],
    as_json: JsonOption = False,
) -> None:
    """Detect faces in a video: how many at each sampled timestamp."""
    results = _run("StartFaceDetection", "GetFaceDetection", {"Video": _file(video)}, as_json)
    if results is None:
        return
    counts: dict[int, int] = {}
    for face in results.faces:
        counts[face.timestamp_ms] = counts.get(face.timestamp_ms, 0) + 1
    out.print(f"{len(results.faces)} faces at {len(counts)} of the sampled timestamps of {video.name}")
    for at, count in sorted(counts.items()):
        out.print(f"  {_clock(at)}  {count} face{'s' if count != 1 else ''}")


def _file(video: Path) -> dict:
    if not video.is_file():
        fail(f"{video} is not a file")
    return {"File": str(video.resolve())}


def _run(start: str, get: str, params: dict, as_json: bool):
    """Start the job (governed), analyse it here with a progress bar, and read every page of its results; prints
    the joined Get response with ``as_json`` (and returns None), else returns the joined results."""
    from dataclasses import replace

    from facegate import cli
    from facegate.engine.video import VideoError, VideoFile
    from facegate.wire import to_wire

    try:
        with VideoFile(params["Video"]["File"]) as opened:
            duration = opened.metadata.duration_ms
    except VideoError as exc:
        fail(str(exc))
    started = cli.call(start, params)
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} ms"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("analysing", total=duration)
        jobs = cli.state.facegate.jobs
        try:
            job = jobs.run(started.job_id, cli.state.owner, progress=lambda _, done: bar.update(task, completed=done))
        except KeyboardInterrupt:  # the job ends FAILED, not IN_PROGRESS with nobody to finish it
            jobs.stop(started.job_id, "Stopped by the operator (interrupted).")
            fail(f"job {started.job_id} interrupted: FAILED")
    if job.status != "SUCCEEDED":
        fail(f"job {job.job_id} {job.status}: {job.status_message or 'it did not finish'}")
    pages, token = [], None
    while True:
        page = cli.call(get, {"JobId": job.job_id, **({"NextToken": token} if token else {})})
        pages.append(page)
        token = page.next_token
        if token is None:
            break
    joined = replace(
        pages[-1],
        persons=tuple(p for page in pages for p in page.persons),
        faces=tuple(f for page in pages for f in page.faces),
    )
    if as_json:
        print(json.dumps(to_wire(get, joined), indent=2))
        return None
    return joined


@jobs_app.command("list")
def jobs_list(
    org: Annotated[str | None, typer.Option("--org", help="Only this organisation's.")] = None,
    status: Annotated[str | None, typer.Option(help="IN_PROGRESS, SUCCEEDED or FAILED.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List video jobs, newest first, with how far each has got."""
    jobs = _store().list_jobs(org, status)
    if as_json:
        print(json.dumps([_job_json(j) for j in jobs]))
        return
    table = Table(title=f"{len(jobs)} video jobs")
    for column in ("job id", "organisation", "api", "status", "progress", "attempts", "message"):
        table.add_column(column)
    for j in jobs:
        table.add_row(
            j.job_id[:16] + "…", j.owner, j.api, j.status, _progress(j), str(j.attempts), j.status_message or ""
        )
    out.print(table)


@jobs_app.command("show")
def jobs_show(job_id: str, org: Annotated[str, typer.Option("--org", help="The job's organisation.")]) -> None:
    """Show one job as JSON: state, progress, video metadata, worker."""
    job = _store().get_job(org, job_id)
    if job is None:
        fail(f"{org} has no job {job_id}")
    print(json.dumps(_job_json(job), indent=2))


@notifications_app.command("add")
def notifications_add(
    topic_arn: Annotated[str, typer.Argument(metavar="SNS_TOPIC_ARN")],
    org: Annotated[str, typer.Option("--org", help="The organisation whose jobs may name it.")],
    url: Annotated[str, typer.Option("--url", help="The webhook that receives the completion messages.")],
    reason: ReasonOption,
) -> None:
    """Deliver the messages of jobs whose NotificationChannel names SNS_TOPIC_ARN to a webhook (HTTP POST)."""
    _governance().add_notification(org, topic_arn, url, reason)
    out.print(f"{topic_arn} of {org} → {url}")


@notifications_app.command("list")
def notifications_list(as_json: JsonOption = False) -> None:
    """List notification channels."""
    channels = _governance().notifications()
    if as_json:
        print(json.dumps(channels))
        return
    for org, topics in sorted(channels.items()):
        for topic, url in sorted(topics.items()):
            out.print(f"{org}  {topic} → {url}")


@notifications_app.command("remove")
def notifications_remove(
    topic_arn: Annotated[str, typer.Argument(metavar="SNS_TOPIC_ARN")],
    org: Annotated[str, typer.Option("--org", help="The organisation it belongs to.")],
    reason: ReasonOption,
) -> None:
    """Remove a notification channel: jobs naming it are refused from the next Start on."""
    _governance().remove_notification(org, topic_arn, reason)
    out.print(f"removed {topic_arn} of {org}")


def _store():
    from facegate import cli

    return cli.state.facegate.store


def _governance():
    from facegate import cli

    return cli.state.facegate.governance


def _job_json(job) -> dict:
    return {
        "JobId": job.job_id,
        "Organisation": job.owner,
        "API": f"Start{job.api}",
        "JobStatus": job.status,
        "StatusMessage": job.status_message,
        "ProgressMillis": job.progress_ms,
        "DurationMillis": (job.video_metadata or {}).get("duration_ms"),
        "Attempts": job.attempts,
        "Worker": job.worker,
        "Video": job.request.get("Video"),
        "CollectionId": job.request.get("CollectionId"),
        "CreatedAt": job.created_at,
        "UpdatedAt": job.updated_at,
    }


def _progress(job) -> str:
    duration = (job.video_metadata or {}).get("duration_ms")
    if job.status == "SUCCEEDED":
        return "100%"
    return f"{100 * job.progress_ms / duration:.0f}%" if duration else "—"


def _clock(ms: int) -> str:
    seconds, millis = divmod(ms, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}.{millis:03d}"
