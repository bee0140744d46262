"""Hostile input replayed against a real `facegate serve` on loopback: what each class of bad request gets back.

Starts `facegate serve` on a free 127.0.0.1 port with a fresh data directory and client keys for two
organisations, sets up one collection of real LFW faces (and a user) through boto3, then sends each class of
hostile request over raw sockets, signed with botocore's SigV4Auth where the class needs a valid signature:

     1 malformed JSON bodies              6 corrupt images and decompression-bomb-like images
     2 members of the wrong type          7 garbled Authorization, partially signed requests, foreign regions
     3 lone surrogates in string members  8 bodies over 16 MiB (Content-Length and chunked), short bodies
     4 NaN / ±Infinity / 1e999 thresholds 9 slow clients trickling a body at 1 byte/s
     5 invalid base64 in Image.Bytes     10 HEAD/OPTIONS/GET, unknown paths, the admin API with bad auth
                                          (10b: requests the HTTP parser itself must refuse)

Each class sends --per-class requests cycling through its variants (every variant at least once). For every
answer it records the status, the error type (`__type`, else `x-amzn-ErrorType`), whether a non-2xx answer is
AWS-shaped (a JSON object with `__type` and `Message`/`message`, and an `x-amzn-ErrorType` header; for HEAD,
which has no body, the header alone), and whether it was audited: its `x-amzn-RequestId` appears in an audit
record (`audit.sqlite3`, table `entries`), or, for authentication failures, a record whose event name contains
"unauthenticated" carries a `count` that covers it (a server that aggregates such failures per minute). The
audit log is read after the server has been stopped, so summaries flushed at shutdown count. Answers without
a request id cannot be matched and count as unaudited.

    python bench/hostile.py [--per-class 20] [--slow-seconds 15] [--slow-clients 20] [--region us-east-1]
                            [--workers 1] [--max-seconds 240] [--json]

Network rule: it only connects to 127.0.0.1; every loop is bounded in count and in time and it stops by
itself. It exits 0 whatever it finds (it is a bench), and non-zero only when the setup fails.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import io
import itertools
import json
import os
import re
import select
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from unittest import mock

import boto3
import botocore.auth
import numpy as np
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402

HOST = "127.0.0.1"
AMZ_JSON = "application/x-amz-json-1.1"
TARGET = "RekognitionService."
ADMIN_SERVICE = "facegate-admin"
MAX_BODY = 16 * 1024 * 1024
REQUEST_TIMEOUT = 30.0
STALL_TIMEOUT = 15.0  # how long a request with a body shorter than its Content-Length waits for an answer
RAW = "\x00raw\x00"  # placeholder replaced by raw JSON text that json.dumps will not write
AUTH_ERRORS = {
    "IncompleteSignatureException",
    "InvalidSignatureException",
    "UnrecognizedClientException",
    "MissingAuthenticationTokenException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
}
UUID = re.compile(rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclass
class Answer:
    """What came back on one connection: a parsed HTTP response, or how the exchange ended without one."""

    status: int | None
    headers: dict[str, str]
    body: bytes
    ended: str
    seconds: float


@dataclass
class Outcome:
    cls: str
    variant: str
    status: int | None
    error_type: str
    shaped: bool | None
    request_id: str | None
    body_head: str
    ended: str
    seconds: float
    audited: bool | None = None


def outcome_of(cls: str, variant: str, answer: Answer, head_only: bool = False) -> Outcome:
    error_type, shaped = "", None
    if answer.status is not None:
        body = None
        with contextlib.suppress(ValueError):
            body = json.loads(answer.body)
        header_type = answer.headers.get("x-amzn-errortype", "")
        typed = isinstance(body, dict) and isinstance(body.get("__type"), str)
        error_type = body["__type"] if typed else header_type
        if not 200 <= answer.status < 300:
            json_shaped = (
                isinstance(body, dict) and "__type" in body and ("Message" in body or "message" in body)
            ) or (head_only and not answer.body)
            shaped = bool(json_shaped and header_type)
    return Outcome(
        cls=cls,
        variant=variant,
        status=answer.status,
        error_type=error_type or "-",
        shaped=shaped,
        request_id=answer.headers.get("x-amzn-requestid"),
        body_head=repr(answer.body[:80])[2:-1] if answer.status is not None else answer.ended,
        ended=answer.ended,
        seconds=answer.seconds,
    )


def parse_response(raw: bytes, head_only: bool, closed: bool) -> tuple[int, dict[str, str], bytes] | None:
    """(status, lower-cased headers, body) once ``raw`` holds a whole response; None while it does not."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = raw[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    status = int(parts[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    rest = raw[end + 4 :]
    if head_only or status in (204, 304) or 100 <= status < 200:
        return status, headers, b""
    if headers.get("content-length", "").isdigit():
        length = int(headers["content-length"])
        return (status, headers, rest[:length]) if len(rest) >= length or closed else None
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = dechunk(rest)
        if body is None:
            return (status, headers, rest) if closed else None
        return status, headers, body
    return (status, headers, rest) if closed else None


def dechunk(data: bytes) -> bytes | None:
    out, pos = [], 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(data[pos:eol].split(b";")[0], 16)
        except ValueError:
            return None
        if size == 0:
            return b"".join(out)
        start = eol + 2
        if len(data) < start + size + 2:
            return None
        out.append(data[start : start + size])
        pos = start + size + 2


