"""`facegate store copy`: an embedded deployment (built through the CLI, on real faces) copied into a real
PostgreSQL, then served from there to boto3 with the copied key; resumed after an interruption; refused where
the target holds another deployment."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from botocore.exceptions import ClientError

import facegate
from facegate.audit.log import AuditLog
from facegate.audit.postgres import PostgresAuditLog
from facegate.store.copy import copy_deployment
from facegate.store.postgres import PostgresStore
from facegate.store.sqlite import SqliteStore

from .conftest import fresh_database
from .test_http import boto_client, running_server
from .test_http import facegate as run_facegate

ORG = "acme"


def _cli(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`facegate ARGS` with only the FACEGATE_ variables given, whatever succeeded or failed."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_") or k == "FACEGATE_DATA"}
    environment.update(FACEGATE_HOME=str(home), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "facegate", *args], capture_output=True, text=True, env=environment, check=False
    )


def _index(home: Path, collection: str, photos: list[Path]) -> dict[str, str]:
    """FaceId by ExternalImageId (the file name), indexed through the CLI."""
    out = run_facegate(home, "--org", ORG, "index", *map(str, photos), "-c", collection, "--workers", "1", "--json")
    return {
        record["Face"]["ExternalImageId"]: record["Face"]["FaceId"]
        for response in json.loads(out)["Responses"]
        for record in response["FaceRecords"]
    }


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, people) -> dict:
    """An embedded deployment with a bit of everything: an organisation and its use case, a key for it and a
    revoked one, two collections (one tagged, one with a retention rule), faces, users (one created with a
    ClientRequestToken), a deleted collection, an active policy and a setting."""
    home = tmp_path_factory.mktemp("embedded") / "data"
    run_facegate(home, "orgs", "create", ORG, "--category", "commercial", "--jurisdiction", "US-IL")
    use_case = json.loads(
        run_facegate(
            home,
            "usecases",
            "create",
            "--org",
            ORG,
            "--purpose",
            "access_control",
            "--collection",
            "staff",
            "--collection",
            "visitors",
            "--collection",
            "later",
            "--json",
        )  # fmt: skip
    )["UseCaseId"]
    key = json.loads(run_facegate(home, "keys", "create", "--usecase", use_case, "--json"))
    revoked = json.loads(run_facegate(home, "keys", "create", "--org", ORG, "--json"))
    run_facegate(home, "keys", "revoke", revoked["AccessKeyId"], "--reason", "left the company")
    run_facegate(home, "--org", ORG, "collections", "create", "scratch")
    run_facegate(home, "--org", ORG, "collections", "delete", "scratch")
    run_facegate(home, "--org", ORG, "collections", "create", "staff")
    staff = _index(home, "staff", people["Tony_Blair"][:3] + people["Colin_Powell"][:3])
    tony = [face for name, face in staff.items() if name.startswith("Tony_Blair")]
    run_facegate(home, "--org", ORG, "users", "create", "-c", "staff", "tony")
    run_facegate(home, "--org", ORG, "users", "associate", "-c", "staff", "tony", *tony)
    run_facegate(home, "collections", "retention", "staff", "--org", ORG, "--max-days", "30", "--reason", "policy")
    with facegate.open(home, owner=ORG) as fg:
        fg.create_collection("visitors", tags={"site": "lobby", "purpose": "visitors"})
        fg.facegate.governed.execute(
            fg.principal,
            "CreateUser",
            {"CollectionId": "visitors", "UserId": "serena", "ClientRequestToken": "create-serena-0001"},
        )
    _index(home, "visitors", people["Serena_Williams"][:3])
    run_facegate(home, "policies", "activate", "limited-access", "--reason", "registered uses only")
    run_facegate(home, "sources", "add", "site-photos", "--org", ORG, "--dir", str(home.parent), "--reason", "pilot")
    # Only activating a fairness audit sets one, and that needs a measured report: the setting itself will do.
    store = SqliteStore(home)
    store.set_setting("fairness_audit", str(home / "fairness" / "audits" / "example.json"))
    store.close()
    return {"home": home, "key": key, "staff": staff}


def _fingerprint(home: Path) -> dict[str, str]:
    """The bytes of the source's databases and their write-ahead logs (an absent log reads as an empty one;
    the -shm index is shared memory that readers update)."""
    return {
        f"{name}{suffix}": hashlib.sha256(path.read_bytes() if path.exists() else b"").hexdigest()
        for name in ("facegate.sqlite3", "audit.sqlite3")
        for suffix in ("", "-wal")
        for path in [home / f"{name}{suffix}"]
    }


def _contents(store) -> dict:
    """Everything a store holds that a copy must carry, through the store's own ports, comparable across stores."""
    collections = [collection for collection, _ in store.all_collections()]
    contents: dict = {
        "organisations": store.list_organisations(),
        "use cases": store.list_use_cases(),
        "keys": store.all_keys(),
        "policies": store.policy_states(),
        "fairness audit": store.get_setting("fairness_audit"),
        "object sources": store.list_sources(),
        "retention": store.retention_rules(),
        "collections": collections,
    }
    for c in collections:
        faces = store.list_faces(c, None, 4096)
        embedded = store.get_faces(c, [f.face_id for f in faces], with_embeddings=True)
        contents[c.collection_id] = {
            "tags": store.tags(c),
            "users": store.list_users(c, None, 4096),
            "faces": faces,
            "embeddings": {f.face_id: np.asarray(f.embedding, dtype="<f4").tobytes() for f in embedded},
            "token": store.recall_request(c, "CreateUser", "create-serena-0001"),
        }
    return contents


