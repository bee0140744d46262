"""The `facegate` command line: the same service operations as the HTTP API, for people and scripts.

With ``--json``, compare, search, detect and index print exactly the JSON of the Rekognition operation
(``facegate/wire.py``'s, as the HTTP API sends it); without, they print what they read from the typed result.
Errors print one line naming the problem and its Rekognition code, and exit non-zero.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from facegate.audit.commands import audit_app
from facegate.cli_errors import fail
from facegate.compose import Facegate, Settings, build
from facegate.config import DEFAULT_DETECTOR, DEFAULT_OWNER, data_dir
from facegate.console_commands import console_users_app
from facegate.engine.image import sniff_format
from facegate.errors import FacegateError
from facegate.fairness.commands import fairness_app
from facegate.governance import Governance
from facegate.keys import Principal
from facegate.results import (
    Association,
    CollectionCreated,
    CollectionPage,
    Comparison,
    Detection,
    FaceMatches,
    FacePage,
    FacesDeleted,
    FoundFace,
    Result,
    UserMatches,
    UserPage,
)
from facegate.store import Collection, StoredFace, StoredUser
from facegate.video_commands import jobs_app, notifications_app, video_app
from facegate.wire import to_wire

app = typer.Typer(no_args_is_help=True, add_completion=False, help="facegate: accountable face recognition.")
collections_app = typer.Typer(no_args_is_help=True, help="Create, list, describe and delete collections.")
faces_app = typer.Typer(no_args_is_help=True, help="List and delete the faces of a collection.")
users_app = typer.Typer(no_args_is_help=True, help="Users: a person as up to 100 faces of a collection.")
app.add_typer(collections_app, name="collections")
app.add_typer(faces_app, name="faces")
app.add_typer(users_app, name="users")

out = Console()
err = Console(stderr=True)


class _State:
    data: Path | None = None
    detector: str = DEFAULT_DETECTOR
    runtime: str = "onnx"
    owner: str = DEFAULT_OWNER
    store: str | None = None
    _facegate: Facegate | None = None

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.data, detector=self.detector, runtime=self.runtime, store=self.store)

    @property
    def facegate(self) -> Facegate:
        if self._facegate is None:
            self._facegate = build(self.settings)
        return self._facegate

    @property
    def principal(self) -> Principal:
        return Principal.operator(self.owner, actor="local-cli")


state = _State()

DataOption = Annotated[
    Path | None, typer.Option("--data", help="Data directory (default $FACEGATE_HOME or ./facegate-data).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the Rekognition JSON response.")]
CollectionOption = Annotated[str, typer.Option("--collection", "-c", help="Collection id.")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why (recorded in the audit log).")]


@app.callback()
def main_options(
    ctx: typer.Context,
    data: DataOption = None,
    detector: Annotated[
        str, typer.Option(help="Face detector: cnn (dlib's MMOD in int8, the default), hog, cnn-float or cnn-dlib.")
    ] = DEFAULT_DETECTOR,
    runtime: Annotated[str, typer.Option(help="Embedding runtime: onnx (fast) or dlib (the reference).")] = "onnx",
    org: Annotated[
        str, typer.Option("--org", envvar="FACEGATE_ORG", help="The organisation the operator acts for.")
    ] = DEFAULT_OWNER,
    store: Annotated[
        str | None,
        typer.Option(
            "--store", envvar="FACEGATE_STORE", help="postgresql://… to keep faces and governance in PostgreSQL."
        ),
    ] = None,
) -> None:
    state.data = data
    state.detector = detector
    state.runtime = runtime
    state.owner = org
    state.store = store
    ctx.obj = {"data": data, "store": store}  # sub-apps (audit, fairness) read it through config.data_dir(…, ctx)


def call(operation: str, params: dict) -> Any:
    """Run a face operation as the local operator, through the policy gate and into the audit log; returns
    its typed result (``facegate.results``)."""
    return state.facegate.governed.execute(state.principal, operation, params).result


def emit(operation: str, result: Result) -> None:
    """Print ``result`` as the operation's Rekognition JSON."""
    _print_json(to_wire(operation, result))


def _print_json(response: dict[str, Any]) -> None:
    out.print_json(json.dumps(response), highlight=False) if out.is_terminal else print(json.dumps(response, indent=2))


def image(path: Path) -> dict:
    return {"Bytes": path.read_bytes()}


def _percent(value: float) -> str:
    return f"{value:.2f}"


# Collections


@collections_app.command("create")
def collections_create(collection_id: str, as_json: JsonOption = False) -> None:
    """Create a collection."""
    created: CollectionCreated = call("CreateCollection", {"CollectionId": collection_id})
    emit("CreateCollection", created) if as_json else out.print(f"created {collection_id} ({created.arn})")


@collections_app.command("list")
def collections_list(as_json: JsonOption = False) -> None:
    """List this organisation's collections."""
    collections: list[Collection] = []
    token = None
    while True:
        page: CollectionPage = call("ListCollections", {"NextToken": token} if token else {})
        collections += page.collections
        token = page.next_token
        if not token:
            break
    if as_json:
        emit("ListCollections", CollectionPage(tuple(collections)))  # every page as one
        return
    for collection in collections:
        out.print(collection.collection_id)