def exchange(port: int, head: bytes, body: Iterable[bytes] = (), *, timeout: float = REQUEST_TIMEOUT, head_only=False):
    """Send ``head`` then the body pieces, stopping early if the server answers or hangs up; read its answer."""
    began = time.monotonic()
    deadline = began + timeout
    try:
        sock = socket.create_connection((HOST, port), timeout=5)
    except OSError as exc:
        return Answer(None, {}, b"", f"connect failed ({type(exc).__name__})", time.monotonic() - began)
    received, ended, closed = b"", "", False
    with sock:
        sock.setblocking(False)
        source: Iterator[bytes] = itertools.chain([head], body)
        pending: bytes | None = b""
        while True:
            if not pending:
                pending = next(source, None)
                if pending is None:
                    break
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                ended = f"no answer within {timeout:g} s (still sending)"
                break
            readable, writable, _ = select.select([sock], [sock], [], left)
            if readable:
                break  # answered (or hung up) before the whole request was sent
            if writable:
                try:
                    pending = pending[sock.send(pending) :]
                except OSError:
                    break
        while not ended:
            if parse_response(received, head_only, closed=False):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                ended = f"no answer within {timeout:g} s"
                break
            if not select.select([sock], [], [], left)[0]:
                continue
            try:
                data = sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                closed = True
                break
            received += data
    seconds = time.monotonic() - began
    parsed = parse_response(received, head_only, closed=True)
    if parsed:
        return Answer(*parsed, "answered", seconds)
    if not ended:
        ended = "closed without an answer" if closed or not received else "unparseable answer"
    return Answer(None, {}, received, ended, seconds)


def pieces(body: bytes, size: int = 1 << 18) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def chunked(body: bytes) -> Iterator[bytes]:
    for piece in pieces(body):
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


def raw_json(params: dict, token: str) -> bytes:
    """``params`` as JSON with every RAW placeholder (value or key) replaced by the JSON text ``token``."""
    return json.dumps(params).replace(json.dumps(RAW), token).encode()