def _assert_copied(home: Path, url: str, collections: list[str] | None = None) -> None:
    source, target = SqliteStore(home, read_only=True), PostgresStore(url)
    try:
        expected, copied = _contents(source), _contents(target)
        assert copied == expected
        assert [c.collection_id for c in expected["collections"]] == (collections or ["staff", "visitors"])
        if collections is None:
            assert expected["visitors"]["token"] and expected["staff"]["users"][0].face_count == 3
    finally:
        source.close()
        target.close()


def _audit_size(home: Path) -> int:
    log = AuditLog(home, read_only=True)
    try:
        return log.size()
    finally:
        log.close()


def test_a_copied_deployment_is_served_from_postgresql(deployment, postgres_url, tmp_path, people, monkeypatch):
    home = deployment["home"]
    before = _fingerprint(home)
    copied = run_facegate(tmp_path / "elsewhere", "store", "copy", "--from", str(home), "--to", postgres_url)
    assert f"FACEGATE_SEALING_KEY={home.resolve() / 'server.key'}" in copied
    assert f"FACEGATE_AUDIT_KEY={home.resolve() / 'audit_signing.key'}" in copied
    assert _fingerprint(home) == before, "the copy wrote to the source"
    _assert_copied(home, postgres_url)

    again = run_facegate(tmp_path / "elsewhere", "store", "copy", "--from", str(home), "--to", postgres_url)
    assert "nothing to do" in again

    monkeypatch.setenv("FACEGATE_STORE", postgres_url)
    monkeypatch.setenv("FACEGATE_SEALING_KEY", str(home / "server.key"))
    monkeypatch.setenv("FACEGATE_AUDIT_KEY", str(home / "audit_signing.key"))
    host = tmp_path / "host"
    verified = run_facegate(host, "audit", "verify")
    assert verified.startswith("intact") and f" {_audit_size(home)} entries" in verified

    with running_server(host, "--workers", "1") as endpoint:
        rek = boto_client(endpoint, deployment["key"], retries=1)
        for collection, person in (("staff", "Tony_Blair"), ("staff", "Colin_Powell"), ("visitors", "Serena_Williams")):
            found = rek.search_faces_by_image(CollectionId=collection, Image={"Bytes": people[person][3].read_bytes()})
            assert found["FaceMatches"][0]["Face"]["ExternalImageId"].startswith(person)
        assert [u["UserId"] for u in rek.list_users(CollectionId="staff")["Users"]] == ["tony"]
        matched = rek.search_users_by_image(CollectionId="staff", Image={"Bytes": people["Tony_Blair"][3].read_bytes()})
        assert matched["UserMatches"][0]["User"]["UserId"] == "tony"
        assert rek.describe_collection(CollectionId="staff")["FaceCount"] == 6
        # The policy came along: a key issued without a registered use case may not search.
        unregistered = json.loads(run_facegate(host, "keys", "create", "--org", ORG, "--json"))
        with pytest.raises(ClientError) as denied:
            boto_client(endpoint, unregistered, retries=1).search_faces_by_image(
                CollectionId="staff", Image={"Bytes": people["Tony_Blair"][3].read_bytes()}
            )
        assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
        # The copied collections keep their keys; a new one gets a key none of them (nor the deleted one) had.
        rek.create_collection(CollectionId="later")
        rek.index_faces(CollectionId="later", Image={"Bytes": people["Tony_Blair"][0].read_bytes()})
    assert run_facegate(host, "audit", "verify").startswith("intact")
    source, target = SqliteStore(home, read_only=True), PostgresStore(postgres_url)
    try:
        assert target.get_collection(ORG, "later").pk > source.last_collection_pk() == 3  # scratch had 1
    finally:
        source.close()
        target.close()

    # Served from since: copying over it again would overwrite what it holds now.
    refused = _cli(tmp_path / "elsewhere", "store", "copy", "--from", str(home), "--to", postgres_url)
    assert refused.returncode == 1 and "the copy has been in use" in refused.stderr


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("stop_at", ["audit entries", "access keys", "faces", "request tokens"])
def test_an_interrupted_copy_resumes_without_duplicates(deployment, postgres_url, stop_at):
    """Cut short after the first transaction that wrote ``stop_at`` (a kill -9 between transactions: each batch is
    one), then run again: the result is the source, once."""
    home = deployment["home"]

    def stop(kind: str, rows: int) -> None:
        if kind == stop_at:
            raise Interrupted

    with pytest.raises(Interrupted):
        copy_deployment(home, postgres_url, batch=4, on_batch=stop)
    resumed = copy_deployment(home, postgres_url, batch=4)
    assert resumed.written["audit entries"] == (resumed.audit_entries - 4 if stop_at == "audit entries" else 0), (
        "audit entries were copied again"
    )
    _assert_copied(home, postgres_url)
    assert not copy_deployment(home, postgres_url).changed

    source, target = AuditLog(home, read_only=True), PostgresAuditLog(postgres_url, home / "audit_signing.key")
    try:
        assert target.size() == source.size()
        assert target._leaves(target.size()) == source._leaves(source.size())
        assert target.checkpoints() == source.checkpoints()
        assert target.verify().ok
    finally:
        source.close()
        target.close()


