"""The ACLU experiment (July 2018): search every member of Congress against a gallery of other people.

The gallery is a facegate collection built from the non-member datasets given (faces from the embedding cache,
stored through the ``Store`` interface as IndexFaces would store them); each member's photo is then searched
with the governed ``SearchFacesByImage`` (``GovernedService.execute``), so the candidates are exactly what a
facegate user gets. Gallery people who are members themselves (the overlap file) are left out, so every candidate
returned is a false match.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import os
import re
import time
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import facegate
from facegate.config import DEFAULT_DETECTOR, DEFAULT_OWNER
from facegate.engine.models import embedding_weights, weights_sha256
from facegate.errors import ResourceNotFoundException
from facegate.fairness.datasets import DatasetError, load_dataset
from facegate.fairness.embeddings import EmbeddedDataset, Reporter, embed_dataset
from facegate.fairness.metrics import Rate, fpir
from facegate.keys import Principal
from facegate.quality import filter_reasons
from facegate.store import StoredFace

if TYPE_CHECKING:
    from facegate.compose import Facegate

THRESHOLDS = (80.0, 99.0)
MAX_FACES = 4096  # SearchFacesByImage's largest MaxFaces
EXPERIMENT_ACTOR = "local-experiment"  # the operator the experiment runs as, gated and audited as any other
COLLECTION_PREFIX = "fairness-aclu-"
WHITE = "white-american"
TOP_PAIRS = 24
POC_RULE = (
    "People of colour: every member whose ethnicity in members.csv is not white-american (african-, hispanic-, "
    "asian-, native-, middle-eastern-, multi-racial-american, pacific-islander); members without an ethnicity "
    "are left out of both shares."
)
METHOD = (
    "Each member's photo is searched with SearchFacesByImage (largest face, FaceMatchThreshold t, MaxFaces "
    f"{MAX_FACES}) against one collection holding the largest face of every gallery image that passes "
    "IndexFaces' default QualityFilter (AUTO). Gallery identities listed in the overlap file (members who are "
    "also in the gallery data) are removed, so every candidate counts as a false match. Expected counts use the "
    "audit's overall FMR at the same threshold: FPIR = 1-(1-FMR)^N for a gallery of N faces."
)


class ExperimentError(ValueError):
    """An input of the experiment is unusable; the message says which and what would be accepted."""


@dataclass(frozen=True)
class Member:
    bioguide: str
    name: str
    ethnicity: str | None
    gender: str | None
    party: str | None
    photo: Path | None  # None when the photo file is not found

    @property
    def person_of_colour(self) -> bool | None:
        return None if self.ethnicity is None else self.ethnicity != WHITE


@dataclass(frozen=True)
class GenuineProbe:
    """A gallery person's photo searched against the gallery that holds their other photos."""

    source: str
    identity: str
    path: Path


@dataclass(frozen=True)
class GalleryFace:
    source: str  # the dataset spec
    path: Path
    label: str  # identity or file name, for the report


def read_members(members_csv: Path, probes_dir: Path) -> list[Member]:
    """Members from members.csv, each with its photo found under ``probes_dir`` (photo_file may be given
    relative to the probes folder, to its parent, or to the CSV's folder)."""
    if not members_csv.is_file():
        raise ExperimentError(f"--members {members_csv}: file not found; pass congress117/members.csv")
    if not probes_dir.is_dir():
        raise ExperimentError(f"--probes {probes_dir}: not a folder; pass the folder of the members' photos")
    with members_csv.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"bioguide", "name", "photo_file"} - set(reader.fieldnames or [])
        if missing:
            raise ExperimentError(f"--members {members_csv}: lacks the column(s) {', '.join(sorted(missing))}")
        rows = list(reader)
    members = []
    for row in rows:
        relative = Path(row["photo_file"])
        candidates = [probes_dir / relative, probes_dir.parent / relative, members_csv.parent / relative]
        candidates += [probes_dir / relative.relative_to(relative.parts[0])] if len(relative.parts) > 1 else []
        photo = next((c for c in candidates if c.is_file()), None)
        members.append(
            Member(
                row["bioguide"],
                row["name"],
                row.get("ethnicity") or None,
                row.get("gender") or None,
                row.get("party") or None,
                photo,
            )
        )
    return members


