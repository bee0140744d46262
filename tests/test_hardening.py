"""Regression tests for what a black-box probe of `facegate serve` found (issue 11): each failed before the fix."""

from __future__ import annotations

import datetime
import json
import socket
import sqlite3
import threading
from pathlib import Path
from unittest import mock

import botocore.auth
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from facegate.audit import AuditLog
from facegate.service import FaceService
from facegate.store.sqlite import SqliteStore

from .test_http import boto_client, facegate, running_server


def _image(path: Path) -> dict:
    return {"Image": {"Bytes": path.read_bytes()}}


# 1. A deleted collection's users must never reach the next collection created.


def test_a_deleted_collections_users_never_reach_the_collection_created_after_it(tmp_path, engine, people):
    """The server caches a collection's gallery; another process (the CLI) deletes that collection; another
    organisation creates one and indexes until its generation equals the cached one. Before the fix the new
    collection reused the old key and its searches returned the deleted organisation's users."""
    home = tmp_path / "data"
    server = FaceService(SqliteStore(home), engine)
    operator = SqliteStore(home)  # a second connection, as `facegate collections delete` in another process
    a_faces = []
    server.call("org-a", "CreateCollection", {"CollectionId": "a-people"})
    for path in people["George_W_Bush"][:2]:
        a_faces += server.call("org-a", "IndexFaces", {"CollectionId": "a-people", **_image(path)}).records
    server.call("org-a", "CreateUser", {"CollectionId": "a-people", "UserId": "A-user-secret"})
    server.call(
        "org-a",
        "AssociateFaces",
        {"CollectionId": "a-people", "UserId": "A-user-secret", "FaceIds": [r.face.face_id for r in a_faces]},
    )
    probe = _image(people["George_W_Bush"][2])
    found = server.call("org-a", "SearchUsersByImage", {"CollectionId": "a-people", **probe}).matches
    assert [m.user_id for m in found] == ["A-user-secret"]  # the server now holds A's gallery

    deleted = operator.get_collection("org-a", "a-people")
    operator.delete_collection(deleted)

    server.call("org-b", "CreateCollection", {"CollectionId": "b-people"})
    b_faces = []
    for path in people["Colin_Powell"][:3]:  # three writes: the generation A's cached gallery was labelled with
        b_faces += server.call("org-b", "IndexFaces", {"CollectionId": "b-people", **_image(path)}).records
    assert server.store.get_collection("org-b", "b-people").pk != deleted.pk

    leaked = server.call("org-b", "SearchUsersByImage", {"CollectionId": "b-people", **probe}).matches
    assert leaked == ()
    own = server.call("org-b", "SearchFacesByImage", {"CollectionId": "b-people", **_image(people["Colin_Powell"][3])})
    assert {m.face.face_id for m in own.matches} == {r.face.face_id for r in b_faces}
    operator.close()
    server.store.close()


def test_through_a_real_server_a_deleted_organisations_users_never_reach_another(tmp_path, people):
    """The probe's sequence end to end: `facegate serve`, boto3 for two organisations, and the CLI deleting A's
    collection from another process while the server holds A's gallery in memory."""
    home = tmp_path / "data"
    key_a = json.loads(facegate(home, "keys", "create", "--json"))  # organisation A: the CLI's default one
    key_b = json.loads(facegate(home, "keys", "create", "--org", "org-b", "--json"))
    with running_server(home, "--workers", "1") as endpoint:
        a, b = boto_client(endpoint, key_a), boto_client(endpoint, key_b)
        a.create_collection(CollectionId="a-people")
        faces = []
        for path in people["George_W_Bush"][:2]:
            faces += a.index_faces(CollectionId="a-people", **_image(path))["FaceRecords"]
        a.create_user(CollectionId="a-people", UserId="A-user-secret")
        a.associate_faces(CollectionId="a-people", UserId="A-user-secret", FaceIds=[f["Face"]["FaceId"] for f in faces])
        probe = _image(people["George_W_Bush"][2])
        assert a.search_users_by_image(CollectionId="a-people", **probe)["UserMatches"]

        facegate(home, "collections", "delete", "a-people")

        b.create_collection(CollectionId="b-people")
        own = []
        for path in people["Colin_Powell"][:3]:
            own += b.index_faces(CollectionId="b-people", **_image(path))["FaceRecords"]
        assert b.search_users_by_image(CollectionId="b-people", **probe)["UserMatches"] == []
        found = b.search_faces_by_image(CollectionId="b-people", **_image(people["Colin_Powell"][3]))["FaceMatches"]
        assert {m["Face"]["FaceId"] for m in found} == {f["Face"]["FaceId"] for f in own}


