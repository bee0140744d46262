"""``S3Object`` images: read from the object sources an operator registered for an organisation.

In Rekognition's model an image is ``Bytes`` or ``S3Object`` {Bucket, Name, Version}. facegate maps a Bucket to a
source the operator added for the caller's organisation (``facegate sources add``): a local directory ("dir")
or a bucket on an S3-compatible object store ("s3", read with botocore under the source's own credentials).
An object's Name cannot leave its source (no ``..``, no absolute path, no symlink followed), a Version must
equal the object's SHA-256 (or an S3 VersionId), and another organisation's Bucket answers as a missing one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from facegate.errors import ImageTooLargeException, InvalidParameterException, InvalidS3ObjectException
from facegate.store import ObjectSource, SourceStore


class Sealer(Protocol):
    """What seals a source's secret key (the key ring that seals access keys)."""

    def seal(self, secret: str) -> bytes: ...
    def unseal(self, sealed: bytes) -> str | None: ...


IMAGE_MEMBERS = ("Image", "SourceImage", "TargetImage")
# Rekognition's limit for an image in S3 (Bytes are limited by the request size instead).
MAX_OBJECT_BYTES = 15 * 1024 * 1024
MAX_VIDEO_BYTES = 10 * 1024**3
# S3's bucket naming rules, which every SDK already enforces client-side for real buckets.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# One message for a missing bucket, another organisation's bucket and a missing object: none tells them apart.
_NOT_FOUND = "Unable to get object metadata from S3. Check object key, region and/or access permissions."
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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


def s3_source(
    owner: str,
    name: str,
    endpoint_url: str,
    *,
    bucket: str | None,
    region: str,
    access_key_id: str,
    secret_access_key: str,
    sealer: Sealer,
) -> ObjectSource:
    """An "s3" source: ``bucket`` (default ``name``) at ``endpoint_url``, read with these credentials."""
    if not re.match(r"^https?://[^\s/@]+(/|$)", endpoint_url):
        raise InvalidParameterException(
            f"Endpoint {endpoint_url!r} is not an http(s) URL without credentials in it (give those as options)."
        )
    if not access_key_id or not secret_access_key:
        raise InvalidParameterException("An S3 source needs an access key id and a secret access key.")
    location = {"endpoint": endpoint_url, "bucket": bucket or name, "region": region, "access_key_id": access_key_id}
    return ObjectSource(
        owner, check_source_name(name), "s3", json.dumps(location), time.time(), sealer.seal(secret_access_key)
    )


def resolve_images(sources: SourceStore, owner: str, params: dict, sealer: Sealer) -> dict:
    """``params`` with each image member given as S3Object replaced by its Bytes, read from ``owner``'s source.
    Returns ``params`` itself when no member is an S3Object."""
    resolved = None
    for member in IMAGE_MEMBERS:
        image = params.get(member)
        if isinstance(image, dict) and "S3Object" in image:
            if "Bytes" in image:
                raise InvalidParameterException(f"{member} takes Bytes or S3Object, not both.")
            resolved = resolved or dict(params)
            resolved[member] = {"Bytes": read_object(sources, owner, sealer, image["S3Object"], member)}
    return resolved or params


def read_object(sources: SourceStore, owner: str, sealer: Sealer, s3_object: object, member: str = "Image") -> bytes:
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
    _check_key(name, member)
    if source.kind == "dir":
        data = _read_in_directory(Path(source.location), name, member)
    elif source.kind == "s3":
        data, object_version = _read_from_s3(source, name, version, sealer, member)
        if version is not None and version == object_version:
            return data
    else:
        raise InvalidS3ObjectException(f"Source {bucket} is of kind {source.kind!r}, which facegate cannot read.")
    if version is not None and version != hashlib.sha256(data).hexdigest():
        raise InvalidS3ObjectException(
            f"{member}.S3Object.Version {version!r} is not this object's version (its SHA-256)."
        )
    return data


def _check_key(name: str, member: str) -> None:
    if name.startswith("/") or "\0" in name or any(part in ("", ".", "..") for part in name.split("/")):
        raise InvalidS3ObjectException(
            f"{member}.S3Object.Name {name!r} is not an object key: no leading '/', empty, '.' or '..' parts."
        )


def _too_large(size: int, member: str) -> ImageTooLargeException:
    return ImageTooLargeException(
        f"{member}.S3Object is {size:,} bytes; images in S3 may be at most {MAX_OBJECT_BYTES:,} bytes."
    )