def read_overlap(path: Path) -> set[str]:
    """Gallery identities that are members themselves (column lfw_identity, or identity)."""
    if not path.is_file():
        raise ExperimentError(f"--overlap {path}: file not found; pass congress117/lfw_name_overlap.csv")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        column = next((c for c in ("lfw_identity", "identity") if c in (reader.fieldnames or [])), None)
        if column is None:
            raise ExperimentError(f"--overlap {path}: needs an lfw_identity (or identity) column")
        return {row[column].strip() for row in reader if row[column].strip()}


def run_aclu(
    probes_dir: Path,
    members_csv: Path,
    gallery_specs: list[str],
    out_dir: Path,
    data_dir: Path,
    *,
    overlap: Path | None = None,
    thresholds: tuple[float, ...] = THRESHOLDS,
    audit_report: dict | None = None,
    detector: str = DEFAULT_DETECTOR,
    workers: int | None = None,
    reporter: Reporter | None = None,
    scores: str | None = None,
) -> dict:
    """Build the gallery, search every member at each threshold, write report.json/html and summary.md.
    ``scores``: "raw" or a calibration id to search with, instead of the data directory's served scores."""
    from facegate.compose import Settings, build
    from facegate.fairness.report import write_aclu_report

    reporter = reporter or Reporter()
    if not gallery_specs:
        raise ExperimentError("--gallery: give at least one dataset spec for the gallery (e.g. lfw:DIR)")
    thresholds = tuple(sorted(set(thresholds)))
    for t in thresholds:
        if not 0 <= t <= 100:
            raise ExperimentError(f"--threshold {t:g}: a similarity threshold is between 0 and 100")
    members = read_members(Path(members_csv), Path(probes_dir))
    excluded_identities = read_overlap(Path(overlap)) if overlap else set()
    datasets = [load_dataset(spec) for spec in gallery_specs]
    for dataset in datasets:
        if dataset.kind == "congress":
            raise DatasetError(f"--gallery {dataset.spec}: the gallery must hold people who are not the probes")
    embedded = [
        embed_dataset(d, Path(data_dir), detector=detector, workers=workers, reporter=reporter) for d in datasets
    ]

    facegate = build(Settings(Path(data_dir), detector=detector, scores=scores))
    model_version = facegate.engine.model_version
    served = facegate.scores.name
    try:
        gallery, faces, sources, genuine = _build_gallery(facegate, embedded, excluded_identities, reporter)
        reporter.note(
            f"searching {sum(m.photo is not None for m in members)} members at {', '.join(map(str, thresholds))}, "
            f"then members and {len(genuine):,} gallery people with a mate for their nearest face"
        )
        probes = [m.photo for m in members if m.photo is not None]
        tasks = [(gallery["collection_id"], str(p), thresholds) for p in probes]
        tasks += [(gallery["collection_id"], str(p), None) for p in [*probes, *(g.path for g in genuine)]]
        answers = _search_all(Path(data_dir), detector, served, tasks, workers, reporter)
        found = iter(answers[: len(probes)])
        results = {m.bioguide: next(found) for m in members if m.photo is not None}
        tops = answers[len(probes) :]
        found = iter(tops[: len(probes)])
        member_top = {m.bioguide: next(found) for m in members if m.photo is not None}
        genuine_top = tops[len(probes) :]
    finally:
        facegate.close()
    report, pairs = _tally(members, results, thresholds, faces, gallery, audit_report, model_version)
    report["operating_points"] = _operating_points(members, member_top, genuine, genuine_top, faces)
    report["gallery"]["sources"] = sources
    report["scores"] = served
    write_aclu_report(report, Path(out_dir), pairs)
    return report