# A server for the wire-level items (2–8 are about what one HTTP request can do).


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("hardening") / "data"
    key = json.loads(facegate(home, "keys", "create", "--org", "org-a", "--json"))
    with running_server(home, "--workers", "1") as endpoint:
        yield {"endpoint": endpoint, "key": key, "home": home}


def _signed(served, target: str, body: bytes, *, region="us-east-1", signed_extra=None, headers=None):
    """Headers of a SigV4-signed POST; ``headers`` are added after signing (not covered by the signature)."""
    request = AWSRequest(
        method="POST",
        url=served["endpoint"] + "/",
        data=body,
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target, **(signed_extra or {})},
    )
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=datetime.datetime.now(datetime.UTC)):
        SigV4Auth(
            Credentials(served["key"]["AccessKeyId"], served["key"]["SecretAccessKey"]), "rekognition", region
        ).add_auth(request)
    return {**dict(request.headers), **(headers or {})}


def _post(served, target: str, body: bytes, **kwargs) -> httpx.Response:
    return httpx.post(served["endpoint"] + "/", content=body, headers=_signed(served, target, body, **kwargs))


def _audited(home: Path, request_id: str) -> dict | None:
    log = AuditLog(home)
    try:
        return next((e for e in log.entries(event="request") if e.get("request_id") == request_id), None)
    finally:
        log.close()


def _aws_shaped(response: httpx.Response) -> bool:
    body = response.json()
    return "__type" in body and "Message" in body and response.headers.get("x-amzn-ErrorType") == body["__type"]


# 5. Headers that change a request's meaning must be signed.


def test_an_unsigned_target_cannot_turn_a_describe_into_a_delete(served):
    rek = boto_client(served["endpoint"], served["key"])
    rek.create_collection(CollectionId="keep-me")
    body = json.dumps({"CollectionId": "keep-me"}).encode()
    request = AWSRequest(method="POST", url=served["endpoint"] + "/", data=body, headers={})
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=datetime.datetime.now(datetime.UTC)):
        SigV4Auth(
            Credentials(served["key"]["AccessKeyId"], served["key"]["SecretAccessKey"]), "rekognition", "us-east-1"
        ).add_auth(request)
    assert "x-amz-target" not in request.headers["Authorization"].lower()
    resent = httpx.post(
        served["endpoint"] + "/",
        content=body,
        headers={**dict(request.headers), "X-Amz-Target": "RekognitionService.DeleteCollection"},
    )
    assert resent.status_code == 400 and resent.json()["__type"] == "IncompleteSignatureException", resent.text
    assert "x-amz-target" in resent.json()["Message"]
    assert "keep-me" in rek.list_collections()["CollectionIds"]


@pytest.mark.parametrize("header", ["x-facegate-case", "x-facegate-consent", "x-amz-security-token"])
def test_policy_context_headers_added_after_signing_are_refused(served, header):
    response = _post(served, "RekognitionService.ListCollections", b"{}", headers={header: "CASE-1"})
    assert response.status_code == 400 and response.json()["__type"] == "IncompleteSignatureException"
    signed = _post(served, "RekognitionService.ListCollections", b"{}", signed_extra={"x-facegate-case": "CASE-1"})
    assert signed.status_code == 200, signed.text


# 6. The credential scope's region is checked.


@pytest.mark.parametrize("region", ["eu-west-1", "xx-nowhere-9", "", "*"])
def test_a_signature_for_another_region_is_refused(served, region):
    response = _post(served, "RekognitionService.ListCollections", b"{}", region=region)
    assert response.status_code == 400, response.text
    assert response.json()["__type"] in ("InvalidSignatureException", "IncompleteSignatureException")
    assert _aws_shaped(response)


