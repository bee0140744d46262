"""Face datasets named by a spec (``lfw:DIR``, ``utkface:DIR``, ``congress:DIR``, ``csv:LABELS.csv``).

A dataset is a list of records (image path, identity or None, demographic labels) plus what the audit needs to
read it honestly: where the labels came from and which label combinations to report groups by.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("lfw", "utkface", "congress", "csv")
SPEC_HELP = "lfw:DIR, utkface:DIR, congress:DIR or csv:LABELS.csv"

UTKFACE_RACES = {"0": "White", "1": "Black", "2": "Asian", "3": "Indian", "4": "Others"}
UTKFACE_GENDERS = {"0": "male", "1": "female"}
AGE_BANDS = ((0, "0-17"), (18, "18-29"), (30, "30-44"), (45, "45-59"), (60, "60+"))


class DatasetError(ValueError):
    """A dataset spec or its files are not usable; the message names the input and what would be accepted."""


@dataclass(frozen=True)
class Record:
    """One image: ``identity`` is None where the dataset has no identity labels (every pair is then an
    impostor pair); a label missing from ``labels`` is unknown and its record is left out of that grouping."""

    path: Path
    identity: str | None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Dataset:
    spec: str
    kind: str
    root: Path
    records: list[Record]
    label_source: str  # how the labels were obtained, printed in the report
    dimensions: tuple[tuple[str, ...], ...]  # label combinations to report groups by, e.g. (race, sex)

    @property
    def has_identities(self) -> bool:
        return any(r.identity is not None for r in self.records)

    def group_of(self, record: Record, dimension: tuple[str, ...]) -> str | None:
        """The record's group in ``dimension`` ("Asian / female"), or None if any of its labels is unknown."""
        values = [record.labels.get(key) for key in dimension]
        return None if any(v is None for v in values) else " / ".join(values)  # type: ignore[misc]

    def relative(self, record: Record) -> str:
        try:
            return record.path.relative_to(self.root).as_posix()
        except ValueError:
            return record.path.as_posix()


def dimension_name(dimension: tuple[str, ...]) -> str:
    return " × ".join(dimension)


def load_dataset(spec: str) -> Dataset:
    """Parse a spec and read its labels (not its images)."""
    kind, sep, location = spec.partition(":")
    if not sep or not location or kind not in KINDS:
        raise DatasetError(f"dataset {spec!r} is not a dataset spec; use {SPEC_HELP}")
    path = Path(location).expanduser()
    if kind == "csv":
        if not path.is_file():
            raise DatasetError(f"dataset {spec!r}: {path} is not a file; csv: takes a labels CSV with a path column")
    elif not path.is_dir():
        raise DatasetError(f"dataset {spec!r}: {path} is not a folder; {kind}: takes the dataset's folder")
    loader: Callable[[str, Path], Dataset] = {
        "lfw": _lfw,
        "utkface": _utkface,
        "congress": _congress,
        "csv": _csv,
    }[kind]
    dataset = loader(spec, path)
    if not dataset.records:
        raise DatasetError(f"dataset {spec!r} has no images")
    missing = [r.path for r in dataset.records if not r.path.is_file()]
    if missing:
        raise DatasetError(
            f"dataset {spec!r}: {len(missing)} listed images are missing, e.g. {missing[0]}; "
            "paths are relative to the dataset's folder (csv: to the CSV's folder)"
        )
    return dataset


def age_band(age: str | int) -> str:
    years = int(age)
    band = AGE_BANDS[0][1]
    for start, name in AGE_BANDS:
        if years >= start:
            band = name
    return band


def _read_csv(path: Path, spec: str, required: Iterable[str]) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        absent = [c for c in required if c not in columns]
        if absent:
            raise DatasetError(
                f"dataset {spec!r}: {path} lacks the column(s) {', '.join(absent)} (it has: {', '.join(columns)})"
            )
        return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]


