"""The audit log: Merkle hashing against the RFC 6962 definitions, appends from several processes, every kind
of tampering caught by the verifier and by `facegate audit verify`, `audit show` filters, and failing closed."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import multiprocessing
import os
import resource
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from facegate.audit import AuditLog, AuditUnavailable, merkle, verify_export
from facegate.audit.canonical import canonical_json, checkpoint_message, key_id
from facegate.audit.commands import audit_app
from facegate.errors import FacegateError

runner = CliRunner()

# --- Merkle tree: an independent implementation, straight from the recursive definitions of RFC 6962 §2.1.

LEAVES = [hashlib.sha256(b"\x00" + f"leaf {i}".encode()).digest() for i in range(70)]


def _largest_power_of_two_below(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@cache
def _mth(lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) over LEAVES."""
    if hi == lo:
        return hashlib.sha256(b"").digest()
    if hi - lo == 1:
        return LEAVES[lo]
    k = _largest_power_of_two_below(hi - lo)
    return hashlib.sha256(b"\x01" + _mth(lo, lo + k) + _mth(lo + k, hi)).digest()


def _path(m: int, lo: int, hi: int) -> list[bytes]:
    """PATH(m, D[lo:hi])."""
    if hi - lo <= 1:
        return []
    k = _largest_power_of_two_below(hi - lo)
    if m < k:
        return _path(m, lo, lo + k) + [_mth(lo + k, hi)]
    return _path(m - k, lo + k, hi) + [_mth(lo, lo + k)]


def _subproof(m: int, lo: int, hi: int, whole: bool) -> list[bytes]:
    """SUBPROOF(m, D[lo:hi], b)."""
    if m == hi - lo:
        return [] if whole else [_mth(lo, hi)]
    k = _largest_power_of_two_below(hi - lo)
    if m <= k:
        return _subproof(m, lo, lo + k, whole) + [_mth(lo + k, hi)]
    return _subproof(m - k, lo + k, hi, False) + [_mth(lo, lo + k)]


def _flip(node: bytes) -> bytes:
    return bytes([node[0] ^ 1]) + node[1:]


def test_roots_match_the_rfc_definition_and_the_compact_range_for_sizes_0_to_70():
    frontier = merkle.CompactRange()
    for n in range(71):
        assert merkle.root(LEAVES[:n]) == _mth(0, n)
        assert frontier.root() == _mth(0, n)
        stored = merkle.CompactRange.from_bytes(frontier.size, frontier.to_bytes())
        assert stored.root() == _mth(0, n)
        if n < 70:
            frontier.append(LEAVES[n])


def test_roots_match_the_published_rfc6962_test_vectors():
    data = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43", bytes(range(0x50, 0x58))]
    data.append(bytes(range(0x60, 0x70)))
    leaves = [merkle.leaf_hash(d) for d in data]
    assert merkle.root([]).hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert merkle.root(leaves[:1]).hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    assert merkle.root(leaves[:5]).hex() == "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"
    assert merkle.root(leaves).hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


def test_inclusion_proofs_match_the_rfc_and_verify_only_for_the_right_leaf_root_and_size():
    for n in range(1, 71):
        root = _mth(0, n)
        for m in range(n):
            proof = merkle.inclusion_proof(LEAVES, m, n)
            assert proof == _path(m, 0, n)
            assert merkle.verify_inclusion(LEAVES[m], m, n, proof, root)
            assert not merkle.verify_inclusion(LEAVES[(m + 1) % 70], m, n, proof, root)
            assert not merkle.verify_inclusion(LEAVES[m], m, n, proof, _mth(0, n - 1))
            assert not merkle.verify_inclusion(LEAVES[m], m, 2 * n, proof, root)
            assert not merkle.verify_inclusion(LEAVES[m], n, n, proof, root)
            if proof:
                assert not merkle.verify_inclusion(LEAVES[m], m, n, proof[:-1], root)
                assert not merkle.verify_inclusion(LEAVES[m], m, n, [*proof, proof[0]], root)
                assert not merkle.verify_inclusion(LEAVES[m], m, n, [_flip(proof[0]), *proof[1:]], root)