# 3. Hostile values get AWS errors, are audited, and leave the connection usable.


@pytest.mark.parametrize(
    ("target", "body"),
    [
        ("DescribeCollection", b'{"CollectionId": "\\ud800"}'),
        ("ListFaces", b'{"CollectionId": "c", "UserId": "x\\udfffy"}'),
        ("CreateCollection", b'{"CollectionId": "ok", "Tags": {"\\ud800": "v"}}'),
    ],
)
def test_lone_surrogates_are_a_serialization_error_that_is_audited(served, target, body):
    with httpx.Client() as session:  # one keep-alive connection
        headers = _signed(served, f"RekognitionService.{target}", body)
        response = session.post(served["endpoint"] + "/", content=body, headers=headers)
        assert response.status_code == 400 and response.json()["__type"] == "SerializationException", response.text
        assert _aws_shaped(response) and "surrogate" in response.json()["Message"]
        after = session.post(
            served["endpoint"] + "/",
            content=b"{}",
            headers=_signed(served, "RekognitionService.ListCollections", b"{}"),
        )
        assert after.status_code == 200  # the same connection still serves
    record = _audited(served["home"], response.headers["x-amzn-RequestId"])
    assert record is not None and record["error_code"] == "SerializationException"


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize(
    ("target", "member"),
    [("SearchFaces", "FaceMatchThreshold"), ("SearchUsers", "UserMatchThreshold")],
)
def test_non_finite_thresholds_are_refused_and_audited(served, value, target, member):
    body = f'{{"CollectionId": "c", "FaceId": "11111111-1111-1111-1111-111111111111", "{member}": {value}}}'
    response = _post(served, f"RekognitionService.{target}", body.encode())
    assert response.status_code == 400, response.text
    assert response.json()["__type"] == "SerializationException" and _aws_shaped(response)
    assert _audited(served["home"], response.headers["x-amzn-RequestId"]) is not None


def test_the_gate_never_sees_a_non_finite_threshold(tmp_path):
    """Below the wire (CLI, Python API), a NaN threshold must not crash the policy decision either."""
    from facegate.governance import Governance
    from facegate.keys import KeyRing

    store = SqliteStore(tmp_path / "data")
    keys = KeyRing(store, tmp_path / "data")
    governance = Governance(store, keys, AuditLog(tmp_path / "data"))
    issued = governance.issue_key(organisation="org-a")
    principal = keys.secret_for(issued.access_key_id)[0]
    for value in (float("nan"), float("inf"), True):
        outcome = governance.gate(principal, "SearchFaces", {"CollectionId": "c", "FaceMatchThreshold": value})
        assert outcome.decision.allowed and outcome.threshold_requested is None
    store.close()


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "GET", "PUT"])
def test_every_method_on_every_path_gets_an_aws_shaped_answer(served, method):
    for path in ("/", "/nowhere", "/admin/keys"):
        response = httpx.request(method, served["endpoint"] + path)
        assert response.status_code >= 400, (method, path)
        assert response.headers.get("x-amzn-ErrorType"), (method, path, response.headers)
        if method != "HEAD":
            assert _aws_shaped(response), (method, path, response.text)


def test_unparseable_http_gets_an_aws_shaped_400(served):
    host, port = served["endpoint"].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"x-amzn-errortype: serializationexception" in answer.lower()
    assert b'"__type"' in answer


def test_admin_api_errors_are_aws_shaped(served):
    response = httpx.post(served["endpoint"] + "/admin/keys", content=b"{}", headers={"Authorization": "garbage"})
    assert response.status_code == 400 and _aws_shaped(response)
    assert response.json()["__type"] == "IncompleteSignatureException"


