"""One governed path for every caller (issue 12): the CLI and the Python API are gated and audited like HTTP,
every CLI failure exits non-zero, and nothing but the governed operation runs a service operation."""

from __future__ import annotations

import ast
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

import facegate
from facegate.errors import AccessDeniedException

SRC = Path(__file__).resolve().parents[1] / "src" / "facegate"
FACEGATE = Path(sys.executable).with_name("facegate")


def run(home: Path, *args: str) -> subprocess.CompletedProcess:
    """The installed `facegate` command, as a user's shell runs it."""
    if not FACEGATE.exists():
        pytest.skip(f"the facegate command is not installed beside {sys.executable}")
    env = {**os.environ, "FACEGATE_HOME": str(home)}
    return subprocess.run([str(FACEGATE), *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture
def home(tmp_path, people) -> Path:
    """A data directory with one collection of real faces, made through the CLI."""
    home = tmp_path / "data"
    assert run(home, "collections", "create", "family").returncode == 0
    indexed = run(home, "index", str(people["Tony_Blair"][0]), str(people["Colin_Powell"][0]), "-c", "family")
    assert indexed.returncode == 0, indexed.stderr
    return home


def _denials(home: Path) -> list[dict]:
    with sqlite3.connect(home / "audit.sqlite3") as db:
        records = [json.loads(r[0]) for r in db.execute("SELECT record FROM entries ORDER BY seq")]
    return [r for r in records if r.get("event") == "request" and r.get("decision") == "deny"]


def test_the_kill_switch_stops_the_cli_and_the_python_api(home, people):
    probe = str(people["Tony_Blair"][1])
    assert run(home, "search", probe, "-c", "family").returncode == 0
    assert run(home, "policies", "activate", "kill-switch", "--reason", "drill").returncode == 0

    refused = run(home, "search", probe, "-c", "family")
    assert refused.returncode == 1
    assert "AccessDeniedException" in refused.stderr and "kill-switch" in refused.stderr
    compare = run(home, "compare", probe, str(people["Tony_Blair"][2]))
    assert compare.returncode == 1 and "kill-switch" in compare.stderr

    with facegate.open(home) as fg, pytest.raises(AccessDeniedException, match="kill-switch"):
        fg.search(probe, "family")
    actors = [d["actor"] for d in _denials(home)]
    assert actors.count("local-cli") == 2 and actors.count("local-python-api") == 1

    assert run(home, "policies", "deactivate", "kill-switch", "--reason", "drill over").returncode == 0
    with facegate.open(home) as fg:
        assert fg.search(probe, "family")[0].face.external_image_id.startswith("Tony_Blair")


def test_revoking_the_organisation_stops_its_operator(tmp_path, people):
    home = tmp_path / "data"
    assert run(home, "orgs", "create", "acme", "--category", "commercial").returncode == 0
    assert run(home, "--org", "acme", "collections", "create", "staff").returncode == 0
    assert run(home, "--org", "acme", "index", str(people["Colin_Powell"][0]), "-c", "staff").returncode == 0
    assert run(home, "orgs", "revoke", "acme", "--reason", "contract ended").returncode == 0

    for args in (["search", str(people["Colin_Powell"][1]), "-c", "staff"], ["collections", "list"]):
        refused = run(home, "--org", "acme", *args)
        assert refused.returncode == 1 and "revocation" in refused.stderr, refused.stderr
    with facegate.open(home, owner="acme") as fg, pytest.raises(AccessDeniedException, match="revocation"):
        fg.index(people["Colin_Powell"][2], "staff")
    with facegate.open(home, owner="acme") as fg, pytest.raises(AccessDeniedException, match="revocation"):
        fg.collections()
    # Another organisation's operator is unaffected.
    assert run(home, "collections", "list").returncode == 0


def test_the_python_api_audits_what_it_does(tmp_path, people):
    home = tmp_path / "data"
    with facegate.open(home) as fg:
        fg.create_collection("c")
        fg.index(people["Tony_Blair"][0], "c", external_image_id="tony")
        assert fg.search(people["Tony_Blair"][1], "c")[0].face.external_image_id == "tony"
    with sqlite3.connect(home / "audit.sqlite3") as db:
        records = [json.loads(r[0]) for r in db.execute("SELECT record FROM entries ORDER BY seq")]
    requests = [(r["operation"], r["decision"]) for r in records if r.get("event") == "request"]
    assert requests == [("CreateCollection", "allow"), ("IndexFaces", "allow"), ("SearchFacesByImage", "allow")]
    assert {r["actor"] for r in records if r.get("event") in ("request", "intent")} == {"local-python-api"}
    assert [r["operation"] for r in records if r.get("event") == "intent"] == ["CreateCollection", "IndexFaces"]


# Exit codes: 1 for a user error, 2 for usage, 0 only for success; `audit verify` 0 only when intact.

USER_ERRORS = [
    ["collections", "describe", "nope"],
    ["collections", "retention", "nope", "--max-days", "1", "--reason", "x"],
    ["faces", "list", "-c", "nope"],
    ["faces", "delete", "-c", "nope", "11111111-1111-1111-1111-111111111111"],
    ["users", "list", "-c", "nope"],
    ["users", "create", "-c", "nope", "u"],
    ["keys", "revoke", "AKIANOSUCHKEY0000000", "--reason", "x"],
    ["orgs", "revoke", "nobody", "--reason", "x"],
    ["usecases", "revoke", "uc-nope", "--reason", "x"],
    ["policies", "activate", "no-such-template", "--reason", "x"],
    ["audit", "verify", "--log", "/nonexistent/export.jsonl"],
    ["audit", "show", "--decision", "maybe"],
    ["fairness", "show"],
    ["index", "/nonexistent", "-c", "nope"],
    ["search", "/nonexistent.jpg", "-c", "family"],
    ["compare", "/nonexistent.jpg", "/nonexistent.jpg"],
    ["detect", "/nonexistent.jpg"],
]
USAGE_ERRORS = [
    ["collections", "frobnicate"],
    ["faces", "frobnicate"],
    ["users", "frobnicate"],
    ["keys", "frobnicate"],
    ["orgs", "frobnicate"],
    ["usecases", "frobnicate"],
    ["policies", "frobnicate"],
    ["retention", "frobnicate"],
    ["report", "frobnicate"],
    ["audit", "frobnicate"],
    ["fairness", "frobnicate"],
    ["serve", "--port", "not-a-port"],
    ["search"],
    ["--no-such-option"],
]


@pytest.mark.parametrize("args", USER_ERRORS, ids=" ".join)
def test_every_user_error_exits_1_with_one_line(tmp_path, args):
    result = run(tmp_path / "data", *args)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", USAGE_ERRORS, ids=" ".join)
def test_every_usage_error_exits_2(tmp_path, args):
    result = run(tmp_path / "data", *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr


def test_audit_verify_exits_0_only_when_the_log_is_intact(home):
    assert run(home, "audit", "verify").returncode == 0
    with sqlite3.connect(home / "audit.sqlite3") as db:
        seq, record = db.execute("SELECT seq, record FROM entries WHERE seq = 1").fetchone()
        db.execute("UPDATE entries SET record = ? WHERE seq = ?", (bytes(record).replace(b"allow", b"deny"), seq))
    altered = run(home, "audit", "verify")
    assert altered.returncode == 1 and "NOT intact" in altered.stdout + altered.stderr


# Nothing but the governed operation may run a service operation.

GOVERNED = {"governed.py", "service.py"}
SERVICE_OPERATIONS = {"call", "index_many", "analyse_video"}


def _direct_calls(source: str, name: str) -> list[str]:
    """Calls of ``.call``/``.index_many`` on anything named like a service in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SERVICE_OPERATIONS:
            receiver = ast.unparse(node.func.value).lower()
            if "service" in receiver or "searcher" in receiver:
                found.append(f"{name}:{node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_no_caller_but_the_governed_operation_runs_a_service_operation():
    """Every module of facegate but governed.py (and the service itself): a direct service call there is a path
    that skips the gate and the audit."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if not (path.name in GOVERNED and path.parent == SRC):
            offenders += _direct_calls(path.read_text(), str(path.relative_to(SRC)))
    assert offenders == []


def test_the_scan_would_catch_a_direct_call():
    """Not vacuous: the scan finds what the CLI and the ACLU experiment wrote before issue 12."""
    before = (
        "def call(operation, params):\n"
        "    return state.service.call(state.owner, operation, params)\n"
        "def search(params):\n"
        "    return _searcher.call(DEFAULT_OWNER, 'SearchFacesByImage', params)\n"
    )
    assert len(_direct_calls(before, "cli.py")) == 2


# Changes and their audit records cannot diverge.


@pytest.fixture
def governed(tmp_path, engine):
    from facegate.audit import AuditLog
    from facegate.governance import Governance
    from facegate.governed import GovernedService
    from facegate.keys import KeyRing
    from facegate.service import FaceService
    from facegate.store.sqlite import SqliteStore

    home = tmp_path / "data"
    store = SqliteStore(home)
    audit = AuditLog(home, timeout=0.5)
    governed = GovernedService(Governance(store, KeyRing(store, home), audit), FaceService(store, engine))
    yield governed
    audit.close()
    store.close()


def _records(governed) -> list[dict]:
    return list(governed.governance.audit.entries())


def test_a_change_whose_intent_cannot_be_audited_is_refused_before_it_happens(governed):
    from facegate.audit import AuditUnavailable
    from facegate.keys import Principal

    operator = Principal.operator("org-a")
    blocker = sqlite3.connect(governed.governance.audit.path, isolation_level=None, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the log
    try:
        with pytest.raises(AuditUnavailable):
            governed.execute(operator, "CreateCollection", {"CollectionId": "never"})
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert governed.service.store.get_collection("org-a", "never") is None
    assert [r for r in _records(governed) if r.get("operation") == "CreateCollection"] == []


def test_a_change_whose_outcome_cannot_be_audited_is_named_by_its_intent(governed, tmp_path):
    from facegate.audit import AuditUnavailable
    from facegate.audit.verify import verify_export
    from facegate.keys import Principal

    operator = Principal.operator("org-a")
    audit = governed.governance.audit
    real_append = audit.append

    def refuse_outcomes(record):
        if record.get("event") == "request":
            raise AuditUnavailable("the disk is full")
        return real_append(record)

    with mock.patch.object(audit, "append", side_effect=refuse_outcomes), pytest.raises(AuditUnavailable):
        governed.execute(operator, "CreateCollection", {"CollectionId": "made"})
    assert governed.service.store.get_collection("org-a", "made") is not None  # the change happened...
    (intent,) = [r for r in _records(governed) if r.get("event") == "intent"]
    assert intent["operation"] == "CreateCollection" and intent["collection"] == "made"  # ...and is on record
    export = tmp_path / "export.jsonl"
    with export.open("w") as fh:
        audit.export(fh)
    with export.open() as lines:
        report = verify_export(lines, audit.public_key_pem)
    assert report.ok and report.unfinished == [intent["seq"]]


def test_a_change_that_fails_closes_its_intent_with_the_error(governed):
    from facegate.errors import ResourceAlreadyExistsException
    from facegate.keys import Principal

    operator = Principal.operator("org-a")
    governed.execute(operator, "CreateCollection", {"CollectionId": "twice"})
    with pytest.raises(ResourceAlreadyExistsException) as raised:
        governed.execute(operator, "CreateCollection", {"CollectionId": "twice"})
    assert raised.value.audited
    records = _records(governed)
    intents = [r["seq"] for r in records if r.get("event") == "intent"]
    outcomes = [(r["decision"], r.get("intent_seq")) for r in records if r.get("event") == "request"]
    assert outcomes == [("allow", intents[0]), ("error", intents[1])]