def test_a_second_run_catches_up_with_what_the_source_did_since(deployment, postgres_url, tmp_path):
    """Copied, then the embedded deployment goes on (a user, a face and a source removed, a collection dropped): the next
    run appends the new audit entries and leaves the target holding what the source holds now."""
    home = tmp_path / "data"
    shutil.copytree(deployment["home"], home)
    first = copy_deployment(home, postgres_url)
    run_facegate(home, "--org", ORG, "users", "delete", "-c", "staff", "tony")
    face = next(iter(deployment["staff"].values()))
    assert "deleted 1 faces" in run_facegate(home, "--org", ORG, "faces", "delete", "-c", "staff", face)
    run_facegate(home, "--org", ORG, "collections", "delete", "visitors")
    run_facegate(home, "sources", "remove", "site-photos", "--org", ORG, "--reason", "pilot over")
    caught_up = copy_deployment(home, postgres_url)
    appended = caught_up.audit_entries - first.audit_entries
    assert appended >= 3 and caught_up.written["audit entries"] == appended
    _assert_copied(home, postgres_url, collections=["staff"])


@pytest.fixture
def another_postgres_url(postgres_server):
    """A second empty database on the session's server, for a test that needs two."""
    with fresh_database(postgres_server, "facegate_other") as url:
        yield url


def test_a_database_holding_another_deployment_is_refused(deployment, postgres_url, another_postgres_url, tmp_path):
    home = deployment["home"]
    # A deployment that started on PostgreSQL, its log signed by its own key.
    started = _cli(
        tmp_path / "other", "orgs", "create", "other", "--category", "ngo", env={"FACEGATE_STORE": postgres_url}
    )
    assert started.returncode == 0, started.stderr
    refused = _cli(tmp_path, "store", "copy", "--from", str(home), "--to", postgres_url)
    assert refused.returncode == 1
    assert "holds another deployment" in refused.stderr and "signed by key" in refused.stderr

    # One whose hosts were given the source's signing key: the same key, another log.
    env = {"FACEGATE_STORE": another_postgres_url, "FACEGATE_AUDIT_KEY": str(home / "audit_signing.key")}
    assert _cli(tmp_path / "third", "orgs", "create", "third", "--category", "ngo", env=env).returncode == 0
    refused = _cli(tmp_path, "store", "copy", "--from", str(home), "--to", another_postgres_url)
    assert refused.returncode == 1 and "another deployment's: its entry 0 differs" in refused.stderr
    listed = _cli(tmp_path / "third", "orgs", "list", "--json", env=env)
    assert [o["Organisation"] for o in json.loads(listed.stdout)] == ["third"], "the refused copy wrote"


def test_a_missing_source_is_named(tmp_path, postgres_url):
    refused = _cli(tmp_path, "store", "copy", "--from", str(tmp_path / "nowhere"), "--to", postgres_url)
    assert refused.returncode == 1 and "is not an embedded facegate deployment" in refused.stderr