def test_consistency_proofs_match_the_rfc_and_verify_only_for_the_right_roots_and_sizes():
    for n in range(71):
        for m in range(n + 1):
            proof = merkle.consistency_proof(LEAVES, m, n)
            assert proof == ([] if m in (0, n) else _subproof(m, 0, n, True))
            assert merkle.verify_consistency(m, n, _mth(0, m), _mth(0, n), proof)
            if 0 < m < n:
                assert not merkle.verify_consistency(m, n, _mth(0, m - 1), _mth(0, n), proof)
                assert not merkle.verify_consistency(m, n, _mth(0, m), _mth(0, n - 1), proof)
                assert not merkle.verify_consistency(m, 2 * n, _mth(0, m), _mth(0, n), proof)
                assert not merkle.verify_consistency(m + 1, n, _mth(0, m), _mth(0, n), proof)
                assert not merkle.verify_consistency(m, n, _mth(0, m), _mth(0, n), proof[:-1])
                assert not merkle.verify_consistency(m, n, _mth(0, m), _mth(0, n), [_flip(proof[0]), *proof[1:]])
    assert not merkle.verify_consistency(5, 4, _mth(0, 5), _mth(0, 4), [])


# --- The log


def _record(**fields: object) -> dict:
    record = {
        "event": "request",
        "access_key": "AKIAEXAMPLE",
        "organisation": "org-a",
        "use_case": "missing-persons",
        "purpose": "investigation",
        "case_reference": "case-42",
        "operation": "SearchFacesByImage",
        "collection": "family",
        "collection_size": 120,
        "threshold_requested": 80.0,
        "threshold_applied": 95.0,
        "image_sha256": hashlib.sha256(b"probe").hexdigest(),
        "faces_found": 1,
        "matches": [{"face_id": "0b683aed-a0f1-48b2-9b5e-139e9cc2a757", "similarity": 99.25}],
        "decision": "allow",
        "policies": ["p-purpose", "p-threshold"],
        "policy_set_hash": "ab" * 32,
        "model_version": "dlib-resnet-v1",
        "latency_ms": 12.5,
        "reason": "Zoë's case — ünïcode stays UTF-8",
    }
    record.update(fields)
    return record


def assert_proofs_tie(log, second: dict, small: dict, big: dict) -> None:
    """In a 13-entry log checkpointed at 2 (``small``) and 13 (``big``): the second entry's inclusion proof
    verifies against the big root, and the consistency proof from 2 ties the small root to it."""
    proof = log.inclusion_proof(1)
    assert proof["leaf_hash"] == merkle.leaf_hash(canonical_json(second)).hex()
    hashes = [bytes.fromhex(h) for h in proof["proof"]]
    assert merkle.verify_inclusion(bytes.fromhex(proof["leaf_hash"]), 1, 13, hashes, bytes.fromhex(big["root"]))
    consistency = log.consistency_proof(2)
    hashes = [bytes.fromhex(h) for h in consistency["proof"]]
    assert merkle.verify_consistency(2, 13, bytes.fromhex(small["root"]), bytes.fromhex(big["root"]), hashes)


def test_append_assigns_seq_time_and_prev_and_proofs_tie_entries_to_checkpoints(tmp_path):
    log = AuditLog(tmp_path / "data")
    first = log.append(_record())
    second = log.append(_record(time=1714521600.25))
    assert (first["seq"], second["seq"]) == (0, 1)
    assert first["prev"] == "0" * 64 and isinstance(first["time"], float)
    assert second["prev"] == merkle.leaf_hash(canonical_json(first)).hex()
    assert second["time"] == 1714521600.25
    small = log.checkpoint()
    for _ in range(11):
        log.append(_record())
    big = log.checkpoint()
    assert (small["size"], big["size"], log.size()) == (2, 13, 13)

    assert_proofs_tie(log, second, small, big)
    # A signature over the documented message verifies with the published key.
    assert (tmp_path / "data" / "audit_signing.key").stat().st_mode & 0o777 == 0o600
    published = (tmp_path / "data" / "audit_public.pem").read_bytes()
    assert published == log.public_key_pem
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    load_pem_public_key(published).verify(
        base64.b64decode(big["signature"]), checkpoint_message(big["size"], big["root"], big["time"])
    )


def test_append_refuses_records_that_set_what_the_log_assigns(tmp_path):
    log = AuditLog(tmp_path / "data")
    with pytest.raises(ValueError, match="seq"):
        log.append(_record(seq=7))
    with pytest.raises(ValueError, match="time"):
        log.append(_record(time="yesterday"))
    for unstorable in (float("nan"), float("inf"), 10**400):  # the time column is a double
        with pytest.raises(ValueError, match="not epoch seconds"):
            log.append(_record(time=unstorable))
    assert log.size() == 0
    assert log.append(_record())["seq"] == 0  # a refused record leaves later appends working