@collections_app.command("describe")
def collections_describe(collection_id: str, as_json: JsonOption = False) -> None:
    """Show a collection's face count, user count, model and ARN."""
    response = to_wire("DescribeCollection", call("DescribeCollection", {"CollectionId": collection_id}))
    if as_json:
        _print_json(response)
        return
    for key, value in response.items():  # named as in Rekognition's answer
        out.print(f"{key}: {value}")


@collections_app.command("delete")
def collections_delete(collection_id: str) -> None:
    """Delete a collection and every face in it."""
    call("DeleteCollection", {"CollectionId": collection_id})
    out.print(f"deleted {collection_id}")


@collections_app.command("retention")
def collections_retention(
    collection_id: str,
    reason: ReasonOption,
    max_days: Annotated[int | None, typer.Option(help="Delete faces this many days after they were indexed.")] = None,
    until: Annotated[str | None, typer.Option(help="Delete every face on this date (the purpose's end).")] = None,
    org: Annotated[str, typer.Option(help="Organisation that owns the collection.")] = DEFAULT_OWNER,
) -> None:
    """Set (or, with neither option, clear) a collection's retention rule; `facegate retention purge` enforces it."""
    rule = _governance().set_retention(org, collection_id, max_days=max_days, until=_when(until), reason=reason)
    out.print(f"{collection_id}: retention {rule or 'cleared'}")


@collections_app.command("thumbnails")
def collections_thumbnails(
    collection_id: str,
    reason: ReasonOption,
    keep: Annotated[bool, typer.Option("--keep/--no-keep", help="Keep a face crop per indexed face, for reviewers.")],
) -> None:
    """Keep (or stop keeping) a face crop of each face indexed from now on, so reviewers see candidates' faces.
    Off by default; the crops are deleted with their faces (DeleteFaces, retention, the BIPA purge)."""
    _governance().set_thumbnails(state.owner, collection_id, keep, reason)
    out.print(f"{collection_id} of {state.owner}: {'keeps' if keep else 'keeps no'} face thumbnails")


@collections_app.command("reindex")
def collections_reindex(collection_id: str) -> None:
    """Rebuild a collection's approximate-search index from the database (it is also rebuilt when stale)."""
    faces = state.facegate.service.rebuild_index(state.owner, collection_id)
    out.print(
        f"{collection_id}: index rebuilt over {faces:,} faces"
        if faces
        else f"{collection_id}: exact search, no index needed"
    )


retention_app = typer.Typer(no_args_is_help=True, help="Enforce retention rules.")
app.add_typer(retention_app, name="retention")