def _build_gallery(
    facegate: Facegate, embedded: list[EmbeddedDataset], excluded_identities: set[str], reporter: Reporter
) -> tuple[dict, dict[str, GalleryFace], dict, list[GenuineProbe]]:
    """Create (or reuse, if identical) the gallery collection; returns its description and the faces by
    ExternalImageId. The collection is created (and replaced) through the governed operation; its faces,
    embedded once for every threshold, are bulk-loaded into the store and the load is audited as one event."""
    model_version = facegate.engine.model_version
    chosen: list[tuple[EmbeddedDataset, int, str]] = []
    excluded_images: Counter[str] = Counter()
    sources = {}
    for s, data in enumerate(embedded):
        kept = unusable = 0
        for i, record in enumerate(data.dataset.records):
            if not data.detected[i]:
                continue
            if record.identity is not None and record.identity in excluded_identities:
                excluded_images[record.identity] += 1
                continue
            if filter_reasons(data.face(i), "AUTO"):
                unusable += 1  # IndexFaces would not store it either
                continue
            chosen.append((data, i, _external_id(s, i, data.dataset.relative(record))))
            kept += 1
        sources[data.dataset.spec] = {
            "images": len(data.dataset.records),
            "detected": int(data.detected.sum()),
            "filtered_by_quality": unusable,
            "faces": kept,
            "dataset_sha256": data.dataset_hash,
        }
    # The genuine side: the first photo of every gallery person with two or more is searched instead of stored,
    # so each of those searches has a mate in the gallery.
    by_person: dict[tuple[str, str], list[int]] = {}
    for n, (data, i, _) in enumerate(chosen):
        identity = data.dataset.records[i].identity
        if identity is not None:
            by_person.setdefault((data.dataset.spec, identity), []).append(n)
    held = {rows[0] for rows in by_person.values() if len(rows) >= 2}
    genuine = []
    for n in sorted(held):
        data, i, _ = chosen[n]
        genuine.append(GenuineProbe(data.dataset.spec, data.dataset.records[i].identity, data.dataset.records[i].path))
    chosen = [c for n, c in enumerate(chosen) if n not in held]
    digest = hashlib.sha256(model_version.encode())
    for data, i, external in chosen:
        digest.update(f"{external}\0{data.file_hashes[i]}\n".encode())
    gallery_hash = digest.hexdigest()
    collection_id = COLLECTION_PREFIX + gallery_hash[:16]
    owner = DEFAULT_OWNER
    operator = Principal.operator(owner, actor=EXPERIMENT_ACTOR)
    try:
        existing = facegate.governed.execute(operator, "DescribeCollection", {"CollectionId": collection_id}).result
    except ResourceNotFoundException:
        existing = None
    if existing is not None and existing.face_count == len(chosen):
        reporter.note(f"reusing gallery collection {collection_id} ({len(chosen):,} faces)")
    else:
        if existing is not None:
            facegate.governed.execute(operator, "DeleteCollection", {"CollectionId": collection_id})
        facegate.governed.execute(
            operator,
            "CreateCollection",
            {"CollectionId": collection_id, "Tags": {"purpose": "fairness ACLU-style experiment gallery"}},
        )
        now = time.time()
        batch: list[StoredFace] = []
        for n, (data, i, external) in enumerate(chosen, 1):
            batch.append(
                StoredFace(
                    face_id=str(uuid.uuid4()),
                    image_id=str(uuid.uuid4()),
                    external_image_id=external,
                    box=data.ratio_box(i),
                    confidence=float(data.confidence[i]),
                    image_hash=data.file_hashes[i],
                    model_version=model_version,
                    indexed_at=now,
                    embedding=data.embeddings[i],
                )
            )
            # Faces embedded once for every threshold are loaded as they are, a governed LoadFaces per batch.
            if len(batch) == 1000 or n == len(chosen):
                facegate.governed.execute(operator, "LoadFaces", {"CollectionId": collection_id, "Faces": batch})
                batch = []
                reporter.step("storing the gallery", n, len(chosen))
    faces = {
        external: GalleryFace(
            data.dataset.spec,
            data.dataset.records[i].path,
            data.dataset.records[i].identity or data.dataset.relative(data.dataset.records[i]),
        )
        for data, i, external in chosen
    }
    gallery = {
        "collection_id": collection_id,
        "owner": owner,
        "faces": len(chosen),
        "gallery_sha256": gallery_hash,
        "specs": [d.dataset.spec for d in embedded],
        "excluded_overlap": {"identities": sorted(excluded_images), "images": sum(excluded_images.values())},
        "genuine_probes_held_out": len(genuine),
    }
    return gallery, faces, sources, genuine


def _external_id(source: int, index: int, relative: str) -> str:
    """A valid ExternalImageId that also names the image for the report: '<source>:<row>:<path>'."""
    return f"{source}:{index}:" + re.sub(r"[^A-Za-z0-9_.\-:]", "_", relative.replace("/", ":"))[:200]


_searcher = None


def _start_searcher(data_dir: str, detector: str, scores: str) -> None:
    global _searcher
    from facegate.compose import Settings, build

    _searcher = (
        build(Settings(Path(data_dir), detector=detector, scores=scores)).governed,
        Principal.operator(DEFAULT_OWNER, EXPERIMENT_ACTOR),
    )