def test_an_unexpected_exception_is_a_json_internal_error_and_audited(tmp_path, people):
    """A bug past the gate must still answer in AWS's shape and leave an audit record."""
    from starlette.testclient import TestClient

    from facegate.compose import Settings
    from facegate.governance import Governance
    from facegate.server.app import create_app

    home = tmp_path / "data"
    key = json.loads(facegate(home, "keys", "create", "--org", "org-a", "--json"))
    app = create_app(Settings(home), workers=1)
    client = TestClient(app, raise_server_exceptions=False)
    body = b"{}"
    request = AWSRequest(
        method="POST",
        url="http://testserver/",
        data=body,
        headers={"X-Amz-Target": "RekognitionService.ListCollections", "Content-Type": "application/x-amz-json-1.1"},
    )
    SigV4Auth(Credentials(key["AccessKeyId"], key["SecretAccessKey"]), "rekognition", "us-east-1").add_auth(request)
    with mock.patch.object(Governance, "summarise_result", side_effect=RuntimeError("a bug")):
        response = client.post("/", content=body, headers=dict(request.headers))
    assert response.status_code == 500 and response.json()["__type"] == "InternalServerError"
    assert response.headers["x-amzn-ErrorType"] == "InternalServerError"
    record = _audited(home, response.headers["x-amzn-RequestId"])
    assert record is not None and record["decision"] == "error" and record["error_code"] == "InternalServerError"
    app.state.runner.close()


# 4. The audit log cannot be inflated.


def test_an_oversized_value_is_recorded_bounded(served):
    huge = "c" * (4 * 1024 * 1024)
    response = _post(served, "RekognitionService.DescribeCollection", json.dumps({"CollectionId": huge}).encode())
    assert response.status_code == 400 and response.json()["__type"] == "ValidationException"
    assert len(response.content) < 4096  # the message does not echo it either
    record = _audited(served["home"], response.headers["x-amzn-RequestId"])
    assert record is not None
    assert len(json.dumps(record)) < 4096
    assert record["collection"]["length"] == len(huge) and len(record["collection"]["sha256"]) == 64


def test_a_flood_of_unauthenticated_requests_is_counted_in_a_bounded_number_of_records(tmp_path):
    home = tmp_path / "data"
    facegate(home, "keys", "create", "--json")
    with running_server(home, "--workers", "1") as endpoint:
        size_before = _entries(home)
        with httpx.Client() as session:
            codes = [
                session.post(endpoint + "/", content=b"{}", headers={"Authorization": "garbage"}).json()["__type"]
                for _ in range(300)
            ]
        assert set(codes) == {"IncompleteSignatureException"}
    # The server flushes its tally when it stops (and every minute while it runs).
    records = [e for e in _all_entries(home) if e.get("event") == "unauthenticated_requests"]
    assert _entries(home) - size_before <= 3
    assert sum(r["count"] for r in records) == 300
    assert {r["error_code"] for r in records} == {"IncompleteSignatureException"}


def _all_entries(home: Path) -> list[dict]:
    log = AuditLog(home)
    try:
        return list(log.entries())
    finally:
        log.close()


def _entries(home: Path) -> int:
    with sqlite3.connect(home / "audit.sqlite3") as db:
        return db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]


# 8. Read deadlines.


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_slow_headers_and_short_bodies_get_a_request_timeout(served):
    """Headers trickled, or a body shorter than its Content-Length: both are answered with 408 and closed (the
    socket timeout, far above the deadline, only stops a broken server from hanging the test)."""
    host, port = served["endpoint"].removeprefix("http://").split(":")
    answers: dict[str, bytes] = {}

    def slow_headers() -> None:
        with socket.create_connection((host, int(port)), timeout=60) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
            answers["headers"] = _read_all(sock)

    def short_body() -> None:
        headers = _signed(served, "RekognitionService.ListCollections", b"{}")
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k.lower() != "content-length")
        with socket.create_connection((host, int(port)), timeout=60) as sock:
            sock.sendall(f"POST / HTTP/1.1\r\nHost: {host}:{port}\r\n{head}Content-Length: 1000\r\n\r\n{{}}".encode())
            answers["body"] = _read_all(sock)

    threads = [threading.Thread(target=slow_headers), threading.Thread(target=short_body)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers["headers"].startswith(b"HTTP/1.1 408"), answers["headers"][:200]
    assert b"RequestTimeoutException" in answers["headers"]
    assert answers["body"].startswith(b"HTTP/1.1 408"), answers["body"][:300]
    assert b"RequestTimeoutException" in answers["body"]
