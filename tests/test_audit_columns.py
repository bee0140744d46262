"""The audit database's query columns (time, event, organisation, purpose, decision) are unsigned copies of each
record's fields: editing one in SQLite must fail `facegate audit verify`, naming the entry and the column, and
must not hide the entry from `facegate audit show` or `AuditLog.entries`."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from facegate.audit import AuditLog
from facegate.audit.commands import audit_app

runner = CliRunner()

MAY_1 = datetime(2024, 5, 1, tzinfo=UTC).timestamp()
HOUR = 3600.0
DENIAL = 3  # the entry an intruder wants to hide

RECORDS = [
    {"event": "request", "organisation": "org-a", "purpose": "investigation", "decision": "allow"},
    {"event": "request", "organisation": "org-b", "purpose": "investigation", "decision": "deny"},
    {"event": "policy_change", "organisation": "org-a", "change": "attach marketing-ban"},
    {"event": "request", "organisation": "org-b", "purpose": "marketing", "decision": "deny"},
    {"event": "request", "organisation": "org-a", "purpose": "marketing", "decision": "allow"},
    {"event": "request", "organisation": "org-b", "purpose": "investigation", "decision": "error"},
]

# For each query column: a value that takes the denial out of the query an auditor would run for it (the
# column's own filter, together with --decision deny), and that query's arguments. A moved time column could
# only hide the entry from a time range, which entries() narrows by the column: verify is what catches that.
HIDING = {
    "decision": ("allow", ["--decision", "deny"]),
    "organisation": ("org-x", ["--decision", "deny", "--org", "org-b"]),
    "purpose": ("research", ["--decision", "deny", "--purpose", "marketing"]),
    "event": ("policy_change", ["--decision", "deny", "--event", "request"]),
    "time": (MAY_1 + 1000 * HOUR, ["--decision", "deny"]),
}


@pytest.fixture
def home(tmp_path) -> Path:
    home = tmp_path / "data"
    log = AuditLog(home)
    for i, record in enumerate(RECORDS):
        log.append({**record, "operation": "SearchFacesByImage", "time": MAY_1 + i * HOUR})
    log.checkpoint()
    log.close()
    return home


def _set_column(home: Path, seq: int, column: str, value: object) -> None:
    """What an intruder with write access to the database file would do: leave the signed record alone."""
    with sqlite3.connect(home / "audit.sqlite3") as db:
        db.execute(f"UPDATE entries SET {column} = ? WHERE seq = ?", (value, seq))
    db.close()


def _facegate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "facegate", *args], capture_output=True, text=True, timeout=120, check=False
    )


def _shown(home: Path, *args: str) -> list[int]:
    result = _facegate("audit", "show", "--data", str(home), "--json", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line)["seq"] for line in result.stdout.splitlines()]


def test_an_intact_log_verifies_with_the_installed_command(home):
    result = _facegate("audit", "verify", "--data", str(home))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("intact:") and "6 entries" in result.stdout
    assert runner.invoke(audit_app, ["verify", "--data", str(home)]).exit_code == 0
    assert _shown(home, "--decision", "deny") == [1, 3]


@pytest.mark.parametrize("column", HIDING)
def test_editing_a_query_column_fails_verify_naming_the_entry_and_column(home, column):
    forged, _ = HIDING[column]
    _set_column(home, DENIAL, column, forged)
    result = runner.invoke(audit_app, ["verify", "--data", str(home)])
    assert result.exit_code == 1, result.output
    assert "NOT intact" in result.output
    assert f"entry {DENIAL}: the {column} column says {forged!r}" in result.output


@pytest.mark.parametrize("column", HIDING)
def test_editing_a_query_column_fails_the_installed_verify_command(home, column):
    forged, _ = HIDING[column]
    _set_column(home, DENIAL, column, forged)
    result = _facegate("audit", "verify", "--data", str(home))
    assert f"entry {DENIAL}: the {column} column says {forged!r}" in result.stdout, result.stdout + result.stderr
    # Needs cli.main to exit with typer.Exit's code (standalone_mode=False returns it instead of raising).
    assert result.returncode != 0


@pytest.mark.parametrize("column", HIDING)
def test_editing_a_query_column_does_not_hide_the_denial(home, column):
    forged, query = HIDING[column]
    assert DENIAL in _shown(home, *query)
    _set_column(home, DENIAL, column, forged)
    assert DENIAL in _shown(home, *query)
    assert DENIAL in [e["seq"] for e in AuditLog(home).entries(decision="deny")]


@pytest.mark.parametrize(
    ("column", "forged", "query"),
    [
        ("decision", "deny", ["--decision", "deny"]),
        ("organisation", "org-b", ["--org", "org-b"]),
        ("purpose", "marketing", ["--purpose", "marketing"]),
        ("event", "policy_change", ["--event", "policy_change"]),
        ("time", MAY_1 + 1000 * HOUR, ["--since", "2024-05-20"]),
    ],
)
def test_editing_a_query_column_does_not_add_the_entry_to_other_queries(home, column, forged, query):
    """Entry 0 (org-a, investigation, allow, a request at May 1 00:00) forged to look like something it is not."""
    before = _shown(home, *query)
    _set_column(home, 0, column, forged)
    assert _shown(home, *query) == before and 0 not in before


def test_a_time_range_query_reads_the_record_time(home):
    """The time index narrows the scan, but the record decides: a row whose time column was moved into a range
    is not listed in it (and verify names the column, as above)."""
    assert _shown(home, "--since", "2024-05-01T03:00Z", "--until", "2024-05-01T04:00Z") == [3]
    _set_column(home, 0, "time", MAY_1 + 3.5 * HOUR)
    assert _shown(home, "--since", "2024-05-01T03:00Z", "--until", "2024-05-01T04:00Z") == [3]


def test_editing_the_leaf_hash_column_that_proofs_read_fails_verify(home):
    _set_column(home, 2, "leaf_hash", b"\x00" * 32)
    report = AuditLog(home).verify()
    assert not report.ok
    assert report.problems == ["entry 2: the leaf_hash column is not the hash of the signed record (proofs read it)"], (
        report.problems
    )


def test_entries_filters_and_limit_apply_to_the_records(home):
    log = AuditLog(home)
    assert [e["seq"] for e in log.entries(organisation="org-b", decision="deny")] == [1, 3]
    assert [e["seq"] for e in log.entries(decision="deny", limit=1)] == [1]
    assert [e["seq"] for e in log.entries(purpose="marketing", since=MAY_1 + 3.5 * HOUR)] == [4]
    assert list(log.entries(limit=0)) == []
