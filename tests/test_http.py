"""The HTTP service driven by clients nobody here wrote: boto3 and the AWS CLI, on real faces."""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import boto3
import botocore.auth
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from .conftest import group_canvas, jpeg_bytes

REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def facegate(home: Path, *args: str) -> str:
    env = {**os.environ, "FACEGATE_HOME": str(home)}
    result = subprocess.run([sys.executable, "-m", "facegate", *args], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


@contextmanager
def running_server(home: Path, *extra: str):
    """`facegate serve` on a free loopback port; yields its endpoint once /healthz answers."""
    port = _free_port()
    env = {**os.environ, "FACEGATE_HOME": str(home)}
    log = (home.parent / f"server-{port}.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "facegate", "serve", "--port", str(port), *extra], stdout=log, stderr=log, env=env
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {(home.parent / f'server-{port}.log').read_text()}")
            try:
                if httpx.get(f"{endpoint}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError("server did not become healthy")
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("server") / "data"
    org_a = json.loads(facegate(home, "keys", "create", "--org", "org-a", "--json"))
    org_b = json.loads(facegate(home, "keys", "create", "--org", "org-b", "--json"))
    with running_server(home) as endpoint:
        yield {"endpoint": endpoint, "a": org_a, "b": org_b, "home": home}


def boto_client(endpoint: str, key: dict, retries: int | None = None):
    """An unmodified boto3 Rekognition client pointed at facegate; ``retries`` caps the SDK's attempts."""
    config = Config(retries={"max_attempts": retries, "mode": "standard"}) if retries else None
    return boto3.client(
        "rekognition",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
        config=config,
    )


def client(server, org="a"):
    return boto_client(server["endpoint"], server[org])


def code_of(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def read(path: Path) -> bytes:
    return path.read_bytes()


def test_every_operation_through_boto3(server, people, group_photo):
    rek = client(server)
    arn = rek.create_collection(CollectionId="boto", Tags={"purpose": "test"})["CollectionArn"]
    ids: dict[str, list[str]] = {}
    for name, photos in people.items():
        for i, path in enumerate(photos[:3]):
            records = rek.index_faces(CollectionId="boto", Image={"Bytes": read(path)}, ExternalImageId=f"{name}-{i}")
            ids.setdefault(name, []).extend(r["Face"]["FaceId"] for r in records["FaceRecords"])
    assert rek.describe_collection(CollectionId="boto")["FaceCount"] == 12

    matches = rek.search_faces_by_image(CollectionId="boto", Image={"Bytes": read(people["Tony_Blair"][3])})
    assert matches["FaceMatches"][0]["Face"]["ExternalImageId"].startswith("Tony_Blair")
    by_id = rek.search_faces(CollectionId="boto", FaceId=ids["Colin_Powell"][0], MaxFaces=2)
    assert all(m["Face"]["FaceId"] in ids["Colin_Powell"] for m in by_id["FaceMatches"])

    compared = rek.compare_faces(
        SourceImage={"Bytes": read(people["Serena_Williams"][0])},
        TargetImage={"Bytes": read(people["Serena_Williams"][1])},
    )
    assert compared["FaceMatches"][0]["Similarity"] >= 80
    detected = rek.detect_faces(Image={"Bytes": group_photo}, Attributes=["DEFAULT"])
    assert len(detected["FaceDetails"]) == 6

    rek.create_user(CollectionId="boto", UserId="serena", ClientRequestToken="create-serena-0001")
    rek.create_user(CollectionId="boto", UserId="serena", ClientRequestToken="create-serena-0001")  # retry: fine
    rek.associate_faces(CollectionId="boto", UserId="serena", FaceIds=ids["Serena_Williams"])
    found = rek.search_users_by_image(CollectionId="boto", Image={"Bytes": read(people["Serena_Williams"][3])})
    assert found["UserMatches"][0]["User"]["UserId"] == "serena"
    assert rek.search_users(CollectionId="boto", UserId="serena")["SearchedUser"] == {"UserId": "serena"}
    rek.disassociate_faces(CollectionId="boto", UserId="serena", FaceIds=ids["Serena_Williams"][:1])
    assert [u["UserId"] for u in rek.list_users(CollectionId="boto")["Users"]] == ["serena"]
    rek.delete_user(CollectionId="boto", UserId="serena")

    rek.tag_resource(ResourceArn=arn, Tags={"owner": "me"})
    rek.untag_resource(ResourceArn=arn, TagKeys=["purpose"])
    assert rek.list_tags_for_resource(ResourceArn=arn)["Tags"] == {"owner": "me"}

    deleted = rek.delete_faces(CollectionId="boto", FaceIds=ids["George_W_Bush"])
    assert sorted(deleted["DeletedFaces"]) == sorted(ids["George_W_Bush"])
    assert rek.delete_collection(CollectionId="boto")["StatusCode"] == 200


def test_paginators(server, people):
    rek = client(server)
    for i in range(5):
        rek.create_collection(CollectionId=f"page-{i}")
    pages = list(rek.get_paginator("list_collections").paginate(PaginationConfig={"PageSize": 2}))
    listed = [c for page in pages for c in page["CollectionIds"] if c.startswith("page-")]
    assert listed == [f"page-{i}" for i in range(5)] and len(pages) >= 3

    for i, path in enumerate(people["Tony_Blair"] + people["Colin_Powell"]):
        rek.index_faces(CollectionId="page-0", Image={"Bytes": read(path)}, ExternalImageId=f"p{i}")
    faces = [
        f
        for page in rek.get_paginator("list_faces").paginate(CollectionId="page-0", PaginationConfig={"PageSize": 3})
        for f in page["Faces"]
    ]
    assert len(faces) == 8 and len({f["FaceId"] for f in faces}) == 8
    for i in range(4):
        rek.create_user(CollectionId="page-0", UserId=f"user-{i}")
    users = [
        u
        for page in rek.get_paginator("list_users").paginate(CollectionId="page-0", PaginationConfig={"PageSize": 3})
        for u in page["Users"]
    ]
    assert [u["UserId"] for u in users] == [f"user-{i}" for i in range(4)]
    with pytest.raises(ClientError) as info:
        rek.list_faces(CollectionId="page-0", NextToken="bogus")
    assert code_of(info) == "InvalidPaginationTokenException"


def test_errors_reach_boto3_with_their_codes(server, people, tmp_path):
    rek = client(server)
    rek.create_collection(CollectionId="errors")
    cases = [
        (lambda: rek.create_collection(CollectionId="errors"), "ResourceAlreadyExistsException"),
        (lambda: rek.describe_collection(CollectionId="missing"), "ResourceNotFoundException"),
        (lambda: rek.detect_faces(Image={"Bytes": b"definitely not an image"}), "InvalidImageFormatException"),
        (lambda: rek.detect_faces(Image={"Bytes": read(people["Tony_Blair"][0])[:300]}), "InvalidImageFormatException"),
        (
            lambda: rek.detect_faces(Image={"Bytes": b"\xff\xd8\xff" + b"\0" * (5 * 1024 * 1024 + 10)}),
            "ImageTooLargeException",
        ),
        (
            lambda: rek.detect_faces(Image={"S3Object": {"Bucket": "photos", "Name": "a.jpg"}}),
            "InvalidS3ObjectException",
        ),
        (lambda: rek.create_collection(CollectionId="bad id!"), "ValidationException"),
        (
            lambda: rek.search_faces_by_image(
                CollectionId="errors", Image={"Bytes": read(people["Tony_Blair"][0])}, MaxFaces=5000
            ),
            "ValidationException",
        ),
    ]
    for call, expected in cases:
        with pytest.raises(ClientError) as info:
            call()
        assert code_of(info) == expected, info.value.response["Error"]
        assert info.value.response["Error"]["Message"]
    # A modelled error arrives as boto3's own exception class.
    with pytest.raises(rek.exceptions.ResourceNotFoundException):
        rek.list_faces(CollectionId="missing")


def test_organisations_are_isolated(server, people):
    a, b = client(server, "a"), client(server, "b")
    a.create_collection(CollectionId="private")
    a.index_faces(CollectionId="private", Image={"Bytes": read(people["Tony_Blair"][0])})
    assert "private" not in b.list_collections()["CollectionIds"]
    with pytest.raises(b.exceptions.ResourceNotFoundException):
        b.search_faces_by_image(CollectionId="private", Image={"Bytes": read(people["Tony_Blair"][1])})
    b.create_collection(CollectionId="private")  # same id, another organisation: a separate collection
    assert b.describe_collection(CollectionId="private")["FaceCount"] == 0


# SigV4, checked with raw requests signed by botocore's signer


def signed_post(server, target: str, body: bytes, *, key=None, secret=None, when=None, service="rekognition"):
    key = key or server["a"]["AccessKeyId"]
    secret = secret or server["a"]["SecretAccessKey"]
    request = AWSRequest(
        method="POST",
        url=server["endpoint"] + "/",
        data=body,
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target},
    )
    with mock.patch.object(
        botocore.auth, "get_current_datetime", return_value=when or datetime.datetime.now(datetime.UTC)
    ):
        SigV4Auth(Credentials(key, secret), service, REGION).add_auth(request)
    return httpx.post(server["endpoint"] + "/", content=body, headers=dict(request.headers))


def test_sigv4_refusals(server):
    ok = signed_post(server, "RekognitionService.ListCollections", b"{}")
    assert ok.status_code == 200, ok.text
    cases = {
        "UnrecognizedClientException": signed_post(
            server, "RekognitionService.ListCollections", b"{}", key="AKIANOSUCHKEY0000000"
        ),
        "InvalidSignatureException": signed_post(server, "RekognitionService.ListCollections", b"{}", secret="x" * 40),
    }
    stale = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=6)
    cases["InvalidSignatureException/stale"] = signed_post(
        server, "RekognitionService.ListCollections", b"{}", when=stale
    )
    future = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=6)
    cases["InvalidSignatureException/future"] = signed_post(
        server, "RekognitionService.ListCollections", b"{}", when=future
    )
    cases["InvalidSignatureException/service"] = signed_post(
        server, "RekognitionService.ListCollections", b"{}", service="s3"
    )
    unsigned = httpx.post(
        server["endpoint"] + "/", content=b"{}", headers={"X-Amz-Target": "RekognitionService.ListCollections"}
    )
    cases["IncompleteSignatureException"] = unsigned
    for expected, response in cases.items():
        assert response.status_code == 400, (expected, response.text)
        assert response.json()["__type"] == expected.split("/")[0], (expected, response.text)
    assert "expired" in cases["InvalidSignatureException/stale"].json()["Message"]

    # A body changed after signing no longer matches its signature.
    good = signed_post(server, "RekognitionService.ListCollections", b"{}")
    assert good.status_code == 200
    request = AWSRequest(
        method="POST",
        url=server["endpoint"] + "/",
        data=b"{}",
        headers={"X-Amz-Target": "RekognitionService.ListCollections"},
    )
    SigV4Auth(Credentials(server["a"]["AccessKeyId"], server["a"]["SecretAccessKey"]), "rekognition", REGION).add_auth(
        request
    )
    tampered = httpx.post(server["endpoint"] + "/", content=b'{"MaxResults": 1}', headers=dict(request.headers))
    assert tampered.json()["__type"] == "InvalidSignatureException"


def test_protocol_errors(server):
    unknown = signed_post(server, "RekognitionService.MakeCoffee", b"{}")
    assert unknown.status_code == 400 and unknown.json()["__type"] == "UnknownOperationException"
    malformed = signed_post(server, "RekognitionService.ListCollections", b"{not json")
    assert malformed.json()["__type"] == "SerializationException"
    array = signed_post(server, "RekognitionService.ListCollections", b"[1, 2]")
    assert array.json()["__type"] == "SerializationException"
    wrong_type = signed_post(server, "RekognitionService.ListCollections", b'{"MaxResults": "ten"}')
    assert wrong_type.json()["__type"] == "ValidationException"
    assert wrong_type.headers["x-amzn-ErrorType"] == "ValidationException"
    huge = httpx.post(
        server["endpoint"] + "/",
        content=b"x" * (17 * 1024 * 1024),
        headers={"X-Amz-Target": "RekognitionService.DetectFaces"},
    )
    assert huge.status_code == 413 and huge.json()["__type"] == "ValidationException"
    assert httpx.get(server["endpoint"] + "/nowhere").status_code == 404


def test_health_and_metrics(server):
    assert httpx.get(server["endpoint"] + "/healthz").json()["status"] == "ok"
    client(server).list_collections()
    metrics = httpx.get(server["endpoint"] + "/metrics").text
    assert 'facegate_requests_total{code="OK",operation="ListCollections"}' in metrics
    assert "facegate_request_seconds_bucket" in metrics and "facegate_queue_depth" in metrics


def test_aws_cli(server, people, tmp_path):
    aws = Path(sys.executable).with_name("aws")
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": server["a"]["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": server["a"]["SecretAccessKey"],
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }

    def cli(*args: str) -> dict:
        result = subprocess.run(
            [str(aws), "rekognition", *args, "--endpoint-url", server["endpoint"], "--output", "json"],
            capture_output=True,
            text=True,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    assert cli("create-collection", "--collection-id", "from-cli")["StatusCode"] == 200
    indexed = cli(
        "index-faces",
        "--collection-id",
        "from-cli",
        "--image-bytes",
        f"fileb://{people['Colin_Powell'][0]}",
        "--external-image-id",
        "colin",
    )
    assert indexed["FaceRecords"][0]["Face"]["ExternalImageId"] == "colin"
    found = cli(
        "search-faces-by-image", "--collection-id", "from-cli", "--image-bytes", f"fileb://{people['Colin_Powell'][1]}"
    )
    assert found["FaceMatches"][0]["Face"]["ExternalImageId"] == "colin"
    missing = subprocess.run(
        [
            str(aws),
            "rekognition",
            "describe-collection",
            "--collection-id",
            "nope",
            "--endpoint-url",
            server["endpoint"],
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert missing.returncode != 0 and "ResourceNotFoundException" in missing.stderr


def test_overload_answers_throttling_quickly_and_nothing_else(tmp_path, people, congress):
    """One worker, no queue: concurrent face requests beyond it get ThrottlingException, the rest succeed."""
    home = tmp_path / "data"
    key = json.loads(facegate(home, "keys", "create", "--json"))
    # A full-HD group photo keeps the one worker busy for a good fraction of a second, so a burst that arrives
    # together always overlaps it (a small photo can finish before the next request lands).
    heavy = jpeg_bytes(group_canvas(congress, 6).resize((1920, 1080)))
    photo = read(people["Tony_Blair"][0])
    with running_server(home, "--workers", "1", "--queue", "0") as endpoint:
        rek = boto_client(endpoint, key, retries=1)
        start = threading.Barrier(8)

        def detect(_):
            start.wait()
            try:
                rek.detect_faces(Image={"Bytes": heavy})
                return "OK"
            except ClientError as exc:
                return exc.response["Error"]["Code"]

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(detect, range(8)))
        assert set(outcomes) <= {"OK", "ThrottlingException"}
        assert "OK" in outcomes and "ThrottlingException" in outcomes
        # With the SDK's retries on, the same burst all succeeds eventually.
        patient = boto_client(endpoint, key, retries=10)
        with ThreadPoolExecutor(3) as pool:
            assert all(
                len(r["FaceDetails"]) == 1
                for r in pool.map(lambda _: patient.detect_faces(Image={"Bytes": photo}), range(6))
            )


def test_secrets_are_sealed_at_rest(server):
    home = server["home"]
    assert (home / "server.key").stat().st_mode & 0o777 == 0o600
    secret = server["a"]["SecretAccessKey"].encode()
    for path in home.iterdir():
        if path.is_file():
            assert secret not in path.read_bytes(), f"the secret is readable in {path.name}"


def test_a_request_that_cannot_be_audited_is_refused(tmp_path):
    """Fail closed: while the audit log cannot be written, requests get an error, not an unrecorded answer."""
    import sqlite3

    home = tmp_path / "data"
    key = json.loads(facegate(home, "keys", "create", "--json"))
    with running_server(home) as endpoint:
        rek = boto_client(endpoint, key, retries=1)
        rek.create_collection(CollectionId="audited")
        blocker = sqlite3.connect(home / "audit.sqlite3", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the log past the server's wait
        try:
            with pytest.raises(ClientError) as info:
                rek.delete_collection(CollectionId="audited")
            assert info.value.response["Error"]["Code"] == "InternalServerError"
            assert "could not be audited" in info.value.response["Error"]["Message"]
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        rek.list_collections()  # the log is writable again: requests are answered again
        assert facegate(home, "audit", "verify")


def _face_workers(port: int) -> list[int]:
    """Pids of the worker processes of the `facegate serve` listening on ``port``."""
    server = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _serves(_cmdline(p), port)]
    workers = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid in server and "spawn_main" in " ".join(_cmdline(p)):
            workers.append(int(p.name))
    return workers


def _serves(cmdline: list[str], port: int) -> bool:
    return "serve" in cmdline and any(
        a == "--port" and b == str(port) for a, b in zip(cmdline, cmdline[1:], strict=False)
    )


def _cmdline(proc: Path) -> list[str]:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker processes through /proc")
def test_a_dead_face_worker_is_replaced(tmp_path, people):
    """A worker killed (as a crash in native code would) costs at most the requests it held; then new workers
    serve the next ones."""
    home = tmp_path / "data"
    key = json.loads(facegate(home, "keys", "create", "--json"))
    photo = read(people["Tony_Blair"][0])
    with running_server(home, "--workers", "1") as endpoint:
        rek = boto_client(endpoint, key, retries=1)
        assert len(rek.detect_faces(Image={"Bytes": photo})["FaceDetails"]) == 1
        port = int(endpoint.rsplit(":", 1)[1])
        victims = _face_workers(port)
        assert len(victims) == 1
        os.kill(victims[0], signal.SIGKILL)
        outcomes = []
        for _ in range(3):
            try:
                outcomes.append(len(rek.detect_faces(Image={"Bytes": photo})["FaceDetails"]))
            except ClientError as exc:
                outcomes.append(exc.response["Error"]["Code"])
        assert outcomes[-1] == 1 and set(outcomes) <= {1, "InternalServerError"}, outcomes
        assert _face_workers(port) and victims[0] not in _face_workers(port)