def test_append_many_writes_the_records_in_order_in_one_chain(tmp_path):
    log = AuditLog(tmp_path / "data")
    first = log.append(_record())
    batch = log.append_many([_record(i=i) for i in range(5)])
    assert [e["seq"] for e in batch] == [1, 2, 3, 4, 5] and [e["i"] for e in batch] == list(range(5))
    assert batch[0]["prev"] == merkle.leaf_hash(canonical_json(first)).hex()
    for earlier, later in zip(batch, batch[1:], strict=False):
        assert later["prev"] == merkle.leaf_hash(canonical_json(earlier)).hex()
    assert log.append_many([]) == []
    with pytest.raises(ValueError, match="seq"):  # one bad record refuses the batch before anything is written
        log.append_many([_record(), _record(seq=1)])
    assert log.size() == 6


def _append_many(home: str, writer: str, count: int, barrier) -> None:
    barrier.wait()  # both processes create the log and its key at the same moment
    log = AuditLog(Path(home))
    for i in range(count):
        log.append({"event": "request", "writer": writer, "i": i})
    log.checkpoint()


def test_two_processes_appending_at_once_share_one_contiguous_verifiable_log(tmp_path):
    home = tmp_path / "data"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    writers = [context.Process(target=_append_many, args=(str(home), w, 200, barrier)) for w in ("a", "b")]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=300)
        assert process.exitcode == 0

    log = AuditLog(home)
    entries = list(log.entries())
    assert [e["seq"] for e in entries] == list(range(400))
    for writer in ("a", "b"):
        assert [e["i"] for e in entries if e["writer"] == writer] == list(range(200))
    exported = io.StringIO()
    assert log.export(exported) == 400
    report = verify_export(exported.getvalue().splitlines(), (home / "audit_public.pem").read_bytes())
    # Both writers' checkpoints verify with the one published key: the key race had a single winner.
    assert report.ok, report.problems
    assert (report.entries, report.checkpoints) == (400, 3)
    assert sorted(p.name for p in home.iterdir() if p.name.startswith(".")) == []


# --- Tampering: each alteration of an export is named by verify_export and fails `audit verify`.


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> tuple[list[dict], bytes]:
    """A 30-entry log with checkpoints at sizes 10, 20 and 30, exported and parsed."""
    home = tmp_path_factory.mktemp("audit") / "data"
    log = AuditLog(home)
    for i in range(30):
        log.append(_record(organisation="org-a" if i % 2 else "org-b", i=i))
        if i in (9, 19):
            log.checkpoint()
    text = io.StringIO()
    log.export(text)
    return [json.loads(line) for line in text.getvalue().splitlines()], log.public_key_pem


def _entries(lines: list[dict]) -> list[dict]:
    return [line["entry"] for line in lines if line["kind"] == "entry"]


def _checkpoints(lines: list[dict]) -> list[dict]:
    return [line for line in lines if line["kind"] == "checkpoint"]


def _leaf(entry: dict) -> bytes:
    return merkle.leaf_hash(canonical_json(entry))


def _alter(lines):
    _entries(lines)[12]["organisation"] = "org-z"


def _alter_newest(lines):
    _entries(lines)[29]["decision"] = "deny"


def _remove(lines):
    lines.remove(lines[7])


def _insert_duplicate(lines):
    forged = dict(_entries(lines)[15], organisation="org-forged", prev=_leaf(_entries(lines)[14]).hex())
    lines.insert(15, {"kind": "entry", "entry": forged})


def _insert_and_rechain(lines):
    """A careful forger: renumbers every later entry and rebuilds the prev chain; only checkpoints catch it."""
    entries = _entries(lines)
    forged = dict(entries[15], organisation="org-forged")
    entries.insert(15, forged)
    for seq in range(15, len(entries)):
        entries[seq]["seq"] = seq
        entries[seq]["prev"] = _leaf(entries[seq - 1]).hex()
    lines[:] = [{"kind": "entry", "entry": e} for e in entries] + _checkpoints(lines)


def _swap(lines):
    lines[5], lines[6] = lines[6], lines[5]


def _truncate(lines):
    del lines[27:30]