@retention_app.command("purge")
def retention_purge(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be deleted.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Delete every face past its retention; each deletion is audited."""
    report = state.facegate.governed.purge_expired(dry_run=dry_run)
    if as_json:
        print(json.dumps(report))
        return
    for item in report:
        verb = "would delete" if dry_run else "deleted"
        out.print(
            f"{item['organisation']}/{item['collection']}: {verb} {len(item['deleted'])} faces ({item['reason']})"
        )
    if not report:
        out.print("no collection has a retention rule")


# Indexing


class RateColumn(ProgressColumn):
    """Images per second."""

    def render(self, task) -> str:
        return f"{task.speed:.1f} img/s" if task.speed else "– img/s"


def _image_files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def external_image_id(path: Path) -> str:
    """ExternalImageId from a file name, with characters Rekognition refuses replaced by '_'."""
    return re.sub(r"[^a-zA-Z0-9_.\-:]", "_", path.name)[:255] or "_"


@app.command("index")
def index(
    paths: Annotated[list[Path], typer.Argument(help="Image files or directories (searched recursively).")],
    collection: CollectionOption,
    max_faces: Annotated[int | None, typer.Option(help="Index at most this many faces per image.")] = None,
    quality_filter: Annotated[str, typer.Option(help="NONE, AUTO, LOW, MEDIUM or HIGH.")] = "AUTO",
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: one per core).")] = None,
    ray: Annotated[
        bool, typer.Option("--ray", help="Index on Ray (needs the PostgreSQL store): a local Ray unless --ray-address.")
    ] = False,
    ray_address: Annotated[
        str | None, typer.Option(help="A Ray cluster to join, e.g. ray://head:10001 or auto (implies --ray).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Index the faces of images into a collection, across the cores (or a Ray cluster); re-running skips images
    already indexed."""
    from facegate.pipeline import BATCH, index_files

    on_ray = ray or ray_address is not None
    if on_ray and not state.settings.store:
        from facegate.ray_pipeline import EMBEDDED_REFUSAL

        fail(EMBEDDED_REFUSAL)
    files = list(_image_files(paths))
    processes = workers or os.cpu_count() or 1
    counts: Counter[str] = Counter()
    failures: list[str] = []
    responses: list[dict[str, Any]] = []
    call("DescribeCollection", {"CollectionId": collection})  # fail before the loop, not once per file
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, disable=as_json or not err.is_terminal, transient=False) as progress:
        task = progress.add_task("indexing", total=len(files))

        def requests() -> Iterator[tuple[Path, dict]]:
            for path in files:
                try:
                    with path.open("rb") as fh:
                        head = fh.read(16)
                except OSError as exc:
                    counts["failed: unreadable file"] += 1
                    failures.append(f"{path}: {exc.strerror or exc}")
                    progress.advance(task)
                    continue
                if sniff_format(head) is None:
                    counts["skipped: not a JPEG, PNG or WebP image"] += 1
                    progress.advance(task)
                    continue
                params = {
                    "CollectionId": collection,
                    "ExternalImageId": external_image_id(path),
                    "QualityFilter": quality_filter,
                }
                if max_faces is not None:
                    params["MaxFaces"] = max_faces
                yield path, params

        batch = min(BATCH, max(1, len(files) // (2 * processes)))  # a short list still reaches every worker
        if on_ray:
            from facegate.ray_pipeline import index_files_on_ray

            outcomes = index_files_on_ray(
                requests(),
                settings=state.settings,
                principal=state.principal,
                address=ray_address,
                actors=workers,
                batch=batch,
            )
        else:
            outcomes = index_files(
                requests(), settings=state.settings, principal=state.principal, workers=processes, batch=batch
            )
        for batch in outcomes:  # each image was gated and audited in the worker that indexed it
            progress.advance(task, len(batch))
            for outcome in batch:
                if outcome.error_code is not None:
                    label = "unreadable file" if outcome.error_code == "UnreadableFile" else outcome.error_code
                    counts[f"failed: {label}"] += 1
                    failures.append(f"{outcome.path}: {outcome.error_code}: {outcome.error}")
                    continue
                result = outcome.result
                if as_json:  # otherwise nothing per image is kept: memory stays bounded for any directory
                    responses.append(to_wire("IndexFaces", result))
                if result.repeated:
                    counts["skipped: already indexed"] += 1
                elif result.records:
                    counts["indexed"] += 1
                    counts["faces"] += len(result.records)
                else:
                    no_pass = "skipped: no face passed the quality filter"
                    counts[no_pass if result.unindexed else "skipped: no face found"] += 1
    if as_json:
        _print_json(responses[0] if len(responses) == 1 else {"Responses": responses})
        return
    table = Table(title=f"{len(files)} files → {collection}")
    table.add_column("outcome")
    table.add_column("count", justify="right")
    for outcome in sorted(counts):
        table.add_row(outcome, str(counts[outcome]))
    out.print(table)
    for line in failures[:50]:
        err.print(line, markup=False, highlight=False)
    if len(failures) > 50:
        err.print(f"... and {len(failures) - 50} more failures")


# Search, compare, detect


@app.command("search")
def search(
    image_path: Annotated[Path, typer.Argument(metavar="IMAGE")],
    collection: CollectionOption,
    threshold: Annotated[float, typer.Option(help="Minimum similarity 0–100.")] = 80.0,
    max_faces: Annotated[int, typer.Option("--max", help="Most matches to return.")] = 10,
    as_json: JsonOption = False,
) -> None:
    """Search a collection with the largest face of an image."""
    found: FaceMatches = call(
        "SearchFacesByImage",
        {
            "CollectionId": collection,
            "Image": image(image_path),
            "FaceMatchThreshold": threshold,
            "MaxFaces": max_faces,
        },
    )
    if as_json:
        emit("SearchFacesByImage", found)
        return
    table = Table(title=f"{len(found.matches)} matches at similarity ≥ {threshold}")
    _expected_false_candidates(collection, threshold)
    for column in ("similarity", "external image id", "face id"):
        table.add_column(column)
    for match in found.matches:
        table.add_row(_percent(match.similarity), match.face.external_image_id or "", match.face.face_id)
    out.print(table)


def _expected_false_candidates(collection: str, threshold: float) -> None:
    """What the active fairness audit says this search should expect, shown where the user reads results."""
    curves = _governance().active_audit()
    if curves is None:
        return
    size = call("DescribeCollection", {"CollectionId": collection}).face_count
    worst = curves.worst_group(threshold)
    err.print(
        f"expected false candidates per search: {size * worst.fmr:.2f} at similarity {threshold:g} in {size:,} faces "
        f"(worst group {worst.group}: FMR {worst.fmr:.2e}; fairness audit {curves.audit_id})",
        highlight=False,
    )


@app.command("compare")
def compare(
    source: Path,
    target: Path,
    threshold: Annotated[float, typer.Option(help="Minimum similarity 0–100.")] = 80.0,
    as_json: JsonOption = False,
) -> None:
    """Compare the largest face of SOURCE with every face of TARGET."""
    comparison: Comparison = call(
        "CompareFaces", {"SourceImage": image(source), "TargetImage": image(target), "SimilarityThreshold": threshold}
    )
    if as_json:
        emit("CompareFaces", comparison)
        return
    for match in comparison.matches:
        box = match.face.bounding_box
        out.print(f"match  similarity {_percent(match.similarity)}  at left {box.left:.2f} top {box.top:.2f}")
    out.print(
        f"{len(comparison.matches)} matching, {len(comparison.unmatched)} not matching at similarity ≥ {threshold}"
    )


@app.command("detect")
def detect(
    image_path: Annotated[Path, typer.Argument(metavar="IMAGE")],
    draw: Annotated[Path | None, typer.Option(help="Write a copy of the image with boxes and landmarks.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Detect faces with landmarks, pose and quality."""
    data = image_path.read_bytes()
    detection: Detection = call("DetectFaces", {"Image": {"Bytes": data}})
    if draw is not None:
        _draw(data, detection.faces, draw)
    if as_json:
        emit("DetectFaces", detection)
        return
    table = Table(title=f"{len(detection.faces)} faces")
    for column in ("left", "top", "width", "height", "confidence", "roll/yaw/pitch", "brightness", "sharpness"):
        table.add_column(column, justify="right")
    for found in detection.faces:
        box, pose, quality = found.bounding_box, found.face.pose, found.face.quality
        table.add_row(
            f"{box.left:.3f}",
            f"{box.top:.3f}",
            f"{box.width:.3f}",
            f"{box.height:.3f}",
            _percent(found.confidence),
            f"{pose.roll:.0f}/{pose.yaw:.0f}/{pose.pitch:.0f}",
            f"{quality.brightness:.0f}",
            f"{quality.sharpness:.0f}",
        )
    out.print(table)
    if draw is not None:
        out.print(f"drawn to {draw}")


def _draw(data: bytes, faces: tuple[FoundFace, ...], path: Path) -> None:
    from PIL import Image, ImageDraw

    pixels = state.facegate.engine.decode(data)
    picture = Image.fromarray(pixels)
    pen = ImageDraw.Draw(picture)
    width, height = picture.size
    stroke = max(2, round(min(width, height) / 200))
    for found in faces:
        box = found.bounding_box
        left, top = box.left * width, box.top * height
        pen.rectangle(
            (left, top, left + box.width * width, top + box.height * height), outline=(0, 255, 0), width=stroke
        )
        for mark_x, mark_y in found.landmarks.values():
            x, y = mark_x * width, mark_y * height
            pen.ellipse((x - stroke, y - stroke, x + stroke, y + stroke), fill=(255, 0, 0))
    picture.save(path)


# Faces


@faces_app.command("list")
def faces_list(
    collection: CollectionOption,
    user: Annotated[str | None, typer.Option(help="Only this user's faces.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List every face of a collection."""
    faces: list[StoredFace] = []
    token = None
    while True:
        params: dict = {"CollectionId": collection}
        if token:
            params["NextToken"] = token
        if user:
            params["UserId"] = user
        page: FacePage = call("ListFaces", params)
        faces += page.faces
        token = page.next_token
        if not token:
            break
    if as_json:
        emit("ListFaces", FacePage(tuple(faces), page.model_version))  # every page as one
        return
    table = Table(title=f"{len(faces)} faces in {collection}")
    for column in ("face id", "external image id", "user", "confidence"):
        table.add_column(column)
    for face in faces:
        table.add_row(face.face_id, face.external_image_id or "", face.user_id or "", _percent(face.confidence))
    out.print(table)


@faces_app.command("delete")
def faces_delete(collection: CollectionOption, face_ids: list[str], as_json: JsonOption = False) -> None:
    """Delete faces by FaceId."""
    deleted: FacesDeleted = call("DeleteFaces", {"CollectionId": collection, "FaceIds": face_ids})
    if as_json:
        emit("DeleteFaces", deleted)
        return
    out.print(f"deleted {len(deleted.deleted)} faces")
    for refusal in deleted.refused:
        out.print(f"not deleted {refusal.face_id}: {', '.join(refusal.reasons)}")


# Users


@users_app.command("create")
def users_create(collection: CollectionOption, user_id: str) -> None:
    """Create a user in a collection."""
    call("CreateUser", {"CollectionId": collection, "UserId": user_id})
    out.print(f"created user {user_id}")


@users_app.command("delete")
def users_delete(collection: CollectionOption, user_id: str) -> None:
    """Delete a user (its faces stay, no longer associated)."""
    call("DeleteUser", {"CollectionId": collection, "UserId": user_id})
    out.print(f"deleted user {user_id}")


@users_app.command("list")
def users_list(collection: CollectionOption, as_json: JsonOption = False) -> None:
    """List the users of a collection."""
    users: list[StoredUser] = []
    token = None
    while True:
        page: UserPage = call("ListUsers", {"CollectionId": collection, **({"NextToken": token} if token else {})})
        users += page.users
        token = page.next_token
        if not token:
            break
    if as_json:
        emit("ListUsers", UserPage(tuple(users)))  # every page as one
        return
    for user in users:
        out.print(f"{user.user_id}  {user.status}")


@users_app.command("associate")
def users_associate(
    collection: CollectionOption, user_id: str, face_ids: list[str], as_json: JsonOption = False
) -> None:
    """Associate faces with a user."""
    _change_user_faces("AssociateFaces", "associated", "with", collection, user_id, face_ids, as_json)


@users_app.command("disassociate")
def users_disassociate(
    collection: CollectionOption, user_id: str, face_ids: list[str], as_json: JsonOption = False
) -> None:
    """Remove faces from a user."""
    _change_user_faces("DisassociateFaces", "disassociated", "from", collection, user_id, face_ids, as_json)


def _change_user_faces(
    operation: str, verb: str, preposition: str, collection: str, user_id: str, face_ids: list[str], as_json: bool
) -> None:
    changed: Association = call(operation, {"CollectionId": collection, "UserId": user_id, "FaceIds": face_ids})
    if as_json:
        emit(operation, changed)
        return
    out.print(f"{verb} {len(changed.face_ids)} faces {preposition} {user_id}")
    for refusal in changed.refused:
        out.print(f"not {verb} {refusal.face_id}: {', '.join(refusal.reasons)}")


@users_app.command("search")
def users_search(
    collection: CollectionOption,
    image_path: Annotated[
        Path | None, typer.Option("--image", help="Search with the largest face of an image.")
    ] = None,
    user_id: Annotated[str | None, typer.Option("--user", help="Search with a user's faces.")] = None,
    face_id: Annotated[str | None, typer.Option("--face", help="Search with an indexed face.")] = None,
    threshold: Annotated[float, typer.Option(help="Minimum similarity 0–100.")] = 80.0,
    as_json: JsonOption = False,
) -> None:
    """Find the users that match an image, a user or a face."""
    if sum(x is not None for x in (image_path, user_id, face_id)) != 1:
        raise typer.BadParameter("give exactly one of --image, --user or --face")
    params: dict = {"CollectionId": collection, "UserMatchThreshold": threshold}
    if image_path is not None:
        operation, params = "SearchUsersByImage", {**params, "Image": image(image_path)}
    else:
        operation, params = "SearchUsers", {**params, **({"UserId": user_id} if user_id else {"FaceId": face_id})}
    found: UserMatches = call(operation, params)
    if as_json:
        emit(operation, found)
        return
    for match in found.matches:
        out.print(f"{_percent(match.similarity)}  {match.user_id}")
    out.print(f"{len(found.matches)} users at similarity ≥ {threshold}")


# Governance: organisations, use cases, keys, policies

keys_app = typer.Typer(no_args_is_help=True, help="Access keys for the Rekognition API.")
orgs_app = typer.Typer(no_args_is_help=True, help="Organisations: category, jurisdiction, groups, status.")
usecases_app = typer.Typer(no_args_is_help=True, help="Registered use cases: organisation + purpose + terms.")
policies_app = typer.Typer(no_args_is_help=True, help="Policy templates: list, activate, extend, deactivate.")
sources_app = typer.Typer(no_args_is_help=True, help="Where an organisation's S3Object images are read from.")
app.add_typer(keys_app, name="keys")
app.add_typer(orgs_app, name="orgs")
app.add_typer(usecases_app, name="usecases")
app.add_typer(policies_app, name="policies")
app.add_typer(sources_app, name="sources")
app.add_typer(audit_app, name="audit", help="The tamper-evident audit log: verify, export, show.")
app.add_typer(fairness_app, name="fairness", help="Bias audits and the ACLU experiment.")
app.add_typer(video_app, name="video")
app.add_typer(console_users_app, name="console-users")
app.add_typer(jobs_app, name="jobs")
app.add_typer(notifications_app, name="notifications")


def _key_ring():
    return state.facegate.keys


def _governance() -> Governance:
    return state.facegate.governance


def _when(value: str | None) -> float | None:
    from facegate.policy.templates import epoch

    return None if value is None else float(epoch(value))


@orgs_app.command("create")
def orgs_create(
    name: str,
    category: Annotated[
        str, typer.Option(help="law_enforcement, ngo, commercial, research, government, city_department")
    ],
    jurisdiction: Annotated[str, typer.Option(help="e.g. US-IL, EU-DE, US-CA-SF")] = "",
    group: Annotated[
        list[str] | None, typer.Option("--group", help="Named group, e.g. a moratorium exemption list.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Register an organisation."""
    org = _governance().create_organisation(name, category, jurisdiction, tuple(group or ()))
    if as_json:
        print(
            json.dumps(
                {
                    "Organisation": org.name,
                    "Category": org.category,
                    "Jurisdiction": org.jurisdiction,
                    "Groups": list(org.groups),
                }
            )
        )
        return
    out.print(f"registered {org.name} ({org.category}, {org.jurisdiction or 'no jurisdiction'})")


@orgs_app.command("list")
def orgs_list(as_json: JsonOption = False) -> None:
    """List organisations with their status."""
    orgs = _governance().organisations()
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "Organisation": o.name,
                        "Category": o.category,
                        "Jurisdiction": o.jurisdiction,
                        "Status": o.status,
                        "Groups": list(o.groups),
                    }
                    for o in orgs
                ]
            )
        )
        return
    table = Table(title=f"{len(orgs)} organisations")
    for column in ("name", "category", "jurisdiction", "status", "groups"):
        table.add_column(column)
    for o in orgs:
        table.add_row(o.name, o.category, o.jurisdiction, o.status, ", ".join(o.groups))
    out.print(table)


@sources_app.command("add")
def sources_add(
    name: Annotated[str, typer.Argument(help="The Bucket clients name in S3Object.")],
    org: Annotated[str, typer.Option("--org", help="The organisation whose requests may read it.")],
    reason: ReasonOption,
    directory: Annotated[
        Path | None, typer.Option("--dir", help="A local directory: object Names are paths in it.")
    ] = None,
    s3: Annotated[str | None, typer.Option("--s3", help="An S3-compatible endpoint URL to read from.")] = None,
    s3_bucket: Annotated[str | None, typer.Option(help="The bucket there (default: NAME).")] = None,
    region: Annotated[str, typer.Option(help="The endpoint's region.")] = "us-east-1",
    access_key_id: Annotated[str | None, typer.Option(help="The key facegate reads the bucket with.")] = None,
) -> None:
    """Register a source: S3Object {Bucket: NAME, Name: key} then reads DIR/key, or the key in the S3 bucket,
    for ORG's requests only. An S3 source's secret key comes from $FACEGATE_SOURCE_SECRET_KEY (or a prompt) and
    is stored sealed."""
    from facegate.sources import directory_source, s3_source

    if (directory is None) == (s3 is None):
        fail("give exactly one of --dir PATH and --s3 ENDPOINT_URL")
    if directory is not None:
        source = directory_source(org, name, directory)
    else:
        secret = os.environ.get("FACEGATE_SOURCE_SECRET_KEY") or typer.prompt("secret access key", hide_input=True)
        source = s3_source(
            org,
            name,
            s3,
            bucket=s3_bucket,
            region=region,
            access_key_id=access_key_id or "",
            secret_access_key=secret,
            sealer=_governance().keys,
        )
    source = _governance().add_source(source, reason)
    out.print(f"source {source.name} for {source.owner}: {source.kind} {source.location}")


@sources_app.command("list")
def sources_list(
    org: Annotated[str | None, typer.Option("--org", help="Only this organisation's.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List object sources."""
    sources = _governance().sources(org)
    if as_json:
        rows = [{"Organisation": s.owner, "Bucket": s.name, "Kind": s.kind, "Location": s.location} for s in sources]
        print(json.dumps(rows))
        return
    table = Table(title=f"{len(sources)} sources")
    for column in ("organisation", "bucket", "kind", "location"):
        table.add_column(column)
    for s in sources:
        table.add_row(s.owner, s.name, s.kind, s.location)
    out.print(table)


@sources_app.command("remove")
def sources_remove(
    name: str,
    org: Annotated[str, typer.Option("--org", help="The organisation the source belongs to.")],
    reason: ReasonOption,
) -> None:
    """Remove a source: its S3Objects are refused from the next request on."""
    _governance().remove_source(org, name, reason)
    out.print(f"removed source {name} of {org}")


@orgs_app.command("revoke")
def orgs_revoke(name: str, reason: ReasonOption) -> None:
    """Revoke an organisation: every key of it is refused from the next request on."""
    _governance().set_organisation_status(name, "revoked", reason)
    out.print(f"revoked {name}")


@orgs_app.command("suspend")
def orgs_suspend(name: str, reason: ReasonOption) -> None:
    """Suspend an organisation (reinstate it later)."""
    _governance().set_organisation_status(name, "suspended", reason)
    out.print(f"suspended {name}")


@orgs_app.command("reinstate")
def orgs_reinstate(name: str, reason: ReasonOption) -> None:
    """Make a suspended or revoked organisation active again."""
    _governance().set_organisation_status(name, "active", reason)
    out.print(f"reinstated {name}")


@orgs_app.command("groups")
def orgs_groups(name: str, group: Annotated[list[str], typer.Option("--group")], reason: ReasonOption) -> None:
    """Set an organisation's groups (e.g. add it to a moratorium's exemption list)."""
    _governance().set_organisation_groups(name, tuple(group), reason)
    out.print(f"{name} is in: {', '.join(group)}")


@usecases_app.command("create")
def usecases_create(
    org: Annotated[str, typer.Option(help="Registered organisation.")],
    purpose: Annotated[str, typer.Option(help="One purpose from the controlled vocabulary.")],
    collection: Annotated[list[str] | None, typer.Option("--collection", help="Allowed collection (repeat).")] = None,
    valid_from: Annotated[str | None, typer.Option(help="Start date (YYYY-MM-DD or ISO time).")] = None,
    valid_until: Annotated[str | None, typer.Option(help="End date (exclusive).")] = None,
    legal_basis: Annotated[str | None, typer.Option(help="Legal basis of the use.")] = None,
    authorisation: Annotated[str | None, typer.Option(help="Authorisation reference (e.g. a warrant).")] = None,
    approver: Annotated[str | None, typer.Option(help="Who approved the registration.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Register a use case; keys issued for it carry its purpose."""
    use_case = _governance().create_use_case(
        org,
        purpose,
        collections=tuple(collection) if collection else None,
        valid_from=_when(valid_from),
        valid_until=_when(valid_until),
        legal_basis=legal_basis,
        authorisation_reference=authorisation,
        approver=approver,
    )
    if as_json:
        print(json.dumps({"UseCaseId": use_case.use_case_id}))
        return
    out.print(f"registered use case {use_case.use_case_id}: {org} for {purpose}")


@usecases_app.command("list")
def usecases_list(org: Annotated[str | None, typer.Option(help="Only this organisation's.")] = None) -> None:
    """List registered use cases."""
    table = Table(title="use cases")
    for column in ("id", "organisation", "purpose", "collections", "status"):
        table.add_column(column)
    for u in _governance().use_cases(org):
        table.add_row(u.use_case_id, u.organisation, u.purpose, ", ".join(u.collections or ("any",)), u.status)
    out.print(table)


@usecases_app.command("revoke")
def usecases_revoke(use_case_id: str, reason: ReasonOption) -> None:
    """Revoke a use case: its keys are refused from the next request on."""
    _governance().revoke_use_case(use_case_id, reason)
    out.print(f"revoked {use_case_id}")


@keys_app.command("create")
def keys_create(
    usecase: Annotated[str | None, typer.Option("--usecase", help="Registered use case the key is for.")] = None,
    org: Annotated[str | None, typer.Option(help="Organisation, for a key without a registered use case.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Issue an access key pair; the secret is shown now and never again."""
    if usecase is None and org is None:
        org = DEFAULT_OWNER
    if org is not None and not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", org):
        raise typer.BadParameter("an organisation name is 1–64 letters, digits, '_', '.' or '-'", param_hint="--org")
    issued = _governance().issue_key(use_case_id=usecase, organisation=org)
    if as_json:
        print(json.dumps(issued.to_json()))
        return
    print(
        f"AccessKeyId:     {issued.access_key_id}\nSecretAccessKey: {issued.secret_access_key}\n"
        f"organisation:    {issued.owner}"
    )


@keys_app.command("revoke")
def keys_revoke(access_key_id: str, reason: ReasonOption) -> None:
    """Revoke an access key: refused from the next request on."""
    _governance().revoke_key(access_key_id, reason)
    out.print(f"revoked {access_key_id}")


@policies_app.command("list")
def policies_list(as_json: JsonOption = False) -> None:
    """Every template, whether it is active, with its parameters."""
    from facegate.policy.templates import TEMPLATES

    states = _governance().policy_states()
    rows = []
    for name, template in TEMPLATES.items():
        if template.always_on:
            continue
        current = states.get(name)
        rows.append(
            {
                "Template": name,
                "Title": template.title,
                "Active": bool(current and current.active),
                "Params": current.params if current else template.defaults,
                "Reason": current.reason if current else None,
            }
        )
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(title="policy templates")
    for column in ("template", "active", "parameters", "title"):
        table.add_column(column)
    for row in rows:
        params = ", ".join(f"{k}={v}" for k, v in row["Params"].items())
        table.add_row(row["Template"], "yes" if row["Active"] else "no", params, row["Title"])
    out.print(table)


@policies_app.command("activate")
def policies_activate(
    template: str,
    reason: ReasonOption,
    setting: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE parameter (repeat).")] = None,
) -> None:
    """Activate a template (or change its parameters); takes effect on the next request."""
    activated = _governance().activate(template, setting or [], reason)
    out.print(f"activated {template}: " + ", ".join(f"{k}={v}" for k, v in activated.params.items()))


@policies_app.command("extend")
def policies_extend(
    template: str,
    reason: ReasonOption,
    until: Annotated[str, typer.Option(help="New end date, or 'forever' (until further notice).")],
) -> None:
    """Extend (or shorten) a time-limited template such as the police moratorium."""
    from facegate.policy.templates import FOREVER

    ends = FOREVER if until.lower() in ("forever", "open", FOREVER) else until
    activated = _governance().activate(template, [f"ends={ends}"], reason)
    out.print(f"{template} now ends: {activated.params.get('ends')}")


@policies_app.command("deactivate")
def policies_deactivate(template: str, reason: ReasonOption) -> None:
    """Lift a template; takes effect on the next request."""
    _governance().deactivate(template, reason)
    out.print(f"deactivated {template}")


report_app = typer.Typer(no_args_is_help=True, help="Reports built from the audit log.")
app.add_typer(report_app, name="report")


@report_app.command("transparency")
def report_transparency(
    since: Annotated[str, typer.Option("--from", help="Start (YYYY-MM-DD or ISO time, UTC).")] = "1970-01-01",
    until: Annotated[str, typer.Option("--to", help="End, exclusive (default: now).")] = "",
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for transparency.json and transparency.html.")] = Path(
        "transparency"
    ),
) -> None:
    """Requests by organisation category, purpose and operation; decisions; denials by policy; matches; thresholds
    applied; revocations and policy changes."""
    from facegate import transparency

    governance = _governance()
    report = transparency.build(
        governance.audit, governance.organisations(), _when(since), _when(until) if until else time.time() + 1
    )
    json_path, html_path = transparency.write(report, out_dir)
    out.print(f"{sum(report['requests'].values())} requests; wrote {json_path} and {html_path}")


store_app = typer.Typer(no_args_is_help=True, help="The store itself: copy an embedded deployment into PostgreSQL.")
app.add_typer(store_app, name="store")


@store_app.command("copy")
def store_copy(
    source: Annotated[Path, typer.Option("--from", help="The embedded deployment's data directory.")],
    target: Annotated[
        str, typer.Option("--to", help="The PostgreSQL database: postgresql://user:password@host:5432/facegate")
    ],
    batch: Annotated[int, typer.Option(min=1, help="Rows per transaction.")] = 500,
) -> None:
    """Copy an embedded deployment (collections, faces, users, governance and the audit log, as they are) into
    PostgreSQL, reading it without writing. Stop its servers first; run it again to finish a copy cut short."""
    from facegate.cli_errors import one_line_errors
    from facegate.store.copy import copy_deployment

    with one_line_errors():
        report = copy_deployment(source, target, batch=batch)
    written = ", ".join(f"{rows:,} {kind}" for kind, rows in report.written.items())
    print(
        f"{report.source} -> {report.target}: {report.collections:,} collections, "
        f"{report.faces:,} faces, {report.users:,} users, {report.access_keys:,} access keys, "
        f"{report.audit_entries:,} audit entries\n"
        + (f"  written now: {written}" if report.changed else "  nothing to do: the target already holds all of it")
        + "\nEvery server on PostgreSQL needs the source's keys (the same files on every host):\n"
        f"  FACEGATE_STORE=<the --to URL>  FACEGATE_SEALING_KEY={report.sealing_key}  "
        f"FACEGATE_AUDIT_KEY={report.audit_signing_key}\n"
        f"Check the copied log: facegate --store <the --to URL> audit verify  (with FACEGATE_AUDIT_KEY as above)",
        flush=True,
    )
    audit = report.settings.get("fairness_audit") or ""
    if audit and not audit.lstrip().startswith("{"):
        print(
            f"The active fairness audit is the file {audit}: servers read it at that path (copy it there on other "
            "hosts, or run `facegate fairness activate` again to store the report itself).",
            flush=True,
        )


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    workers: Annotated[int | None, typer.Option(help="Face worker processes (default: one per core).")] = None,
    queue: Annotated[
        int | None, typer.Option(help="Requests allowed to wait for a worker (default 4 per worker).")
    ] = None,
    region: Annotated[
        list[str] | None,
        typer.Option("--region", help="Region a request's signature may be scoped to (repeat for more)."),
    ] = None,
) -> None:
    """Serve the Rekognition-compatible API (AWS JSON 1.1 + SigV4) on HOST:PORT."""
    import uvicorn

    from facegate.server.app import create_app
    from facegate.server.protocol import GuardedH11Protocol
    from facegate.server.sigv4 import DEFAULT_REGIONS

    regions = tuple(region) if region else DEFAULT_REGIONS

    home = data_dir(state.data)
    if not _key_ring().has_keys("client"):
        governance = _governance()
        _print_first_start(
            governance.issue_key(organisation="admin", role="admin"),
            governance.issue_key(organisation=DEFAULT_OWNER),
            host,
            port,
        )
    accounts = state.facegate.console_accounts
    if not accounts.users():
        password = accounts.create("operator", "operator", ("*",), actor="first-start")
        print(
            f"Console: http://{host}:{port}/console/  user 'operator', one-time password {password}\n"
            "  (shown this once; you choose your own at first sign-in; add reviewers there or with "
            "`facegate console-users create`)\n",
            flush=True,
        )
    application = create_app(replace(state.settings, regions=regions), workers=workers, queue=queue)
    endpoint = f"http://{host}:{port}"
    print(
        f"facegate serving {home.resolve()} on {endpoint}  (health: /healthz, metrics: /metrics)\n"
        f"  boto3:   boto3.client('rekognition', endpoint_url='{endpoint}', region_name='{regions[0]}', "
        "aws_access_key_id=..., aws_secret_access_key=...)\n"
        f"  AWS CLI: aws rekognition list-collections --endpoint-url {endpoint}\n"
        f"  new key: facegate keys create --json  (with FACEGATE_HOME={home})\n"
        f"  scores:  {_scores_line(home)}",
        flush=True,
    )
    uvicorn.run(
        application,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=10,
        http=GuardedH11Protocol,
    )


def _scores_line(home: Path) -> str:
    from facegate.engine.scores import RAW, active_scores

    served = active_scores(home)
    if served == RAW:
        return "raw dlib distances (calibrate fair scores: facegate fairness calibrate --cohort …)"
    return f"normalised, calibration {served} (facegate fairness scores)"


def _print_first_start(admin, client, host: str, port: int) -> None:
    """Shown once, on first start: the secrets are not stored in clear and cannot be shown again."""
    endpoint = f"http://{host}:{port}"
    print(
        "First start: credentials created. They are shown this once; keep them.\n"
        f"  administrator   AccessKeyId {admin.access_key_id}  SecretAccessKey {admin.secret_access_key}\n"
        f"  organisation '{client.owner}'  AccessKeyId {client.access_key_id}  "
        f"SecretAccessKey {client.secret_access_key}\n\n"
        "Call it with boto3:\n"
        f"  client = boto3.client('rekognition', endpoint_url='{endpoint}', region_name='us-east-1',\n"
        f"                        aws_access_key_id='{client.access_key_id}',\n"
        f"                        aws_secret_access_key='{client.secret_access_key}')\n"
        "  client.create_collection(CollectionId='family')\n\n"
        "or the AWS CLI:\n"
        f"  export AWS_ACCESS_KEY_ID={client.access_key_id} AWS_SECRET_ACCESS_KEY={client.secret_access_key} "
        "AWS_DEFAULT_REGION=us-east-1\n"
        f"  aws rekognition create-collection --collection-id family --endpoint-url {endpoint}\n"
        f"  aws rekognition index-faces --collection-id family --image-bytes fileb://photo.jpg "
        f"--endpoint-url {endpoint}\n",
        flush=True,
    )


def main() -> None:
    """Entry point: run the CLI, turning facegate errors into one line and a non-zero exit code."""
    try:
        # Without standalone mode click returns (not raises) a command's typer.Exit code: it must reach the shell.
        code = app(standalone_mode=False)
    except FacegateError as exc:
        err.print(f"error: {exc.code}: {exc.message}", markup=False, highlight=False)
        sys.exit(1)
    except FileNotFoundError as exc:
        err.print(f"error: file not found: {exc.filename}", markup=False, highlight=False)
        sys.exit(1)
    except IsADirectoryError as exc:
        err.print(f"error: {exc.filename} is a directory, not an image file", markup=False, highlight=False)
        sys.exit(1)
    except PermissionError as exc:
        err.print(f"error: permission denied: {exc.filename}", markup=False, highlight=False)
        sys.exit(1)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # usage errors (exit 2) and the like, from whichever click typer runs on
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(getattr(exc, "exit_code", None), int):
            sys.exit(exc.exit_code)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
