"""``S3Object`` images: read from the object sources an operator registered for an organisation.

In Rekognition's model an image is ``Bytes`` or ``S3Object`` {Bucket, Name, Version}. facegate maps a Bucket to a
source the operator added for the caller's organisation (``facegate sources add``); a source of "dir" kind is a
local directory. An object's Name cannot leave its source (no ``..``, no absolute path, no symlink out of it), a
Version must equal the object's SHA-256, and a Bucket of another organisation answers exactly as one that does
not exist.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import time
from pathlib import Path

from facegate.errors import ImageTooLargeException, InvalidParameterException, InvalidS3ObjectException
from facegate.store import ObjectSource, SourceStore

IMAGE_MEMBERS = ("Image", "SourceImage", "TargetImage")
# Rekognition's limit for an image in S3 (Bytes are limited by the request size instead).
MAX_OBJECT_BYTES = 15 * 1024 * 1024
# S3's bucket naming rules, which every SDK already enforces client-side for real buckets.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# One message for a missing bucket, another organisation's bucket and a missing object: none tells them apart.
_NOT_FOUND = "Unable to get object metadata from S3. Check object key, region and/or access permissions."


def check_source_name(name: str) -> str:
    if not _BUCKET.fullmatch(name) or ".." in name:
        raise InvalidParameterException(
            f"Source name {name!r} is not a valid bucket name: 3-63 lowercase letters, digits, dots and hyphens, "
            "beginning and ending with a letter or digit."
        )
    return name


def directory_source(owner: str, name: str, directory: str | os.PathLike) -> ObjectSource:
    """A "dir" source over an existing directory (stored as its resolved absolute path)."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise InvalidParameterException(f"Source directory {str(root)!r} does not exist or is not a directory.")
    return ObjectSource(owner, check_source_name(name), "dir", str(root.resolve()), time.time())


def resolve_images(sources: SourceStore, owner: str, params: dict) -> dict:
    """``params`` with each image member given as S3Object replaced by its Bytes, read from ``owner``'s source.
    Returns ``params`` itself when no member is an S3Object."""
    resolved = None
    for member in IMAGE_MEMBERS:
        image = params.get(member)
        if isinstance(image, dict) and "S3Object" in image:
            if "Bytes" in image:
                raise InvalidParameterException(f"{member} takes Bytes or S3Object, not both.")
            resolved = resolved or dict(params)
            resolved[member] = {"Bytes": read_object(sources, owner, image["S3Object"], member)}
    return resolved or params


def read_object(sources: SourceStore, owner: str, s3_object: object, member: str = "Image") -> bytes:
    """The bytes of one S3Object of ``owner``'s, or Rekognition's error naming what is wrong."""
    if not isinstance(s3_object, dict):
        raise InvalidS3ObjectException(f"{member}.S3Object must be an object with Bucket and Name.")
    bucket, name, version = s3_object.get("Bucket"), s3_object.get("Name"), s3_object.get("Version")
    if not isinstance(bucket, str) or not bucket or not isinstance(name, str) or not name:
        raise InvalidS3ObjectException(f"{member}.S3Object needs a Bucket and a Name.")
    if version is not None and not isinstance(version, str):
        raise InvalidS3ObjectException(f"{member}.S3Object.Version must be a string.")
    source = sources.get_source(owner, bucket)
    if source is None:
        raise InvalidS3ObjectException(_NOT_FOUND)
    if source.kind != "dir":
        raise InvalidS3ObjectException(f"Source {bucket} is of kind {source.kind!r}, which facegate cannot read.")
    data = _read_in_directory(Path(source.location), name, member)
    if version is not None and version != hashlib.sha256(data).hexdigest():
        raise InvalidS3ObjectException(
            f"{member}.S3Object.Version {version!r} is not this object's version (its SHA-256)."
        )
    return data


def _read_in_directory(root: Path, name: str, member: str) -> bytes:
    parts = name.split("/")
    if name.startswith("/") or "\0" in name or any(part in ("", ".", "..") for part in parts):
        raise InvalidS3ObjectException(
            f"{member}.S3Object.Name {name!r} is not an object key: no leading '/', empty, '.' or '..' parts."
        )
    try:
        real_root = root.resolve(strict=True)
        path = (real_root / name).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        raise InvalidS3ObjectException(_NOT_FOUND) from None
    if real_root not in path.parents:
        raise InvalidS3ObjectException(_NOT_FOUND)  # a symlink out of the source: as if it were not there
    try:
        with path.open("rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise InvalidS3ObjectException(_NOT_FOUND)
            if info.st_size > MAX_OBJECT_BYTES:
                raise ImageTooLargeException(
                    f"{member}.S3Object is {info.st_size:,} bytes; images in S3 may be at most "
                    f"{MAX_OBJECT_BYTES:,} bytes."
                )
            return fh.read(MAX_OBJECT_BYTES + 1)[:MAX_OBJECT_BYTES]
    except OSError:
        raise InvalidS3ObjectException(_NOT_FOUND) from None