def _search_member(task: tuple[str, str, tuple[float, ...]]) -> dict:
    """Per threshold: the (similarity, ExternalImageId) candidates, or the error a user would see."""
    from facegate.errors import FacegateError

    collection_id, photo, thresholds = task
    data = Path(photo).read_bytes()
    if thresholds is None:  # the nearest face at any similarity: where this probe's first candidate lies
        params = {"CollectionId": collection_id, "Image": {"Bytes": data}, "FaceMatchThreshold": 0.0, "MaxFaces": 1}
        try:
            governed, operator = _searcher
            found = governed.execute(operator, "SearchFacesByImage", params).result
        except FacegateError as exc:
            return {"error": f"{exc.code}: {exc.message}"}
        return {
            "top": (found.matches[0].similarity, found.matches[0].face.external_image_id) if found.matches else None
        }
    out: dict = {}
    for t in thresholds:
        params = {
            "CollectionId": collection_id,
            "Image": {"Bytes": data},
            "FaceMatchThreshold": t,
            "MaxFaces": MAX_FACES,
        }
        try:
            governed, operator = _searcher
            found = governed.execute(operator, "SearchFacesByImage", params).result
        except FacegateError as exc:
            return {"error": f"{exc.code}: {exc.message}"}
        out[t] = [(m.similarity, m.face.external_image_id) for m in found.matches]
    return {"matches": out}


def _search_all(
    data_dir: Path, detector: str, scores: str, tasks: list[tuple], workers: int | None, reporter: Reporter
) -> list[dict]:
    results: list[dict] = []
    count = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(count, initializer=_start_searcher, initargs=(str(data_dir), detector, scores)) as pool:
        for n, result in enumerate(pool.map(_search_member, tasks, chunksize=4), 1):
            results.append(result)
            reporter.step("searching", n, len(tasks))
    return results


GENUINE_TARGETS = (0.95, 0.90, 0.85, 0.80)  # shares of genuine searches that must find their mate at rank 1


def _operating_points(
    members: list[Member],
    member_top: dict[str, dict],
    genuine: list[GenuineProbe],
    genuine_top: list[dict],
    faces: dict[str, GalleryFace],
) -> list[dict]:
    """For each target share of genuine searches finding their mate first: the strictest threshold that still
    does, and the members falsely matched there (any candidate at or above it) with their share of people of
    colour. A genuine search whose first candidate is someone else counts as not found at any threshold."""
    mates = []
    for probe, answer in zip(genuine, genuine_top, strict=True):
        top = answer.get("top")
        same = top is not None and faces[top[1]].source == probe.source and faces[top[1]].label == probe.identity
        mates.append(top[0] if same else -np.inf)
    if not mates:
        return []  # no gallery person has two photos: no genuine side to measure
    ordered = np.sort(np.array(mates))[::-1]
    probed = [m for m in members if m.bioguide in member_top and "top" in member_top[m.bioguide]]
    points = []
    for target in GENUINE_TARGETS:
        need = int(np.ceil(target * len(ordered)))
        threshold = float(ordered[need - 1]) if len(ordered) and need >= 1 else -np.inf
        reached = bool(np.isfinite(threshold))
        matched = [
            m
            for m in probed
            if reached and member_top[m.bioguide]["top"] and member_top[m.bioguide]["top"][0] >= threshold
        ]
        points.append(
            {
                "genuine_target": target,
                "threshold": threshold if reached else None,
                "genuine_searches": len(ordered),
                "genuine_found": float((ordered >= threshold).mean())
                if reached
                else float(np.isfinite(ordered).mean()),
                "members_falsely_matched": Rate(len(matched), len(probed)).to_json() if reached else None,
                "people_of_colour_among_falsely_matched": _poc_share(matched) if reached else None,
                "people_of_colour_among_members": _poc_share(probed),
            }
        )
    return points