@dataclass
class Target:
    """The running server and what the setup created in it."""

    port: int
    region: str
    org_a: dict
    org_b: dict
    face_ids: list[str] = field(default_factory=list)
    photo: bytes = b""

    @property
    def host(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def photo_b64(self) -> str:
        return base64.b64encode(self.photo).decode()

    def sign(
        self,
        operation: str | None,
        body: bytes,
        *,
        key: dict | None = None,
        secret: str | None = None,
        region: str | None = None,
        service: str = "rekognition",
        method: str = "POST",
        path: str = "/",
        when: datetime.datetime | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, str]:
        """Headers of a SigV4-signed request (Host is added by ``send``; botocore signs it from the URL)."""
        key = key or self.org_a
        signed = {"Content-Type": AMZ_JSON, **({"X-Amz-Target": TARGET + operation} if operation is not None else {})}
        if headers is not None:
            signed = dict(headers)
        request = AWSRequest(method=method, url=f"http://{self.host}{path}", data=body, headers=signed)
        credentials = Credentials(key["AccessKeyId"], secret or key["SecretAccessKey"])
        now = when or datetime.datetime.now(datetime.UTC)
        with mock.patch.object(botocore.auth, "get_current_datetime", return_value=now):
            SigV4Auth(credentials, service, self.region if region is None else region).add_auth(request)
        return dict(request.headers.items())

    def send(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes = b"",
        *,
        chunked_body: bool = False,
        content_length: int | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> Answer:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if chunked_body:
            lines.append("Transfer-Encoding: chunked")
        else:
            lines.append(f"Content-Length: {len(body) if content_length is None else content_length}")
        lines += ["Connection: close", "", ""]
        head = "\r\n".join(lines).encode("latin-1", "replace")
        stream = chunked(body) if chunked_body else pieces(body)
        return exchange(self.port, head, stream, timeout=timeout, head_only=method == "HEAD")

    def call(self, operation: str, body: bytes | dict, **sign_options) -> Answer:
        """A correctly signed Rekognition request with this body."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        return self.send("POST", "/", self.sign(operation, data, **sign_options), data)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def facegate_cli(home: Path, *args: str) -> str:
    env = {**os.environ, "FACEGATE_HOME": str(home)}
    result = subprocess.run([sys.executable, "-m", "facegate", *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"setup failed: facegate {' '.join(args)}: {result.stderr.strip()[-2000:]}")
    return result.stdout


def start_server(home: Path, port: int, workers: int, region: str, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "FACEGATE_HOME": str(home)}
    command = [sys.executable, "-m", "facegate", "serve", "--port", str(port), "--workers", str(workers)]
    if "--region" in facegate_cli(home, "serve", "--help"):  # servers before the region check accept any
        command += ["--region", region]
    log = log_path.open("w")
    process = subprocess.Popen(
        command,
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,  # so the worker processes can be stopped with it
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"setup failed: the server exited:\n{log_path.read_text()[-3000:]}")
        if healthz(port, timeout=1).status == 200:
            return process
        time.sleep(0.3)
    stop_server(process)
    sys.exit(f"setup failed: the server did not become healthy:\n{log_path.read_text()[-3000:]}")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def healthz(port: int, timeout: float = 5) -> Answer:
    head = f"GET /healthz HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode()
    return exchange(port, head, timeout=timeout)


def rss_kib(pid: int) -> int:
    """VmRSS of a process and all its descendants, in KiB."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


class PeakRss:
    """Samples the server's RSS twice a second on a thread until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, rss_kib(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def audit_bytes(home: Path) -> dict[str, int]:
    """Sizes of the audit database and of its write-ahead log (which holds recent entries until a checkpoint)."""
    files = {"db": home / "audit.sqlite3", "wal": home / "audit.sqlite3-wal"}
    return {name: path.stat().st_size if path.exists() else 0 for name, path in files.items()}


def audit_records(home: Path) -> list[bytes]:
    db = sqlite3.connect(f"file:{home / 'audit.sqlite3'}?mode=ro", uri=True, timeout=30)
    try:
        return [
            bytes(row[0]) if not isinstance(row[0], str) else row[0].encode()
            for row in db.execute("SELECT record FROM entries ORDER BY seq")
        ]
    finally:
        db.close()


def set_up(target: Target) -> None:
    """One collection of real faces, a user holding some of them, and a collection for the partial-signing probe."""
    rek = boto3.client(
        "rekognition",
        endpoint_url=f"http://{target.host}",
        region_name=target.region,
        aws_access_key_id=target.org_a["AccessKeyId"],
        aws_secret_access_key=target.org_a["SecretAccessKey"],
        config=Config(retries={"max_attempts": 3, "mode": "standard"}),
    )
    lfw = datasets.data_dir() / "lfw" / "images"
    blair, powell = (sorted((lfw / name).glob("*.jpg")) for name in ("Tony_Blair", "Colin_Powell"))
    if len(blair) < 3 or len(powell) < 2:
        sys.exit(f"setup failed: {lfw} lacks the LFW photos of Tony_Blair and Colin_Powell")
    photos = blair[:2] + powell[:2]
    target.photo = blair[2].read_bytes()
    try:
        rek.create_collection(CollectionId="bench")
        rek.create_collection(CollectionId="victim")
        for path in photos:
            records = rek.index_faces(
                CollectionId="bench", Image={"Bytes": path.read_bytes()}, ExternalImageId=path.stem
            )
            target.face_ids += [r["Face"]["FaceId"] for r in records["FaceRecords"]]
        if len(target.face_ids) < 2:
            sys.exit(f"setup failed: only {len(target.face_ids)} faces indexed from {len(photos)} LFW photos")
        rek.create_user(CollectionId="bench", UserId="bench-user")
        rek.associate_faces(CollectionId="bench", UserId="bench-user", FaceIds=target.face_ids[:2])
    except (ClientError, OSError) as exc:
        sys.exit(f"setup failed: {exc}")


def collection_exists(target: Target, collection: str) -> bool:
    answer = target.call("DescribeCollection", {"CollectionId": collection})
    return answer.status == 200


Variant = tuple[str, Callable[[], Answer]]


def malformed_json(t: Target) -> list[Variant]:
    deep = 100_000
    bodies = {
        "truncated object": b'{"CollectionId": "bench"',
        "{not json": b"{not json",
        "empty array": b"[]",
        "array of the object": b'[{"CollectionId": "bench"}]',
        "bare string": b'"bench"',
        "null": b"null",
        "bare number": b"42",
        f"{deep} nested arrays": b"[" * deep + b"]" * deep,
        f"{deep // 2} nested objects": b'{"a":' * (deep // 2) + b"1" + b"}" * (deep // 2),
        "5000-digit integer": b'{"CollectionId": "bench", "MaxFaces": 1' + b"0" * 5000 + b"}",
        "1e999 integer member": b'{"CollectionId": "bench", "MaxFaces": 1e999}',
        "30-digit integer": b'{"CollectionId": "bench", "MaxFaces": 123456789012345678901234567890}',
        "invalid UTF-8": b'{"CollectionId": "\xff\xfe"}',
        "UTF-8 BOM": b'\xef\xbb\xbf{"CollectionId": "bench"}',
        "trailing garbage": b'{"CollectionId": "bench"} xyz',
        "NUL in string": b'{"CollectionId": "ben\x00ch"}',
        "empty body": b"",
    }
    return [(name, lambda b=body: t.call("ListFaces", b)) for name, body in bodies.items()]


def wrong_types(t: Target) -> list[Variant]:
    image = {"Bytes": t.photo_b64}
    cases = [
        ("DescribeCollection", "CollectionId int", {"CollectionId": 123}),
        ("DescribeCollection", "CollectionId list", {"CollectionId": ["bench"]}),
        ("DescribeCollection", "CollectionId object", {"CollectionId": {"Id": "bench"}}),
        ("DescribeCollection", "CollectionId null", {"CollectionId": None}),
        ("DescribeCollection", "CollectionId bool", {"CollectionId": True}),
        ("SearchFaces", "MaxFaces string", {"CollectionId": "bench", "FaceId": t.face_ids[0], "MaxFaces": "5"}),
        ("SearchFaces", "MaxFaces float", {"CollectionId": "bench", "FaceId": t.face_ids[0], "MaxFaces": 5.5}),
        ("SearchFaces", "MaxFaces bool", {"CollectionId": "bench", "FaceId": t.face_ids[0], "MaxFaces": True}),
        (
            "SearchFaces",
            "FaceMatchThreshold string",
            {"CollectionId": "bench", "FaceId": t.face_ids[0], "FaceMatchThreshold": "80"},
        ),
        ("DetectFaces", "Image.Bytes number", {"Image": {"Bytes": 12345}}),
        ("DetectFaces", "Image.Bytes list", {"Image": {"Bytes": [1, 2, 3]}}),
        ("DetectFaces", "Image string", {"Image": t.photo_b64[:64]}),
        ("DetectFaces", "Image list", {"Image": [image]}),
        ("DetectFaces", "Attributes string", {"Image": image, "Attributes": "ALL"}),
        ("DeleteFaces", "FaceIds string", {"CollectionId": "bench", "FaceIds": "not-a-list"}),
        ("ListCollections", "MaxResults string", {"MaxResults": "10"}),
        ("ListCollections", "NextToken number", {"NextToken": 5}),
        ("CreateCollection", "Tags list", {"CollectionId": "bench-tags", "Tags": ["a", "b"]}),
    ]
    return [(f"{op} {name}", lambda op=op, body=body: t.call(op, body)) for op, name, body in cases]


def lone_surrogates(t: Target) -> list[Variant]:
    image = {"Bytes": t.photo_b64}
    face = t.face_ids[0]
    cases = [
        ("CreateCollection", "CollectionId", {"CollectionId": RAW}),
        ("DescribeCollection", "CollectionId", {"CollectionId": RAW}),
        ("CreateCollection", "Tags key", {"CollectionId": "bench-surrogate", "Tags": {RAW: "v"}}),
        ("IndexFaces", "ExternalImageId", {"CollectionId": "bench", "Image": image, "ExternalImageId": RAW}),
        ("ListFaces", "UserId", {"CollectionId": "bench", "UserId": RAW}),
        ("CreateUser", "UserId", {"CollectionId": "bench", "UserId": RAW}),
        ("CreateUser", "CollectionId", {"CollectionId": RAW, "UserId": "u"}),
        ("SearchFaces", "FaceId", {"CollectionId": "bench", "FaceId": RAW}),
        ("SearchUsers", "UserId", {"CollectionId": "bench", "UserId": RAW}),
        ("DeleteFaces", "FaceIds[0]", {"CollectionId": "bench", "FaceIds": [RAW]}),
        ("AssociateFaces", "UserId", {"CollectionId": "bench", "UserId": RAW, "FaceIds": [face]}),
        ("AssociateFaces", "FaceIds[0]", {"CollectionId": "bench", "UserId": "bench-user", "FaceIds": [RAW]}),
        ("DeleteUser", "UserId", {"CollectionId": "bench", "UserId": RAW}),
        ("ListCollections", "NextToken", {"NextToken": RAW}),
    ]
    tokens = ['"\\ud800"', '"a\\udfffb"']
    variants = []
    for i, (op, member, params) in enumerate(cases):
        token = tokens[i % len(tokens)]
        variants.append((f"{op} {member}={token}", lambda op=op, p=params, tok=token: t.call(op, raw_json(p, tok))))
    return variants


def non_finite_thresholds(t: Target) -> list[Variant]:
    image = {"Bytes": t.photo_b64}
    cases = [
        ("SearchFaces", "FaceMatchThreshold", {"CollectionId": "bench", "FaceId": t.face_ids[0]}),
        ("SearchFacesByImage", "FaceMatchThreshold", {"CollectionId": "bench", "Image": image}),
        ("CompareFaces", "SimilarityThreshold", {"SourceImage": image, "TargetImage": image}),
        ("SearchUsers", "UserMatchThreshold", {"CollectionId": "bench", "UserId": "bench-user"}),
        ("SearchUsersByImage", "UserMatchThreshold", {"CollectionId": "bench", "Image": image}),
    ]
    variants = []
    for token in ("NaN", "Infinity", "-Infinity", "1e999", "-1e999"):
        for op, member, params in cases:
            body = raw_json({**params, member: RAW}, token)
            variants.append((f"{op} {member}={token}", lambda op=op, b=body: t.call(op, b)))
    return variants


def bad_base64(t: Target) -> list[Variant]:
    real = t.photo_b64
    values = {
        "'!!!!'": "!!!!",
        "'abc' (bad padding)": "abc",
        "'YWJj====' (extra padding)": "YWJj====",
        "spaces inside": real[:40] + " " + real[40:],
        "MIME line breaks": "\n".join(real[i : i + 76] for i in range(0, len(real), 76)),
        "URL-safe alphabet": real.replace("+", "-").replace("/", "_") + "-_-_",
        "empty string": "",
        "non-ASCII": "ÿÿÿÿ",
        "data: URI prefix": "data:image/jpeg;base64," + real,
        "1 MiB of '*'": "*" * (1 << 20),
    }
    operations = [
        ("DetectFaces", lambda v: {"Image": {"Bytes": v}}),
        ("IndexFaces", lambda v: {"CollectionId": "bench", "Image": {"Bytes": v}}),
        ("SearchFacesByImage", lambda v: {"CollectionId": "bench", "Image": {"Bytes": v}}),
        ("CompareFaces", lambda v: {"SourceImage": {"Bytes": real}, "TargetImage": {"Bytes": v}}),
    ]
    variants = []
    for i, (name, value) in enumerate(values.items()):
        op, make = operations[i % len(operations)]
        body = make(value)
        variants.append((f"{op} {name}", lambda op=op, b=body: t.call(op, b)))
    return variants


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def hostile_images(photo: bytes) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    huge_jpeg = bytearray(photo)
    sof = next(i for i in range(len(photo) - 1) if photo[i] == 0xFF and photo[i + 1] in (0xC0, 0xC1, 0xC2))
    huge_jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)  # height, width
    huge_png = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
        + png_chunk(b"IEND", b"")
    )
    deep_png = io.BytesIO()
    Image.fromarray(np.zeros((6300, 6300), dtype=np.uint16)).save(deep_png, format="PNG")
    return {
        "truncated JPEG (half)": photo[: len(photo) // 2],
        "truncated JPEG (200 bytes)": photo[:200],
        "random bytes after JPEG magic": b"\xff\xd8\xff\xe0" + rng.bytes(20_000),
        "random bytes": rng.bytes(20_000),
        "JPEG declaring 65000x65000": bytes(huge_jpeg),
        "PNG declaring 100000x100000": huge_png,
        f"16-bit 6300x6300 PNG ({len(deep_png.getvalue()) // 1024} KiB)": deep_png.getvalue(),
    }


def corrupt_images(t: Target) -> list[Variant]:
    variants = []
    for name, data in hostile_images(t.photo).items():
        image = {"Bytes": base64.b64encode(data).decode()}
        variants.append((f"DetectFaces {name}", lambda b={"Image": image}: t.call("DetectFaces", b)))
        if "declaring" in name or "16-bit" in name or "half" in name:
            body = {"CollectionId": "bench", "Image": image}
            variants.append((f"IndexFaces {name}", lambda b=body: t.call("IndexFaces", b)))
    return variants


def garbled_auth(t: Target) -> list[Variant]:
    body = json.dumps({"CollectionId": "bench"}).encode()

    def with_auth(mutate: Callable[[str], str | None], **options) -> Callable[[], Answer]:
        def send() -> Answer:
            headers = t.sign("DescribeCollection", body, **options)
            value = mutate(headers.pop("Authorization"))
            if value is not None:
                headers["Authorization"] = value
            return t.send("POST", "/", headers, body)

        return send

    def after_signing(extra: dict[str, str], operation: str = "DescribeCollection", data: bytes = body):
        def send() -> Answer:
            return t.send("POST", "/", {**t.sign(operation, data), **extra}, data)

        return send

    def host_and_date_only() -> Answer:
        # Signs only host and x-amz-date (SigV4's minimum), then names another operation in the unsigned target.
        victim = json.dumps({"CollectionId": "victim"}).encode()
        headers = t.sign(None, victim, headers={})
        headers.update({"Content-Type": AMZ_JSON, "X-Amz-Target": TARGET + "DeleteCollection"})
        return t.send("POST", "/", headers, victim)

    def body_changed() -> Answer:
        headers = t.sign("DescribeCollection", body)
        return t.send("POST", "/", headers, json.dumps({"CollectionId": "victim"}).encode())

    def without_date() -> Answer:
        headers = t.sign("DescribeCollection", body)
        headers.pop("X-Amz-Date")
        return t.send("POST", "/", headers, body)

    search = json.dumps({"CollectionId": "bench", "FaceId": t.face_ids[0]}).encode()
    hour_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    variants: list[Variant] = [
        ("no Authorization", with_auth(lambda a: None)),
        ("Authorization: garbage", with_auth(lambda a: "garbage")),
        ("algorithm only", with_auth(lambda a: "AWS4-HMAC-SHA256")),
        ("Credential= empty", with_auth(lambda a: "AWS4-HMAC-SHA256 Credential=, SignedHeaders=, Signature=")),
        ("no Signature", with_auth(lambda a: a.split(", Signature=")[0])),
        ("no SignedHeaders", with_auth(lambda a: re.sub(r"SignedHeaders=[^,]*, ", "", a))),
        (
            "short Credential",
            with_auth(lambda a: re.sub(r"Credential=([^/]*)/[^,]*", r"Credential=\1/aws4_request", a)),
        ),
        ("wrong algorithm", with_auth(lambda a: a.replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA512"))),
        ("Bearer token", with_auth(lambda a: "Bearer abc.def.ghi")),
        ("Basic auth", with_auth(lambda a: "Basic " + base64.b64encode(b"user:pass").decode())),
        ("8 KiB garbage", with_auth(lambda a: "AWS4-HMAC-SHA256 " + "x" * 8192)),
        (
            "unknown access key",
            with_auth(lambda a: a, key={"AccessKeyId": "AKIANOSUCHKEY0000000", "SecretAccessKey": "x"}),
        ),
        ("wrong secret", with_auth(lambda a: a, secret="x" * 40)),
        ("X-Amz-Date an hour ago", with_auth(lambda a: a, when=hour_ago)),
        ("no X-Amz-Date", without_date),
        ("body changed after signing", body_changed),
        ("SignedHeaders=host;x-amz-date, target -> DeleteCollection", host_and_date_only),
        ("x-facegate-case added after signing", after_signing({"x-facegate-case": "CASE-1"}, "SearchFaces", search)),
        (
            "x-facegate-consent added after signing",
            after_signing({"x-facegate-consent": "CONSENT-1"}, "SearchFaces", search),
        ),
        ("org-b key on org-a's collection", with_auth(lambda a: a, key=t.org_b)),
        ("scoped to facegate-admin", with_auth(lambda a: a, service=ADMIN_SERVICE)),
    ]
    for region in ("eu-west-1", "xx-nowhere-9", "", "*"):
        if region != t.region:
            variants.append((f"scope region {region!r}", with_auth(lambda a: a, region=region)))
    return variants


def oversized(t: Target, count: int, deadline: float) -> list[Outcome]:
    """Bodies over the cap, and bodies shorter than their Content-Length; the stalled ones run concurrently."""
    big = json.dumps({"Image": {"Bytes": "A" * (MAX_BODY + (1 << 20))}}).encode()
    small = json.dumps({"CollectionId": "bench"}).encode()
    uploads = threading.Semaphore(3)  # at most three 17 MiB uploads at once on shared cores

    def over_length() -> Answer:
        with uploads:
            return t.send("POST", "/", t.sign("DetectFaces", big), big)

    def over_chunked() -> Answer:
        with uploads:
            return t.send("POST", "/", t.sign("DetectFaces", big), big, chunked_body=True)

    def short(declared: int) -> Callable[[], Answer]:
        def send() -> Answer:
            headers = t.sign("DescribeCollection", small)
            return t.send("POST", "/", headers, small[:10], content_length=declared, timeout=STALL_TIMEOUT)

        return send

    variants = [
        (f"{len(big) / 2**20:.0f} MiB with Content-Length", over_length),
        (f"{len(big) / 2**20:.0f} MiB chunked", over_chunked),
        (f"Content-Length {len(small)}, 10 bytes sent", short(len(small))),
        (f"Content-Length {MAX_BODY}, 10 bytes sent", short(MAX_BODY)),
    ]
    chosen = [variants[i % len(variants)] for i in range(max(count, len(variants)))]
    if time.monotonic() > deadline:
        return []
    with ThreadPoolExecutor(len(chosen)) as pool:
        answers = list(pool.map(lambda v: v[1](), chosen))
    return [outcome_of("8 oversized", name, answer) for (name, _), answer in zip(chosen, answers, strict=True)]


def slow_clients(t: Target, clients: int, seconds: float) -> tuple[list[Outcome], dict]:
    """``clients`` connections each trickling a signed body at one byte a second for ``seconds``."""
    body = json.dumps({"CollectionId": "bench", "Padding": "x" * int(seconds + 100)}).encode()
    headers = t.sign("DescribeCollection", body)
    lines = ["POST / HTTP/1.1", f"Host: {t.host}", *(f"{k}: {v}" for k, v in headers.items())]
    head = "\r\n".join([*lines, f"Content-Length: {len(body)}", "Connection: close", "", ""]).encode()
    began = time.monotonic()
    socks: dict[int, socket.socket] = {}
    state: dict[int, dict] = {}
    for i in range(clients):
        try:
            sock = socket.create_connection((HOST, t.port), timeout=5)
            sock.sendall(head)
            sock.setblocking(False)
            socks[i] = sock
            state[i] = {"sent": 0, "received": b"", "ended": None, "at": None}
        except OSError as exc:
            state[i] = {"sent": 0, "received": b"", "ended": f"connect failed ({type(exc).__name__})", "at": 0.0}
    probe: dict = {}
    while time.monotonic() - began < seconds and any(s["ended"] is None for s in state.values()):
        tick = time.monotonic()
        for i, sock in socks.items():
            s = state[i]
            if s["ended"] is not None:
                continue
            try:
                while select.select([sock], [], [], 0)[0]:
                    data = sock.recv(1 << 16)
                    if not data:
                        s["ended"], s["at"] = "closed by the server", time.monotonic() - began
                        break
                    s["received"] += data
                if s["ended"] is None and parse_response(s["received"], False, closed=False):
                    s["ended"], s["at"] = "answered", time.monotonic() - began
                if s["ended"] is None and s["sent"] < len(body):
                    sock.send(body[s["sent"] : s["sent"] + 1])
                    s["sent"] += 1
            except OSError:
                s["ended"], s["at"] = "reset by the server", time.monotonic() - began
        if not probe and tick - began >= seconds / 2:
            # Is the server still serving others while these connections are open?
            health = healthz(t.port, timeout=5)
            api = t.call("DescribeCollection", {"CollectionId": "bench"})
            probe = {
                "healthz_status": health.status,
                "healthz_seconds": round(health.seconds, 3),
                "api_status": api.status,
                "api_seconds": round(api.seconds, 3),
            }
        time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    outcomes = []
    for i in range(clients):
        s = state[i]
        parsed = parse_response(s["received"], False, closed=True) if s["received"] else None
        if parsed:
            answer = Answer(*parsed, f"{s['ended']} after {s['at']:.1f} s", s["at"] or 0.0)
        else:
            ended = s["ended"] or f"still open after {seconds:g} s"
            if s["at"] is not None:
                ended += f" after {s['at']:.1f} s"
            answer = Answer(None, {}, b"", ended, s["at"] if s["at"] is not None else seconds)
        outcomes.append(outcome_of("9 slow-clients", f"1 byte/s body ({s['sent']} bytes sent)", answer))
    for sock in socks.values():
        sock.close()
    return outcomes, probe


def parser_level(t: Target) -> list[Variant]:
    empty = b""

    def plain(method: str, path: str, headers: dict[str, str] | None = None) -> Callable[[], Answer]:
        return lambda: t.send(method, path, headers or {}, empty)

    def signed(method: str, path: str, operation: str | None, service: str = "rekognition", key=None, **options):
        def send() -> Answer:
            data = b"{}" if method == "POST" else empty
            headers = t.sign(operation, data, method=method, path=path, service=service, key=key, **options)
            return t.send(method, path, headers, data)

        return send

    stale = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    return [
        ("HEAD /", plain("HEAD", "/")),
        ("OPTIONS /", plain("OPTIONS", "/")),
        ("GET /", plain("GET", "/")),
        ("PUT /", plain("PUT", "/")),
        ("DELETE /", plain("DELETE", "/")),
        ("GET /nope", plain("GET", "/nope")),
        ("POST /nope signed", signed("POST", "/nope", "ListCollections")),
        ("GET /%ff%fe", plain("GET", "/%ff%fe")),
        ("GET 4000-char path", plain("GET", "/" + "a" * 4000)),
        ("POST / signed, no X-Amz-Target", signed("POST", "/", None)),
        ("POST / signed, target 'RekognitionService.'", signed("POST", "/", "")),
        ("admin GET /admin/organisations unsigned", plain("GET", "/admin/organisations")),
        ("admin POST /admin/keys garbage auth", plain("POST", "/admin/keys", {"Authorization": "garbage"})),
        ("admin POST /admin/keys with a client key", signed("POST", "/admin/keys", None, ADMIN_SERVICE)),
        (
            "admin POST /admin/organisations scoped to rekognition",
            signed("POST", "/admin/organisations", None, "rekognition"),
        ),
        ("admin GET /admin/policies stale date", signed("GET", "/admin/policies", None, ADMIN_SERVICE, when=stale)),
        ("admin POST /admin/audit/checkpoint unsigned", plain("POST", "/admin/audit/checkpoint")),
        ("admin POST /admin/usecases/x/revoke unsigned", plain("POST", "/admin/usecases/x/revoke")),
        ("admin OPTIONS /admin/keys", plain("OPTIONS", "/admin/keys")),
        ("admin DELETE /admin/keys", plain("DELETE", "/admin/keys")),
    ]


def raw_http(t: Target) -> list[Variant]:
    host = f"Host: {t.host}\r\n".encode()
    requests = {
        "request line 'GARBAGE'": b"GARBAGE\r\n\r\n",
        "HTTP/0.9 'GET /'": b"GET /\r\n\r\n",
        "header without a colon": b"POST / HTTP/1.1\r\n" + host + b"NoColonHere\r\nContent-Length: 0\r\n\r\n",
        "Content-Length and Transfer-Encoding": b"POST / HTTP/1.1\r\n"
        + host
        + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "two different Content-Lengths": b"POST / HTTP/1.1\r\n"
        + host
        + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        "Content-Length: -1": b"POST / HTTP/1.1\r\n" + host + b"Content-Length: -1\r\n\r\n",
        "Content-Length: abc": b"POST / HTTP/1.1\r\n" + host + b"Content-Length: abc\r\n\r\n",
        "Transfer-Encoding: gzip": b"POST / HTTP/1.1\r\n" + host + b"Transfer-Encoding: gzip\r\n\r\n{}",
        "64 KiB header": b"GET / HTTP/1.1\r\n" + host + b"X-Big: " + b"x" * 65536 + b"\r\n\r\n",
        "NUL in a header value": b"GET / HTTP/1.1\r\n" + host + b"X-Nul: a\x00b\r\n\r\n",
    }
    return [(name, lambda r=raw: exchange(t.port, r, timeout=STALL_TIMEOUT)) for name, raw in requests.items()]


def replay(cls: str, variants: list[Variant], count: int, deadline: float) -> list[Outcome]:
    outcomes = []
    for i in range(max(count, len(variants))):
        if time.monotonic() > deadline:
            print(f"{cls}: time is up after {i} requests", file=sys.stderr)
            break
        name, send = variants[i % len(variants)]
        outcomes.append(outcome_of(cls, name, send(), head_only=name.startswith("HEAD ")))
    return outcomes


def mark_audited(outcomes: list[Outcome], records: list[bytes], since: float) -> dict:
    """Set ``audited`` on every answered outcome; returns what the audit log held.

    An answer is audited when its request id appears in a record, or when a summary record written since the
    run began (event name containing "unauthenticated", with a ``count``) still has count left for its error
    type (``error_code``; a summary without one covers any error)."""
    ids: set[bytes] = set()
    budgets: Counter[str | None] = Counter()
    events: Counter[str] = Counter()
    for raw in records:
        ids.update(UUID.findall(raw))
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        event = str(record.get("event", ""))
        events[event] += 1
        count, when = record.get("count"), record.get("time", since)
        if "unauthenticated" in event and isinstance(count, int) and isinstance(when, int | float) and when >= since:
            budgets[record.get("error_code")] += count
    covered_by_summary = 0
    for outcome in outcomes:
        if outcome.status is None:
            continue
        outcome.audited = bool(outcome.request_id) and outcome.request_id.encode() in ids
        if outcome.audited or 200 <= outcome.status < 300:
            continue
        for budget in (outcome.error_type, None):
            if budgets[budget] > 0:
                budgets[budget] -= 1
                outcome.audited = True
                covered_by_summary += 1
                break
    return {
        "entries": len(records),
        "events": dict(events),
        "covered_by_summaries": covered_by_summary,
        "summary_count_left": {str(code): n for code, n in budgets.items() if n},
    }


def tracebacks(log: str) -> Counter[str]:
    """The exception line that ends each traceback in the server log."""
    found: Counter[str] = Counter()
    for block in log.split("Traceback (most recent call last):")[1:]:
        lines = [line for line in block.splitlines() if line and not line.startswith((" ", "\t"))]
        found[lines[0][:120] if lines else "?"] += 1
    return found


def print_report(outcomes: list[Outcome], facts: dict) -> None:
    classes = list(dict.fromkeys(o.cls for o in outcomes))
    print("\n## Outcomes by class\n")
    print("| class | requests | answered | no answer | 2xx | 4xx | 5xx | not AWS-shaped | unaudited |")
    print("|---|---|---|---|---|---|---|---|---|")
    for cls in classes:
        rows = [o for o in outcomes if o.cls == cls]
        answered = [o for o in rows if o.status is not None]
        print(
            f"| {cls} | {len(rows)} | {len(answered)} | {len(rows) - len(answered)} "
            f"| {sum(200 <= o.status < 300 for o in answered)} | {sum(400 <= o.status < 500 for o in answered)} "
            f"| {sum(o.status >= 500 for o in answered)} | {sum(o.shaped is False for o in rows)} "
            f"| {sum(o.audited is False for o in rows)} |"
        )

    print("\n## Status and error type by class\n")
    print("| class | status | error type | count | variants |")
    print("|---|---|---|---|---|")
    for cls in classes:
        groups: dict[tuple, list[Outcome]] = {}
        for o in outcomes:
            if o.cls == cls:
                key = (o.status if o.status is not None else f"none: {re.sub(r' after .*', '', o.ended)}", o.error_type)
                groups.setdefault(key, []).append(o)
        for (status, error_type), rows in sorted(groups.items(), key=lambda kv: str(kv[0])):
            names = list(dict.fromkeys(o.variant for o in rows))
            shown = "; ".join(names[:4]) + (f"; +{len(names) - 4} more" if len(names) > 4 else "")
            print(f"| {cls} | {status} | {error_type} | {len(rows)} | {shown} |")

    print("\n## Answers that are not AWS-shaped\n")
    unshaped = Counter((o.cls, o.variant, o.status, o.body_head) for o in outcomes if o.shaped is False)
    if unshaped:
        print("| class | variant | status | count | body (first 80 bytes) |")
        print("|---|---|---|---|---|")
        for (cls, variant, status, body), n in unshaped.items():
            cell = body.replace("|", "\\|")
            print(f"| {cls} | {variant} | {status} | {n} | `{cell}` |")
    else:
        print("none")

    print("\n## Unaudited answers\n")
    unaudited = Counter(
        (o.cls, o.variant, o.status, o.error_type, bool(o.request_id)) for o in outcomes if o.audited is False
    )
    if unaudited:
        print("| class | variant | status | error type | has request id | count |")
        print("|---|---|---|---|---|---|")
        for (cls, variant, status, error_type, has_id), n in unaudited.items():
            print(f"| {cls} | {variant} | {status} | {error_type} | {'yes' if has_id else 'no'} | {n} |")
    else:
        print("none")

    accepted = [o for o in outcomes if o.cls.startswith("7") and o.status is not None and 200 <= o.status < 300]
    print("\n## Findings\n")
    print(f"- 5xx answers: {sum(o.status is not None and o.status >= 500 for o in outcomes)}")
    print(
        f"- unaudited answers: {sum(o.audited is False for o in outcomes)} of "
        f"{sum(o.status is not None for o in outcomes)} (no x-amzn-RequestId: "
        f"{sum(o.status is not None and not o.request_id for o in outcomes)}; covered by unauthenticated "
        f"summaries: {facts['audit']['covered_by_summaries']}; summary counts not matched to an answer, by error "
        f"code: {facts['audit']['summary_count_left'] or 'none'})"
    )
    print(f"- requests with no answer: {sum(o.status is None for o in outcomes)}")
    print(f"- auth variants answered 2xx: {', '.join(dict.fromkeys(o.variant for o in accepted)) or 'none'}")
    print(f"- collection 'victim' (target of the partially signed DeleteCollection) still exists: {facts['victim']}")
    stalled = [o for o in outcomes if o.cls.startswith("8") and "bytes sent" in o.variant]
    answered = [o.seconds for o in stalled if o.status is not None]
    print(
        f"- short bodies (Content-Length > bytes sent): {len(answered)} of {len(stalled)} answered within "
        f"{STALL_TIMEOUT:g} s" + (f", median {statistics.median(answered):.2f} s" if answered else "")
    )
    slow = [o for o in outcomes if o.cls.startswith("9")]
    print(
        f"- slow clients: {len(slow)} connections for {facts['slow_seconds']:g} s: "
        f"{sum(o.status is not None for o in slow)} answered, "
        f"{sum(o.status is None and 'still open' not in o.ended for o in slow)} closed/reset by the server, "
        f"{sum('still open' in o.ended for o in slow)} still open; while open: {facts['slow_probe']}"
    )
    memory, audit = facts["rss_kib"], facts["audit_bytes"]
    print(
        f"- server RSS (process + children): {memory['before'] / 1024:.0f} MiB before, "
        f"{memory['peak'] / 1024:.0f} MiB peak, {memory['after'] / 1024:.0f} MiB after"
    )
    print(
        f"- audit DB: audit.sqlite3 {audit['before']['db']:,} bytes before, {audit['after']['db']:,} after; "
        f"its WAL {audit['before']['wal']:,} before, {audit['after']['wal']:,} after; "
        f"{facts['audit']['entries']} entries at the end, events {facts['audit']['events']}"
    )
    print(f"- tracebacks in the server log: {sum(facts['tracebacks'].values())}")
    for line, n in sorted(facts["tracebacks"].items(), key=lambda kv: -kv[1]):
        print(f"  - {n} × `{line}`")
    print(f"- healthy at the end: {facts['healthy_at_end']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=20, help="requests per class (each variant at least once)")
    parser.add_argument("--slow-seconds", type=float, default=15.0, help="how long the slow clients trickle")
    parser.add_argument("--slow-clients", type=int, default=20, help="slow connections held open at once")
    parser.add_argument("--region", default="us-east-1", help="region valid requests are signed for")
    parser.add_argument("--workers", type=int, default=1, help="face worker processes of the server")
    parser.add_argument("--max-seconds", type=float, default=240.0, help="stop replaying after this long")
    parser.add_argument("--json", action="store_true", help="print every outcome as JSON instead of tables")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="facegate-hostile-") as tmp:
        home = Path(tmp) / "data"
        org_a = json.loads(facegate_cli(home, "keys", "create", "--org", "org-a", "--json"))
        org_b = json.loads(facegate_cli(home, "keys", "create", "--org", "org-b", "--json"))
        port = free_port()
        log_path = Path(tmp) / "server.log"
        server = start_server(home, port, args.workers, args.region, log_path)
        try:
            target = Target(port, args.region, org_a, org_b)
            set_up(target)
            print(f"server on {target.host}, {len(target.face_ids)} faces in 'bench'", file=sys.stderr)
            time.sleep(1)
            facts: dict = {"slow_seconds": args.slow_seconds}
            rss_before, audit_before = rss_kib(server.pid), audit_bytes(home)
            since = time.time()
            peak = PeakRss(server.pid)
            deadline = time.monotonic() + args.max_seconds
            outcomes: list[Outcome] = []
            for cls, make in [
                ("1 malformed-json", malformed_json),
                ("2 wrong-types", wrong_types),
                ("3 lone-surrogates", lone_surrogates),
                ("4 non-finite-thresholds", non_finite_thresholds),
                ("5 bad-base64", bad_base64),
                ("6 corrupt-images", corrupt_images),
                ("7 auth", garbled_auth),
            ]:
                began = time.monotonic()
                outcomes += replay(cls, make(target), args.per_class, deadline)
                print(f"{cls}: {time.monotonic() - began:.1f} s", file=sys.stderr)
            began = time.monotonic()
            outcomes += oversized(target, args.per_class, deadline)
            print(f"8 oversized: {time.monotonic() - began:.1f} s", file=sys.stderr)
            if time.monotonic() < deadline:
                began = time.monotonic()
                slow, facts["slow_probe"] = slow_clients(target, args.slow_clients, args.slow_seconds)
                outcomes += slow
                print(f"9 slow-clients: {time.monotonic() - began:.1f} s", file=sys.stderr)
            else:
                facts["slow_probe"] = "skipped: time is up"
            outcomes += replay("10 parser", parser_level(target), args.per_class, deadline)
            outcomes += replay("10b raw-http", raw_http(target), 0, deadline)

            time.sleep(2)  # let closed connections and worker memory settle before measuring
            health = healthz(port)
            facts["healthy_at_end"] = health.status == 200 and server.poll() is None
            facts["victim"] = collection_exists(target, "victim")
            facts["rss_kib"] = {"before": rss_before, "peak": peak.stop(), "after": rss_kib(server.pid)}
            facts["audit_bytes"] = {"before": audit_before, "after": audit_bytes(home)}
        finally:
            stop_server(server)
        facts["audit"] = mark_audited(outcomes, audit_records(home), since)
        facts["tracebacks"] = dict(tracebacks(log_path.read_text(errors="replace")))

    if args.json:
        print(json.dumps({"facts": facts, "outcomes": [asdict(o) for o in outcomes]}, indent=2, default=str))
        return
    print(
        f"\nHostile input against facegate serve --workers {args.workers} on loopback; {len(outcomes)} requests, "
        f"valid ones signed for {args.region}"
    )
    print_report(outcomes, facts)


if __name__ == "__main__":
    main()