def _truncate_with_checkpoint(lines):
    del lines[32]
    del lines[25:30]


def _forge_signature(lines):
    _checkpoints(lines)[1]["signature"] = base64.b64encode(os.urandom(64)).decode()


def _alter_checkpoint_root(lines):
    _checkpoints(lines)[0]["root"] = merkle.root([]).hex()


def _resign(lines, *, announce_new_key: bool):
    """Re-sign every checkpoint with another key (after, say, rewriting history)."""
    other = Ed25519PrivateKey.generate()
    for checkpoint in _checkpoints(lines):
        message = checkpoint_message(checkpoint["size"], checkpoint["root"], checkpoint["time"])
        checkpoint["signature"] = base64.b64encode(other.sign(message)).decode()
        if announce_new_key:
            checkpoint["key_id"] = key_id(other.public_key())


TAMPERING = {
    "altered": (_alter, "entry 12 was altered: its hash does not match entry 13's prev"),
    "newest altered": (_alter_newest, "checkpoint 3 (line 33, size 30) does not match the entries (root mismatch)"),
    "removed": (_remove, "entry 7 missing: seq jumps from 6 to 8"),
    "inserted": (_insert_duplicate, "entry 15 appears 2 times (lines 16, 17)"),
    "inserted and rechained": (_insert_and_rechain, "checkpoint 2 (line 33, size 20) does not match the entries"),
    "swapped": (_swap, "entries out of order: entry 5 (line 7) comes after entry 6"),
    "truncated": (_truncate, "covers 30 entries but the export holds 27: entries 27–29 missing (truncated)"),
    "truncated with its checkpoint": (_truncate_with_checkpoint, "entries 20–24 are not covered by any"),
    "forged signature": (_forge_signature, "bad signature on checkpoint 2 (line 32, size 20)"),
    "checkpoint root altered": (_alter_checkpoint_root, "bad signature on checkpoint 1 (line 31, size 10)"),
    "re-signed, new key id": (
        lambda lines: _resign(lines, announce_new_key=True),
        "checkpoint 1 (line 31, size 10) was signed by key",
    ),
    "re-signed, old key id": (
        lambda lines: _resign(lines, announce_new_key=False),
        "bad signature on checkpoint 3 (line 33, size 30)",
    ),
}


