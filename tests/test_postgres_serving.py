"""facegate on PostgreSQL end to end: `--store postgresql://…` (or FACEGATE_STORE) for the CLI, `serve` and
`facegate.open`, boto3 against two servers sharing one database."""

from __future__ import annotations

import json
import shutil

import pytest
from botocore.exceptions import ClientError

import facegate
from facegate.store.postgres import PostgresStore

from .test_http import boto_client, running_server
from .test_http import facegate as run_facegate


@pytest.fixture
def on_postgres(postgres_url, monkeypatch):
    """Every facegate process this test starts (and facegate.open) uses the test's PostgreSQL database."""
    monkeypatch.setenv("FACEGATE_STORE", postgres_url)
    return postgres_url


@pytest.fixture
def shared_keys(tmp_path, monkeypatch):
    """The sealing and audit signing keys every host reads through configuration (the same files)."""
    from facegate.audit.base import create_signing_key

    shared = tmp_path / "config"
    shared.mkdir()
    monkeypatch.setenv("FACEGATE_SEALING_KEY", str(shared / "sealing.key"))
    monkeypatch.setenv("FACEGATE_AUDIT_KEY", str(shared / "audit_signing.key"))
    create_signing_key(shared / "audit_signing.key")


def test_two_servers_on_one_database_see_the_same_faces_and_revocations(on_postgres, shared_keys, tmp_path, people):
    """Two hosts' worth of servers: separate data directories, one database (faces, governance and the audit
    log), the sealing and audit signing keys shared through configuration."""
    home, other = tmp_path / "host-1", tmp_path / "host-2"
    key = json.loads(run_facegate(home, "keys", "create", "--org", "org-a", "--json"))
    with running_server(home, "--workers", "1") as first, running_server(other, "--workers", "1") as second:
        a, b = boto_client(first, key, retries=1), boto_client(second, key, retries=1)
        a.create_collection(CollectionId="shared")
        indexed = a.index_faces(CollectionId="shared", Image={"Bytes": people["Tony_Blair"][0].read_bytes()})
        face_id = indexed["FaceRecords"][0]["Face"]["FaceId"]
        found = b.search_faces_by_image(CollectionId="shared", Image={"Bytes": people["Tony_Blair"][1].read_bytes()})
        assert [m["Face"]["FaceId"] for m in found["FaceMatches"]] == [face_id]

        run_facegate(home, "keys", "revoke", key["AccessKeyId"], "--reason", "contract ended")
        for client in (a, b):
            with pytest.raises(ClientError) as refused:
                client.list_collections()
            assert refused.value.response["Error"]["Code"] == "AccessDeniedException"
    verified = run_facegate(other, "audit", "verify")  # one log, written by both servers and the CLI
    assert verified.startswith("intact") and "PostgreSQL" in verified

    store = PostgresStore(on_postgres)  # the faces are in PostgreSQL, not in a data directory
    try:
        assert store.get_collection("org-a", "shared").face_count == 1
    finally:
        store.close()
    for host in (home, other):
        assert not (host / "facegate.sqlite3").exists() and not (host / "audit.sqlite3").exists()


def test_the_cli_and_the_python_api_use_the_store_they_are_given(on_postgres, tmp_path, people):
    home = tmp_path / "data"
    run_facegate(home, "collections", "create", "family")
    run_facegate(home, "index", str(people["Colin_Powell"][0]), "-c", "family")
    with facegate.open(home) as fg:
        assert fg.search(people["Colin_Powell"][1], "family")[0].face.external_image_id.startswith("Colin_Powell")
    with facegate.open(home, store=on_postgres) as fg:
        assert fg.collections() == ["family"]
    # The same data directory on the embedded store (an empty --store) is another, empty deployment.
    assert "family" not in run_facegate(home, "--store", "", "collections", "list")


def test_a_fairness_audit_activated_on_one_host_is_read_by_every_host(on_postgres, shared_keys, tmp_path):
    """The audit of record is governance state: activated through one host, the other host reads it from the
    database (where its gate loads it), with no file copied between them."""
    from .test_policy import synthetic_report

    home, other = tmp_path / "host-1", tmp_path / "host-2"
    run_facegate(home, "keys", "create", "--json")  # sets up the shared governance
    report = tmp_path / "upload" / "report.json"
    report.parent.mkdir()
    report.write_text(json.dumps(synthetic_report(worse_factor=1e6)))
    run_facegate(home, "fairness", "activate", str(report), "--reason", "audit of record")
    report.unlink()
    shutil.rmtree(home / "fairness")  # host 1's copy is on host 1's disk, which host 2 cannot read
    shown = run_facegate(other, "fairness", "show")
    assert "active fairness audit" in shown and "worst group" in shown
    assert not (other / "fairness").exists()  # read from the database, not from this host's files