def _read_from_s3(
    source: ObjectSource, name: str, version: str | None, sealer: Sealer, member: str
) -> tuple[bytes, str | None]:
    """(the object's bytes, its VersionId) from the source's bucket. A Version that is not a SHA-256 is asked
    for as the object's VersionId; a SHA-256 is checked against the latest object's content by the caller."""
    from botocore.exceptions import BotoCoreError, ClientError

    client, request = _s3_request(source, name, version, sealer)
    try:
        head = client.head_object(**request)
        if head.get("ContentLength", 0) > MAX_OBJECT_BYTES:
            raise _too_large(head["ContentLength"], member)
        response = client.get_object(**request)
        data = response["Body"].read(MAX_OBJECT_BYTES + 1)
    except ClientError:
        if "VersionId" in request and _exists(client, request["Bucket"], name):
            raise InvalidS3ObjectException(f"{member}.S3Object.Version {version!r} is not a version of it.") from None
        raise InvalidS3ObjectException(_NOT_FOUND) from None
    except BotoCoreError as exc:
        raise InvalidS3ObjectException(f"Source {source.name} could not be read: {type(exc).__name__}.") from None
    if len(data) > MAX_OBJECT_BYTES:
        raise _too_large(len(data), member)
    return data, response.get("VersionId")


def _s3_request(source: ObjectSource, name: str, version: str | None, sealer: Sealer) -> tuple[Any, dict]:
    """A client for the source's endpoint under its unsealed credentials, and the request naming the object (a
    Version that is not a SHA-256 is asked for as a VersionId; a SHA-256 is checked against the content)."""
    where = json.loads(source.location)
    secret = sealer.unseal(source.sealed_secret or b"")
    if secret is None:
        raise InvalidS3ObjectException(f"The credentials of source {source.name} cannot be unsealed on this server.")
    request = {"Bucket": where["bucket"], "Key": name}
    if version is not None and not _SHA256.fullmatch(version):
        request["VersionId"] = version
    return _s3_client(where["endpoint"], where["region"], where["access_key_id"], secret), request


@functools.lru_cache(maxsize=64)
def _s3_client(endpoint: str, region: str, access_key_id: str, secret: str):  # a botocore S3 client
    """One client per source's endpoint and credentials, reused across requests (botocore clients are
    thread-safe; making one loads the S3 service model, which is slow)."""
    import botocore.session
    from botocore.config import Config

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret,
        config=Config(connect_timeout=5, read_timeout=20, retries={"max_attempts": 2}, s3={"addressing_style": "path"}),
    )


def _exists(client, bucket: str, key: str) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except (ClientError, BotoCoreError):
        return False


def _read_in_directory(root: Path, name: str, member: str) -> bytes:
    """The bytes of ``name`` in the source's directory (see ``_open_in_directory``)."""
    fd = _open_in_directory(root, name)
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > MAX_OBJECT_BYTES:
            raise _too_large(size, member)
        data = fh.read(MAX_OBJECT_BYTES + 1)
    if len(data) > MAX_OBJECT_BYTES:
        raise _too_large(len(data), member)
    return data


