"""The audit log on PostgreSQL: one log for every process on every host (each PostgresAuditLog opened here stands
for another process or host: logs on one URL share nothing but the database and the key file), verifiable
offline exactly as the SQLite one, tampering in the database caught, and failing closed."""

from __future__ import annotations

import base64
import io
import multiprocessing
import shutil
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_public_key,
)

from facegate.audit import AuditUnavailable, merkle, verify_export
from facegate.audit.base import create_signing_key, load_signing_key
from facegate.audit.canonical import canonical_json, checkpoint_message
from facegate.errors import FacegateError
from tests.test_audit import _record, assert_proofs_tie
from tests.test_audit_columns import HOUR, MAY_1, RECORDS

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[test]'")
from facegate.audit.postgres import MIGRATION_LOCK, PostgresAuditLog  # noqa: E402


@pytest.fixture
def signing_key(tmp_path: Path) -> Path:
    """The key file every host is configured with."""
    path = tmp_path / "config" / "audit_signing.key"
    path.parent.mkdir()
    create_signing_key(path)
    return path


@pytest.fixture
def log(postgres_url: str, signing_key: Path):
    log = PostgresAuditLog(postgres_url, signing_key)
    yield log
    log.close()


def _exported(log: PostgresAuditLog) -> list[str]:
    out = io.StringIO()
    log.export(out)
    return out.getvalue().splitlines()


def _sql(url: str, statement: str, params: tuple = ()) -> None:
    """What an intruder (or an administrator) with write access to the database would do."""
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(statement, params)


def test_appends_and_proofs_tie_entries_to_checkpoints_signed_with_the_configured_key(log, signing_key):
    first = log.append(_record())
    second = log.append(_record(time=1714521600.25))
    assert (first["seq"], second["seq"]) == (0, 1)
    assert first["prev"] == "0" * 64 and isinstance(first["time"], float)
    assert second["prev"] == merkle.leaf_hash(canonical_json(first)).hex()
    assert second["time"] == 1714521600.25 and second["reason"] == _record()["reason"]
    small = log.checkpoint()
    batch = log.append_many([_record(i=i) for i in range(11)])
    assert [e["seq"] for e in batch] == list(range(2, 13)) and [e["i"] for e in batch] == list(range(11))
    assert batch[0]["prev"] == merkle.leaf_hash(canonical_json(second)).hex()
    big = log.checkpoint()
    assert (small["size"], big["size"], log.size()) == (2, 13, 13)
    assert log.checkpoints() == [small, big]

    assert_proofs_tie(log, second, small, big)
    # The public key is derived from the configured private key; nothing is written beside the key file.
    load_pem_public_key(log.public_key_pem).verify(
        base64.b64decode(big["signature"]), checkpoint_message(big["size"], big["root"], big["time"])
    )
    assert [p.name for p in signing_key.parent.iterdir()] == [signing_key.name]


def test_append_refuses_records_that_set_what_the_log_assigns(log):
    with pytest.raises(ValueError, match="seq"):
        log.append(_record(seq=7))
    with pytest.raises(ValueError, match="not epoch seconds"):
        log.append(_record(time=float("nan")))
    with pytest.raises(ValueError, match="prev"):  # one bad record refuses the batch before anything is written
        log.append_many([_record(), _record(prev="0" * 64)])
    assert log.size() == 0
    assert log.append(_record())["seq"] == 0


def test_an_export_verifies_offline_with_only_the_public_key(log):
    for i in range(30):
        log.append(_record(i=i))
        if i in (9, 19):
            log.checkpoint()
    lines = _exported(log)
    assert len(lines) == 30 + 3
    report = verify_export(lines, log.public_key_pem)
    assert report.ok, report.problems
    assert (report.entries, report.checkpoints, report.size) == (30, 3, 30)
    assert log.verify().ok


def _append_from_another_process(url: str, key: str, writer: str, count: int, barrier) -> None:
    barrier.wait()  # every process opens (and migrates) the empty database at the same moment
    log = PostgresAuditLog(url, Path(key))
    for i in range(count):
        log.append({"event": "request", "writer": writer, "i": i})
    log.checkpoint()
    log.close()