def _lfw(spec: str, root: Path) -> Dataset:
    manifest = root / "manifest.csv"
    if manifest.is_file():
        rows = _read_csv(manifest, spec, ("path", "identity"))
        entries = [(root / row["path"], row["identity"]) for row in rows]
    else:
        images = root / "images" if (root / "images").is_dir() else root
        entries = [(p, p.parent.name) for p in sorted(images.glob("*/*.jpg"))]
    genders: dict[str, str] = {}
    source = "identities from LFW's folder names"
    labels_file = root / "lfw_identity_gender_labels.csv"
    if labels_file.is_file():
        genders = {
            row["identity"]: row["gender"]
            for row in _read_csv(labels_file, spec, ("identity", "gender"))
            if row["gender"]
        }
        labelled = len({identity for _, identity in entries if identity in genders})
        source += f"; gender for {labelled:,} identities from {labels_file.name} (hand-sorted folders, noisy)"
    records = [
        Record(path, identity, {"gender": genders[identity]} if identity in genders else {})
        for path, identity in entries
    ]
    return Dataset(spec, "lfw", root, records, source, (("gender",),) if genders else ())


def _utkface(spec: str, root: Path) -> Dataset:
    labels = root / "labels.csv"
    records = []
    if labels.is_file():
        for row in _read_csv(labels, spec, ("path", "age", "gender_name", "race_name")):
            tags = {"race_name": row["race_name"], "gender_name": row["gender_name"], "age_band": age_band(row["age"])}
            records.append(Record(root / row["path"], None, tags))
        source = "UTKFace's own race, gender and age estimates (labels.csv; noisy)"
    else:
        images = root / "images" if (root / "images").is_dir() else root
        for path in sorted(images.glob("*.jpg")):
            parts = path.name.split("_")
            if len(parts) < 4 or parts[2] not in UTKFACE_RACES or parts[1] not in UTKFACE_GENDERS:
                continue  # UTKFace ships a few files whose names lack a label
            tags = {
                "race_name": UTKFACE_RACES[parts[2]],
                "gender_name": UTKFACE_GENDERS[parts[1]],
                "age_band": age_band(parts[0]),
            }
            records.append(Record(path, None, tags))
        source = "UTKFace's own race, gender and age estimates (from file names; noisy)"
    dimensions = (("race_name",), ("gender_name",), ("age_band",), ("race_name", "gender_name"))
    return Dataset(spec, "utkface", root, records, source, dimensions)


def _congress(spec: str, root: Path) -> Dataset:
    members = root / "members.csv"
    if not members.is_file():
        raise DatasetError(f"dataset {spec!r}: {members} not found; congress: takes the congress117 folder")
    rows = _read_csv(members, spec, ("bioguide", "photo_file", "ethnicity", "gender", "party"))
    records = [
        Record(
            root / row["photo_file"], row["bioguide"], {k: row[k] for k in ("ethnicity", "gender", "party") if row[k]}
        )
        for row in rows
    ]
    source = "members.csv: gender, party and ethnicity as maintained by volunteers (CivilServiceUSA); aggregate use"
    dimensions = (("ethnicity",), ("gender",), ("party",), ("ethnicity", "gender"))
    return Dataset(spec, "congress", root, records, source, dimensions)


def _csv(spec: str, path: Path) -> Dataset:
    rows = _read_csv(path, spec, ("path",))
    base = path.parent
    label_columns = [c for c in (rows[0] if rows else {}) if c not in ("path", "identity")]
    records = [
        Record(base / row["path"], row.get("identity") or None, {c: row[c] for c in label_columns if row.get(c)})
        for row in rows
    ]
    dimensions = tuple((c,) for c in label_columns)
    if len(label_columns) >= 2:
        dimensions += (tuple(label_columns[:2]),)
    return Dataset(spec, "csv", base, records, f"columns of {path.name}", dimensions)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def images_digest(dataset: Dataset, file_hashes: list[str]) -> str:
    """A hash of the images' content and order: the key under which their embeddings are cached."""
    digest = hashlib.sha256()
    for record, file_hash in zip(dataset.records, file_hashes, strict=True):
        digest.update(f"{dataset.relative(record)}\0{file_hash}\n".encode())
    return digest.hexdigest()


def dataset_digest(dataset: Dataset, file_hashes: list[str]) -> str:
    """A hash of images, identities and labels: names exactly the data a report was computed on."""
    digest = hashlib.sha256()
    for record, file_hash in zip(dataset.records, file_hashes, strict=True):
        line = [dataset.relative(record), file_hash, record.identity, sorted(record.labels.items())]
        digest.update(json.dumps(line).encode() + b"\n")
    return digest.hexdigest()