def _tally(
    members: list[Member],
    results: dict[str, dict],
    thresholds: tuple[float, ...],
    faces: dict[str, GalleryFace],
    gallery: dict,
    audit_report: dict | None,
    model_version: str,
) -> tuple[dict, dict[str, list[dict]]]:
    failures = [
        {
            "bioguide": m.bioguide,
            "name": m.name,
            "reason": "photo not found" if m.photo is None else results[m.bioguide]["error"],
        }
        for m in members
        if m.photo is None or "error" in results[m.bioguide]
    ]
    probed = [m for m in members if m.photo is not None and "matches" in results[m.bioguide]]
    size = gallery["faces"]
    per_threshold = []
    pairs: dict[str, list[dict]] = {}
    for t in thresholds:
        name = f"similarity {t:g}"
        candidates = {m.bioguide: results[m.bioguide]["matches"][t] for m in probed}
        matched = [m for m in probed if candidates[m.bioguide]]
        counts = np.array([len(candidates[m.bioguide]) for m in probed], dtype=np.int64)
        total = int(counts.sum())
        by_source = Counter(faces[e].source for m in probed for _, e in candidates[m.bioguide])
        entry = {
            "name": name,
            "threshold": t,
            "members_probed": len(probed),
            "members_falsely_matched": Rate(len(matched), len(probed)).to_json(),
            "false_candidates": total,
            "false_candidates_per_probe": total / len(probed) if probed else 0.0,
            "false_candidates_per_probe_median": float(np.median(counts)) if len(counts) else 0.0,
            "false_candidates_per_probe_max": int(counts.max()) if len(counts) else 0,
            "false_candidates_by_gallery_source": dict(by_source),
            "searches_truncated_at_max_faces": int((counts >= MAX_FACES).sum()),
            "measured_fmr": Rate(total, len(probed) * size).to_json() if probed and size else None,
            "people_of_colour": {
                "among_members": _poc_share(probed),
                "among_falsely_matched": _poc_share(matched),
            },
            "by": {
                attribute: _breakdown(probed, candidates, attribute) for attribute in ("ethnicity", "gender", "party")
            },
            "expected": _expected(audit_report, t, size, len(probed)),
        }
        best = sorted(((max(candidates[m.bioguide]), m) for m in matched), key=lambda pair: pair[0][0], reverse=True)[
            :TOP_PAIRS
        ]
        entry["top_false_matches"] = [
            {
                "bioguide": m.bioguide,
                "member": m.name,
                "ethnicity": m.ethnicity,
                "similarity": similarity,
                "gallery": faces[external].label,
                "gallery_source": faces[external].source,
            }
            for (similarity, external), m in best
        ]
        pairs[name] = [
            {**shown, "probe_path": str(m.photo), "gallery_path": str(faces[external].path)}
            for shown, ((_, external), m) in zip(entry["top_false_matches"], best, strict=True)
        ]
        per_threshold.append(entry)
    report = {
        "report": "facegate ACLU-style experiment",
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "facegate_version": facegate.__version__,
        "model": {"version": model_version, "weights_sha256": weights_sha256(embedding_weights())},
        "method": METHOD,
        "person_of_colour_rule": POC_RULE,
        "max_faces": MAX_FACES,
        "probes": {"members": len(members), "probed": len(probed), "failures": failures},
        "gallery": gallery,
        "thresholds": per_threshold,
    }
    return report, pairs


def _poc_share(members: list[Member]) -> dict:
    known = [m for m in members if m.person_of_colour is not None]
    count = sum(bool(m.person_of_colour) for m in known)
    return {"count": count, "of": len(known), "share": count / len(known) if known else None}


def _breakdown(probed: list[Member], candidates: dict[str, list], attribute: str) -> dict:
    groups: dict[str, list[Member]] = {}
    for m in probed:
        groups.setdefault(getattr(m, attribute) or "unknown", []).append(m)
    return {
        group: {
            "members": len(people),
            "falsely_matched": Rate(sum(bool(candidates[m.bioguide]) for m in people), len(people)).to_json(),
            "false_candidates_per_probe": sum(len(candidates[m.bioguide]) for m in people) / len(people),
        }
        for group, people in sorted(groups.items())
    }


def _expected(audit_report: dict | None, threshold: float, gallery_size: int, probed: int) -> dict | None:
    """What the audit's overall FMR at this threshold predicts for a gallery of this size."""
    if audit_report is None:
        return None
    point = next(
        (
            p
            for p in audit_report.get("operating_points", [])
            if p.get("kind") == "similarity" and abs(p["similarity"] - threshold) < 1e-9
        ),
        None,
    )
    if point is not None:
        fmr, source = point["fmr"]["rate"], f"operating point {point['name']}"
    else:
        curves = audit_report["curves"]
        fmr = float(np.interp(threshold, curves["similarity"], curves["fmr"]))
        source = "interpolated from the audit's FMR curve"
    return {
        "audit_dataset": audit_report["dataset"]["spec"],
        "audit_fmr": fmr,
        "fmr_source": source,
        "false_candidates_per_probe": fmr * gallery_size,
        "fpir": fpir(fmr, gallery_size),
        "members_falsely_matched": probed * fpir(fmr, gallery_size),
    }


def audit_report_of(path: Path) -> dict:
    """Read an audit's report.json for the expected counts."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExperimentError(f"--audit {path}: not a readable report.json ({exc})") from None
    if "operating_points" not in report or "curves" not in report:
        raise ExperimentError(f"--audit {path}: not a facegate fairness audit report.json")
    return report