def test_processes_appending_at_once_share_one_contiguous_verifiable_log(postgres_url, signing_key, tmp_path):
    # Each process reads its own copy of the key file, as hosts configured with the same key would.
    keys = []
    for writer in "abcd":
        (tmp_path / writer).mkdir()
        keys.append(shutil.copy(signing_key, tmp_path / writer / "audit_signing.key"))
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    writers = [
        context.Process(target=_append_from_another_process, args=(postgres_url, str(key), writer, 50, barrier))
        for writer, key in zip("abcd", keys, strict=True)
    ]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=300)
        assert process.exitcode == 0

    log = PostgresAuditLog(postgres_url, signing_key)
    entries = list(log.entries())
    assert [e["seq"] for e in entries] == list(range(200))
    for writer in "abcd":
        assert [e["i"] for e in entries if e["writer"] == writer] == list(range(50))
    lines = _exported(log)
    public_key = (
        load_signing_key(signing_key).public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    report = verify_export(lines, public_key)
    assert report.ok, report.problems
    assert (report.entries, report.checkpoints) == (200, 5)
    report = log.verify()
    assert report.ok, report.problems


def test_threads_appending_at_once_share_one_chain(log):
    barrier = threading.Barrier(8)
    errors = []

    def append(writer: int) -> None:
        barrier.wait()
        try:
            for i in range(25):
                log.append({"event": "request", "writer": writer, "i": i})
        except Exception as exc:  # reported to the test, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    entries = list(log.entries())
    assert [e["seq"] for e in entries] == list(range(200))
    for writer in range(8):
        assert [e["i"] for e in entries if e["writer"] == writer] == list(range(25))
    assert log.verify().ok


def _append_in_a_forked_child(log: PostgresAuditLog) -> None:
    log.append({"event": "request", "writer": "child"})
    log.close()  # a worker that shuts down cleanly closes only the connections it opened


def test_a_forked_child_appends_on_its_own_connection_and_leaves_the_parents_alone(log):
    log.append({"event": "request", "writer": "parent"})
    child = multiprocessing.get_context("fork").Process(target=_append_in_a_forked_child, args=(log,))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 0
    log.append({"event": "request", "writer": "parent"})  # on the connection the child inherited and left alone
    assert [(e["seq"], e["writer"]) for e in log.entries()] == [(0, "parent"), (1, "child"), (2, "parent")]


def test_append_fails_closed_while_another_session_holds_the_log(postgres_url, signing_key):
    log = PostgresAuditLog(postgres_url, signing_key, timeout=0.2)
    log.append(_record())
    with psycopg.connect(postgres_url) as blocker:
        blocker.execute("SELECT size FROM audit_tree FOR UPDATE")  # a writer that does not let go
        with pytest.raises(AuditUnavailable) as raised:
            log.append(_record())
        with pytest.raises(AuditUnavailable):
            log.checkpoint()
        blocker.rollback()
    assert isinstance(raised.value, FacegateError)
    assert raised.value.to_wire()["__type"] == "InternalServerError" and raised.value.status == 500
    assert "refused because it could not be audited" in raised.value.message
    assert "lock timeout" in raised.value.message
    # Nothing was half-written: the next append carries on the sequence and the log verifies.
    assert log.append(_record())["seq"] == 1
    assert log.verify().ok


def test_opening_fails_closed_while_another_session_holds_the_migration(postgres_url, signing_key):
    with psycopg.connect(postgres_url) as blocker:
        blocker.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        with pytest.raises(AuditUnavailable, match="lock timeout"):
            PostgresAuditLog(postgres_url, signing_key, timeout=0.2)
        blocker.rollback()
    assert PostgresAuditLog(postgres_url, signing_key, timeout=0.2).size() == 0


def test_a_lost_connection_fails_that_append_closed_and_the_next_reconnects(log, postgres_url):
    log.append(_record())
    _sql(
        postgres_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    with pytest.raises(AuditUnavailable, match="could not be audited"):
        log.append(_record())
    assert log.append(_record())["seq"] == 1
    assert log.verify().ok


def test_an_unreachable_database_fails_closed_naming_it_without_the_password(signing_key):
    url = "postgresql://facegate:s3cret@127.0.0.1:1/facegate"  # nothing listens on port 1
    with pytest.raises(AuditUnavailable) as raised:
        PostgresAuditLog(url, signing_key, timeout=2)
    assert "the audit log in the PostgreSQL database facegate on 127.0.0.1:1 cannot be written" in raised.value.message
    assert "s3cret" not in raised.value.message


def test_a_newer_schema_is_refused(postgres_url, signing_key):
    PostgresAuditLog(postgres_url, signing_key).close()
    _sql(postgres_url, "UPDATE audit_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(AuditUnavailable, match="schema version 99 is newer than this facegate's"):
        PostgresAuditLog(postgres_url, signing_key)


def test_a_host_configured_with_another_key_is_refused(log, postgres_url, tmp_path):
    log.append(_record())
    other = tmp_path / "other.key"
    create_signing_key(other)
    with pytest.raises(ValueError, match=f"is signed by key {log.key_id}, but the configured signing key is"):
        PostgresAuditLog(postgres_url, other)
    assert log.size() == 1 and log.verify().ok


def test_a_signing_key_that_is_missing_or_not_ed25519_is_refused_naming_the_file(postgres_url, tmp_path):
    with pytest.raises(ValueError, match="audit signing key .*none.key cannot be read .*openssl genpkey"):
        PostgresAuditLog(postgres_url, tmp_path / "none.key")
    ec_key = tmp_path / "ec.key"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    )
    with pytest.raises(ValueError, match=r"ec.key is not an Ed25519 key \(ECPrivateKey\)"):
        PostgresAuditLog(postgres_url, ec_key)
    with pytest.raises(ValueError, match="postgresql://"):
        PostgresAuditLog("sqlite:///audit.db", ec_key)


def test_the_log_shares_a_database_with_the_store(postgres_url, signing_key):
    from facegate.store.postgres import MIGRATIONS as STORE_MIGRATIONS
    from facegate.store.postgres import PostgresStore

    log = PostgresAuditLog(postgres_url, signing_key)
    store = PostgresStore(postgres_url)
    try:
        assert store.schema_version() == len(STORE_MIGRATIONS)
        store.create_collection("org-a", "family", "model-1", {})
        log.append(_record())
        assert PostgresAuditLog(postgres_url, signing_key).verify().ok
    finally:
        store.close()
        log.close()


def test_a_value_postgresql_text_cannot_hold_is_kept_in_the_record(log):
    log.append(_record(organisation="org\x00a"))
    assert [e["seq"] for e in log.entries(organisation="org\x00a")] == [0]
    assert log.verify().ok


# --- Tampering with the database


@pytest.fixture
def tampered(log, postgres_url):
    """The log of test_audit_columns' records, one hour apart, checkpointed, and a way to edit its rows."""
    for i, record in enumerate(RECORDS):
        log.append({**record, "operation": "SearchFacesByImage", "time": MAY_1 + i * HOUR})
    log.checkpoint()

    def edit(seq: int, column: str, value: object) -> None:
        _sql(postgres_url, f"UPDATE audit_entries SET {column} = %s WHERE seq = %s", (value, seq))

    return log, edit


def test_rewriting_a_record_in_the_database_fails_verify(tampered):
    log, edit = tampered
    assert log.verify().ok
    record = dict(next(log.entries(since=MAY_1 + 2 * HOUR, limit=1)), organisation="org-z")
    edit(2, "record", canonical_json(record))
    report = log.verify()
    assert not report.ok
    assert "entry 2 was altered: its hash does not match entry 3's prev" in report.problems


def test_rewriting_the_newest_record_is_caught_by_the_checkpoint_root(tampered):
    log, edit = tampered
    record = dict(list(log.entries())[-1], decision="allow")
    edit(5, "record", canonical_json(record))
    assert any("does not match the entries (root mismatch)" in p for p in log.verify().problems)


@pytest.mark.parametrize(
    ("column", "forged"),
    [
        ("decision", "allow"),
        ("organisation", "org-x"),
        ("purpose", "research"),
        ("event", "policy_change"),
        ("time", MAY_1 + 1000 * HOUR),
    ],
)
def test_editing_a_query_column_fails_verify_and_does_not_hide_the_denial(tampered, column, forged):
    log, edit = tampered
    edit(3, column, forged)
    report = log.verify()
    assert not report.ok
    assert any(p.startswith(f"entry 3: the {column} column says {forged!r}") for p in report.problems), report.problems
    assert [e["seq"] for e in log.entries(decision="deny")] == [1, 3]


def test_editing_the_leaf_hash_column_that_proofs_read_fails_verify(tampered):
    log, edit = tampered
    edit(2, "leaf_hash", b"\x00" * 32)
    assert log.verify().problems == [
        "entry 2: the leaf_hash column is not the hash of the signed record (proofs read it)"
    ]


def test_entries_filters_and_limit_apply_to_the_records(tampered):
    log, _ = tampered
    assert [e["seq"] for e in log.entries(organisation="org-b", decision="deny")] == [1, 3]
    assert [e["seq"] for e in log.entries(decision="deny", limit=1)] == [1]
    assert [e["seq"] for e in log.entries(purpose="marketing", since=MAY_1 + 3.5 * HOUR)] == [4]
    assert [e["seq"] for e in log.entries(event="policy_change", until=MAY_1 + 2 * HOUR)] == []
    assert list(log.entries(limit=0)) == []