def _write(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return path


def test_an_intact_export_verifies_offline_and_with_the_command(export, tmp_path):
    lines, public_key = export
    report = verify_export([json.dumps(line) for line in lines], public_key)
    assert report.ok, report.problems
    assert (report.entries, report.checkpoints, report.size) == (30, 3, 30)
    (tmp_path / "key.pem").write_bytes(public_key)
    args = ["verify", "--log", str(_write(tmp_path / "log.jsonl", lines)), "--public-key", str(tmp_path / "key.pem")]
    result = runner.invoke(audit_app, args)
    assert result.exit_code == 0, result.output
    assert "intact" in result.output and "30 entries" in result.output


@pytest.mark.parametrize("case", TAMPERING, ids=list(TAMPERING))
def test_tampering_with_an_export_is_named_by_the_verifier_and_fails_the_command(export, tmp_path, case):
    lines, public_key = export
    tamper, expected = TAMPERING[case]
    lines = json.loads(json.dumps(lines))
    tamper(lines)
    report = verify_export([json.dumps(line, ensure_ascii=False) for line in lines], public_key)
    assert not report.ok
    assert any(expected in problem for problem in report.problems), report.problems

    (tmp_path / "key.pem").write_bytes(public_key)
    args = ["verify", "--log", str(_write(tmp_path / "log.jsonl", lines)), "--public-key", str(tmp_path / "key.pem")]
    result = runner.invoke(audit_app, args)
    assert result.exit_code == 1
    assert "NOT intact" in result.output and expected in result.output


def test_a_rewrite_that_keeps_the_chain_is_caught_only_by_checkpoints(export):
    lines, public_key = export
    lines = json.loads(json.dumps(lines))
    _insert_and_rechain(lines)
    problems = verify_export([json.dumps(line) for line in lines], public_key).problems
    assert all("checkpoint" in problem for problem in problems), problems


def test_an_intact_export_fails_against_another_public_key(export):
    lines, _ = export
    other = Ed25519PrivateKey.generate().public_key()
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    pem = other.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    report = verify_export([json.dumps(line) for line in lines], pem)
    assert not report.ok
    assert any("not by the given public key" in problem for problem in report.problems)


@pytest.fixture
def live(tmp_path) -> Path:
    home = tmp_path / "data"
    log = AuditLog(home)
    for i in range(12):
        log.append(_record(i=i))
    log.checkpoint()
    log.close()
    return home


def _rewrite_record(home: Path, seq: int) -> None:
    """What an intruder with write access to the database file would do."""
    with sqlite3.connect(home / "audit.sqlite3") as db:
        record = json.loads(db.execute("SELECT record FROM entries WHERE seq = ?", (seq,)).fetchone()[0])
        record["decision"] = "deny"
        db.execute("UPDATE entries SET record = ? WHERE seq = ?", (canonical_json(record), seq))


def test_the_live_log_verifies_until_a_row_is_rewritten_in_the_database(live):
    result = runner.invoke(audit_app, ["verify", "--data", str(live)])
    assert result.exit_code == 0, result.output
    _rewrite_record(live, 4)
    result = runner.invoke(audit_app, ["verify", "--data", str(live)])
    assert result.exit_code == 1
    assert "entry 4 was altered: its hash does not match entry 5's prev" in result.output


def test_rewriting_the_newest_row_in_the_database_is_caught_by_the_root(live):
    _rewrite_record(live, 11)
    result = runner.invoke(audit_app, ["verify", "--data", str(live)])
    assert result.exit_code == 1
    assert "size 12) does not match the entries (root mismatch)" in result.output


def test_export_command_writes_a_file_that_verifies_offline(live, tmp_path):
    out = tmp_path / "export.jsonl"
    result = runner.invoke(audit_app, ["export", "--data", str(live), "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["entry"] * 12 + ["checkpoint"] * 2
    args = ["verify", "--log", str(out), "--public-key", str(live / "audit_public.pem")]
    assert runner.invoke(audit_app, args).exit_code == 0


# What an auditor's machine lacks: facegate's face models, its server and its command line.
_ABSENT = [
    "numpy",
    "dlib",
    "onnxruntime",
    "PIL",
    "usearch",
    "cedarpy",
    "starlette",
    "typer",
    "rich",
    "botocore",
    "scipy",
    "matplotlib",
    "onnx",
]

_AUDITOR = f"""
import json, sys

class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {_ABSENT!r}:
            raise ImportError(f"No module named {{name!r}} (not installed on the auditor's machine)")
        return None

sys.meta_path.insert(0, Absent())

import facegate.audit.verify

with open(sys.argv[1], encoding="utf-8") as lines, open(sys.argv[2], "rb") as key:
    report = facegate.audit.verify.verify_export(lines, key.read())
try:
    facegate.open
    face_api = "imported"
except ImportError:
    face_api = "absent"
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in {_ABSENT!r})
print(json.dumps({{"ok": report.ok, "entries": report.entries, "face_api": face_api, "loaded": loaded}}))
"""


def test_an_auditor_verifies_an_export_with_only_cryptography_installed(live, tmp_path):
    exported = tmp_path / "export.jsonl"
    with exported.open("w", encoding="utf-8") as file:
        AuditLog(live).export(file)
    command = [sys.executable, "-c", _AUDITOR, str(exported), str(live / "audit_public.pem")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    # face_api "absent": the blocked modules really were missing, yet the verifier imported and ran.
    assert json.loads(result.stdout) == {"ok": True, "entries": 12, "face_api": "absent", "loaded": []}


def test_verify_reports_a_missing_file_in_one_line(tmp_path):
    result = runner.invoke(audit_app, ["verify", "--log", str(tmp_path / "none.jsonl"), "--data", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: file not found") and "Traceback" not in result.output


# --- show


MAY_1 = datetime(2024, 5, 1, tzinfo=UTC).timestamp()
DAY = 86400.0


@pytest.fixture
def shown(tmp_path) -> Path:
    home = tmp_path / "data"
    log = AuditLog(home)
    rows = [
        ("org-a", "investigation", "allow", MAY_1),
        ("org-a", "marketing", "deny", MAY_1 + 3600),
        ("org-b", "investigation", "allow", MAY_1 + DAY),
        ("org-b", "investigation", "error", MAY_1 + 2 * DAY),
        ("org-a", "investigation", "allow", MAY_1 + 3 * DAY),
    ]
    for organisation, purpose, decision, when in rows:
        log.append(_record(organisation=organisation, purpose=purpose, decision=decision, time=when))
    log.append({"event": "policy_change", "organisation": "org-a", "time": MAY_1 + 4 * DAY})
    return home


def _show(home: Path, *args: str) -> list[int]:
    result = runner.invoke(audit_app, ["show", "--data", str(home), "--json", *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line)["seq"] for line in result.stdout.splitlines()]


def test_show_filters_by_organisation_purpose_decision_event_and_time(shown):
    assert _show(shown) == [0, 1, 2, 3, 4, 5]
    assert _show(shown, "--org", "org-a") == [0, 1, 4, 5]
    assert _show(shown, "--purpose", "marketing") == [1]
    assert _show(shown, "--decision", "deny") == [1]
    assert _show(shown, "--decision", "error") == [3]
    assert _show(shown, "--org", "org-b", "--decision", "allow") == [2]
    assert _show(shown, "--event", "policy_change") == [5]
    assert _show(shown, "--since", "2024-05-02") == [2, 3, 4, 5]
    assert _show(shown, "--until", "2024-05-02T00:00:00Z") == [0, 1]
    assert _show(shown, "--since", "2024-05-01T00:30:00+00:00", "--until", "2024-05-03") == [1, 2]
    assert _show(shown, "--org", "org-a", "--limit", "2") == [0, 1]


def test_show_prints_a_table_of_the_matching_entries(shown):
    result = runner.invoke(audit_app, ["show", "--data", str(shown), "--org", "org-b"])
    assert result.exit_code == 0, result.output
    assert result.output.count("org-b") == 2 and "org-a" not in result.output
    assert "2024-05-02 00:00:00" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--decision", "maybe"], "--decision 'maybe' is not one of: allow, deny, error"),
        (["--since", "last tuesday"], "--since 'last tuesday' is not an ISO 8601 time"),
    ],
)
def test_show_rejects_bad_filters_in_one_line(shown, args, message):
    result = runner.invoke(audit_app, ["show", "--data", str(shown), *args])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {message}") and result.output.count("\n") == 1


def test_reading_commands_do_not_create_a_log_where_there_is_none(tmp_path):
    result = runner.invoke(audit_app, ["show", "--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "no audit log in" in result.output
    assert not (tmp_path / "nowhere").exists()


# --- Failing closed


def test_append_fails_closed_while_another_writer_holds_the_log(tmp_path):
    log = AuditLog(tmp_path / "data", timeout=0.1)
    log.append(_record())
    blocker = sqlite3.connect(log.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(AuditUnavailable) as raised:
            log.append(_record())
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert isinstance(raised.value, FacegateError)
    assert raised.value.to_wire()["__type"] == "InternalServerError" and raised.value.status == 500
    assert "refused because it could not be audited" in raised.value.message
    # Nothing was half-written: the next append carries on the sequence and the log verifies.
    assert log.append(_record())["seq"] == 1
    exported = io.StringIO()
    log.export(exported)
    assert verify_export(exported.getvalue().splitlines(), log.public_key_pem).ok


def _append_until_the_disk_is_full(home: str, results) -> None:
    """Runs in a child process: cap the size of files it may write (RLIMIT_FSIZE binds root too) at the WAL's
    current size, so the next commit hits EFBIG exactly as a full disk would refuse it."""
    log = AuditLog(Path(home))
    for _ in range(3):
        log.append(_record())
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get the write error instead of being killed
    wal = Path(home) / "audit.sqlite3-wal"
    resource.setrlimit(resource.RLIMIT_FSIZE, (wal.stat().st_size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    written = 3
    try:
        for _ in range(200):
            log.append(_record())
            written += 1
    except AuditUnavailable as exc:
        results.put(("unavailable", written, exc.message))
    else:
        results.put(("written", written, ""))


def test_append_fails_closed_when_the_disk_refuses_the_write(tmp_path):
    home = tmp_path / "data"
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_append_until_the_disk_is_full, args=(str(home), results))
    child.start()
    outcome, written, message = results.get(timeout=120)
    child.join(timeout=60)
    assert outcome == "unavailable", f"{written} appends succeeded past the file size limit"
    assert "could not be audited" in message
    # Every append that returned is durable, the refused one left nothing behind, and the log still verifies.
    log = AuditLog(home)
    assert log.size() == written
    exported = io.StringIO()
    log.export(exported)
    assert verify_export(exported.getvalue().splitlines(), log.public_key_pem).ok