def _open_in_directory(root: Path, name: str) -> int:
    """A descriptor of regular file ``name`` opened one component at a time from the source's root, never
    following a symlink and never blocking on something that is not a regular file, so that nothing swapped in
    meanwhile can lead outside."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    opened: list[int] = []
    try:
        opened.append(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        *folders, leaf = name.split("/")
        for folder in folders:
            opened.append(os.open(folder, flags | os.O_DIRECTORY, dir_fd=opened[-1]))
        opened.append(os.open(leaf, flags | os.O_NONBLOCK, dir_fd=opened[-1]))
        if not stat.S_ISREG(os.fstat(opened[-1]).st_mode):
            raise InvalidS3ObjectException(_NOT_FOUND)
        return opened.pop()
    except OSError:  # missing, a symlink (ELOOP), a file where a folder should be
        raise InvalidS3ObjectException(_NOT_FOUND) from None
    finally:
        for fd in opened:
            os.close(fd)


class VideoObjects:
    """Where a video job's ``Video`` is read from: an S3Object of the owner's sources, or (for the local
    operator only: the CLI and the Python API) a file on this machine, ``{"File": path}``."""

    def __init__(self, sources: SourceStore, sealer: Sealer, scratch: Path) -> None:
        self.sources = sources
        self.sealer = sealer
        self.scratch = Path(scratch)  # where objects from S3 are downloaded while a job reads them

    def size(self, owner: str, video: dict, *, local: bool = False) -> int:
        """The video's size in bytes; InvalidS3ObjectException when it cannot be found."""
        if "File" in video:
            return self._local_file(video, local).stat().st_size
        source, name, version = self._locate(owner, video)
        if source.kind == "dir":
            fd = _open_in_directory(Path(source.location), name)
            try:
                return os.fstat(fd).st_size
            finally:
                os.close(fd)
        client, request = _s3_request(source, name, version, self.sealer)
        return int(self._s3_call(client.head_object, request, name, version)["ContentLength"])

    def duration_ms(self, owner: str, video: dict, *, local: bool = False) -> int | None:
        """The duration the video's header declares, where it can be read in place (a file, a directory source);
        None for an S3 source (read when the job downloads it) or a header that cannot be read (the job will
        fail with the reason)."""
        from facegate.engine.video import VideoError, VideoFile

        if "File" not in video and self._locate(owner, video)[0].kind != "dir":
            return None
        try:
            with self.open(owner, video, local=local, verify=False) as path, VideoFile(path, max_ms=None) as opened:
                return opened.metadata.duration_ms
        except VideoError:
            return None

    @contextlib.contextmanager
    def open(self, owner: str, video: dict, *, local: bool = False, verify: bool = True) -> Iterator[str]:
        """A path the video can be opened at for as long as the context lasts (a downloaded copy for S3, a
        descriptor's /proc path for a directory source, so the file read is the one checked). ``verify``: check
        a Version that is a SHA-256 against the content (reads it all)."""
        if "File" in video:
            yield str(self._local_file(video, local))
            return
        source, name, version = self._locate(owner, video)
        if source.kind == "dir":
            fd = _open_in_directory(Path(source.location), name)
            try:
                if verify and version is not None and version != _file_sha256(fd):
                    raise InvalidS3ObjectException(f"Video.S3Object.Version {version!r} is not this object's SHA-256.")
                yield f"/proc/self/fd/{fd}"
            finally:
                os.close(fd)
            return
        client, request = _s3_request(source, name, version, self.sealer)
        self.scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.scratch, suffix=".video") as copy:
            body = self._s3_call(client.get_object, request, name, version)["Body"]
            digest = hashlib.sha256()
            written = 0
            for chunk in iter(lambda: body.read(1 << 20), b""):
                written += len(chunk)
                if written > MAX_VIDEO_BYTES:  # replaced by a larger object since Start: never fill the disk
                    raise InvalidS3ObjectException(f"Video.S3Object is over {MAX_VIDEO_BYTES:,} bytes.")
                copy.write(chunk)
                digest.update(chunk)
            copy.flush()
            if version is not None and _SHA256.fullmatch(version) and version != digest.hexdigest():
                raise InvalidS3ObjectException(f"Video.S3Object.Version {version!r} is not this object's SHA-256.")
            yield copy.name

    def _locate(self, owner: str, video: dict) -> tuple[ObjectSource, str, str | None]:
        s3_object = video.get("S3Object")
        if not isinstance(s3_object, dict):
            raise InvalidS3ObjectException("Video needs an S3Object with Bucket and Name.")
        bucket, name, version = s3_object.get("Bucket"), s3_object.get("Name"), s3_object.get("Version")
        if not isinstance(bucket, str) or not isinstance(name, str) or not bucket or not name:
            raise InvalidS3ObjectException("Video.S3Object needs a Bucket and a Name.")
        source = self.sources.get_source(owner, bucket)
        if source is None:
            raise InvalidS3ObjectException(_NOT_FOUND)
        _check_key(name, "Video")
        if source.kind not in ("dir", "s3"):
            raise InvalidS3ObjectException(f"Source {bucket} is of kind {source.kind!r}, which facegate cannot read.")
        return source, name, version

    @staticmethod
    def _s3_call(call: Any, request: dict, name: str, version: str | None) -> dict:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call(**request)
        except ClientError:
            raise InvalidS3ObjectException(_NOT_FOUND) from None
        except BotoCoreError as exc:
            raise InvalidS3ObjectException(f"The video's source could not be read: {type(exc).__name__}.") from None

    @staticmethod
    def _local_file(video: dict, local: bool) -> Path:
        if not local:
            raise InvalidS3ObjectException("Video.File is for the local operator: send Video.S3Object.")
        path = Path(str(video["File"]))
        if not path.is_absolute() or not path.is_file():
            raise InvalidS3ObjectException(f"Video.File {str(path)!r} is not an existing file given by absolute path.")
        return path


def _file_sha256(fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()
