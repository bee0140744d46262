"""Review cases, reviewers' decisions, face thumbnails, console users and sessions: the same tables and statements
on every SQL store, over its primitives (``sql_tables.SqlTables``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from facegate.errors import ResourceAlreadyExistsException
from facegate.store import Collection, ConsoleSession, ConsoleUser, ReviewCase, ReviewDecision
from facegate.store.sql_tables import SqlTables, json_or_none

# SQLite's types; PostgreSQL's migration swaps them (``postgres_ddl``).
DDL = """
CREATE TABLE IF NOT EXISTS review_cases (
    case_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    operation TEXT NOT NULL,
    status TEXT NOT NULL,
    reviewers_required INTEGER NOT NULL,
    withheld INTEGER NOT NULL,
    facts TEXT NOT NULL,
    candidates TEXT NOT NULL,
    requester TEXT NOT NULL,
    request_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    released TEXT,
    probe_crop BLOB
);
CREATE INDEX IF NOT EXISTS review_cases_by_owner ON review_cases (owner, status, created_at);
CREATE TABLE IF NOT EXISTS review_decisions (
    case_id TEXT NOT NULL REFERENCES review_cases (case_id) ON DELETE CASCADE,
    reviewer TEXT NOT NULL,
    verdict TEXT NOT NULL,
    face_id TEXT,
    decided_at REAL NOT NULL,
    note TEXT NOT NULL,
    PRIMARY KEY (case_id, reviewer)
);
CREATE TABLE IF NOT EXISTS console_users (
    username TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    organisations TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    failed_logins INTEGER NOT NULL DEFAULT 0,
    locked_until REAL,
    must_change_password INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS face_thumbnails (
    face_id TEXT PRIMARY KEY REFERENCES faces (face_id) ON DELETE CASCADE,
    collection_pk INTEGER NOT NULL,
    jpeg BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS console_sessions (
    token_hash TEXT PRIMARY KEY,
    username TEXT NOT NULL REFERENCES console_users (username) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
"""


def postgres_ddl() -> str:
    return (
        DDL.replace(" REAL", " DOUBLE PRECISION")
        .replace(" BLOB", " BYTEA")
        .replace("TEXT PRIMARY KEY", 'TEXT COLLATE "C" PRIMARY KEY')
    )


_CASE = (
    "case_id, owner, operation, status, reviewers_required, withheld, facts, candidates, requester, request_id, "
    "created_at, updated_at, released, probe_crop"
)
_CASE_BY_ID = f"SELECT {_CASE} FROM review_cases WHERE case_id = ?"
_DECISION = "case_id, reviewer, verdict, face_id, decided_at, note"
_DECISIONS_OF_CASE = f"SELECT {_DECISION} FROM review_decisions WHERE case_id = ? ORDER BY decided_at, reviewer"
_USER = "username, role, organisations, password_hash, created_at, failed_logins, locked_until, must_change_password"
_SESSION = "token_hash, username, csrf_token, created_at, expires_at"


class ReviewTables(SqlTables):
    """``ReviewStore`` and ``ConsoleUserStore``, and the face thumbnails reviewers see."""

    # Review cases

    def add_case(self, case: ReviewCase) -> None:
        with self._transaction() as run:
            run(
                f"INSERT INTO review_cases ({_CASE}) VALUES ({', '.join('?' * 14)})",
                (
                    case.case_id,
                    case.owner,
                    case.operation,
                    case.status,
                    case.reviewers_required,
                    int(case.withheld),
                    json.dumps(case.facts),
                    json.dumps(case.candidates),
                    case.requester,
                    case.request_id,
                    case.created_at,
                    case.updated_at,
                    json_or_none(case.released),
                    case.probe_crop,
                ),
            )

    def get_case(self, case_id: str) -> ReviewCase | None:
        rows = self._query(_CASE_BY_ID, (case_id,))
        return _case(rows[0]) if rows else None

    def list_cases(self, owners: list[str] | None = None, status: str | None = None) -> list[ReviewCase]:
        rows = self._query(
            f"SELECT {_CASE} FROM review_cases WHERE (CAST(? AS TEXT) IS NULL OR status = ?) "
            "ORDER BY created_at DESC, case_id",
            (status, status),
        )
        cases = [_case(row) for row in rows]
        return cases if owners is None else [c for c in cases if c.owner in owners]

    def decide_case(
        self, decision: ReviewDecision, settle: Callable[[ReviewCase, list[ReviewDecision]], tuple | None]
    ) -> tuple[str, ReviewCase | None]:
        """Record a decision and settle the case in one transaction that holds the case's row: ("not-open", case)
        when it was closed already, ("duplicate", case) when this reviewer had decided, else ("recorded", case)
        with the case as ``settle`` left it (``settle`` → (status, released) closes it, None leaves it open)."""
        now = time.time()
        with self._transaction() as run:
            held = run(
                "UPDATE review_cases SET updated_at = ? WHERE case_id = ? AND status = 'open'", (now, decision.case_id)
            ).rowcount  # takes the case's row (PostgreSQL) or the database (SQLite) until the end
            if not held:
                row = run(_CASE_BY_ID, (decision.case_id,)).fetchone()
                return "not-open", _case(row) if row else None
            added = run(
                f"INSERT INTO review_decisions ({_DECISION}) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
                    decision.case_id,
                    decision.reviewer,
                    decision.verdict,
                    decision.face_id,
                    decision.decided_at,
                    decision.note,
                ),
            ).rowcount
            case = _case(run(_CASE_BY_ID, (decision.case_id,)).fetchone())
            if not added:
                return "duplicate", case
            decisions = [ReviewDecision(*row) for row in run(_DECISIONS_OF_CASE, (decision.case_id,)).fetchall()]
            settled = settle(case, decisions)
            if settled is None:
                return "recorded", case
            status, released = settled
            row = run(
                "UPDATE review_cases SET status = ?, released = ?, probe_crop = NULL, updated_at = ? "
                f"WHERE case_id = ? RETURNING {_CASE}",
                (status, json.dumps(released) if released is not None else None, now, decision.case_id),
            ).fetchone()
            return "recorded", _case(row)

    def decisions(self, case_id: str) -> list[ReviewDecision]:
        return [ReviewDecision(*row) for row in self._query(_DECISIONS_OF_CASE, (case_id,))]

    # Face thumbnails (for reviewers, where the collection keeps them)

    def add_thumbnails(self, collection: Collection, thumbnails: dict[str, bytes]) -> None:
        with self._transaction() as run:
            for face_id, jpeg in thumbnails.items():  # only faces of the collection: the insert selects them
                run(
                    "INSERT INTO face_thumbnails (face_id, collection_pk, jpeg) SELECT face_id, collection_pk, ? "
                    "FROM faces WHERE face_id = ? AND collection_pk = ? ON CONFLICT DO NOTHING",
                    (jpeg, face_id, collection.pk),
                )

    def thumbnails(self, collection: Collection, face_ids: list[str]) -> dict[str, bytes]:
        found = {}
        for face_id in face_ids:
            rows = self._query(
                "SELECT jpeg FROM face_thumbnails WHERE face_id = ? AND collection_pk = ?", (face_id, collection.pk)
            )
            if rows:
                found[face_id] = bytes(rows[0][0])
        return found

    # Console users and sessions

    def add_console_user(self, user: ConsoleUser) -> None:
        with self._transaction() as run:
            added = run(
                f"INSERT INTO console_users ({_USER}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
                    user.username,
                    user.role,
                    json.dumps(list(user.organisations)),
                    user.password_hash,
                    user.created_at,
                    user.failed_logins,
                    user.locked_until,
                    int(user.must_change_password),
                ),
            ).rowcount
        if not added:
            raise ResourceAlreadyExistsException(f"The console user {user.username} already exists.")

    def get_console_user(self, username: str) -> ConsoleUser | None:
        rows = self._query(f"SELECT {_USER} FROM console_users WHERE username = ?", (username,))
        return _user(rows[0]) if rows else None

    def list_console_users(self) -> list[ConsoleUser]:
        return [_user(row) for row in self._query(f"SELECT {_USER} FROM console_users ORDER BY username")]

    def update_console_user(
        self,
        username: str,
        *,
        failed_logins: int | None = None,
        locked_until: float | None = None,
        password_hash: str | None = None,
        must_change_password: bool | None = None,
    ) -> None:
        changes: dict[str, Any] = {
            "failed_logins": failed_logins,
            "password_hash": password_hash,
            "must_change_password": None if must_change_password is None else int(must_change_password),
        }
        sets = [f"{column} = ?" for column, value in changes.items() if value is not None]
        values = [value for value in changes.values() if value is not None]
        sets.append("locked_until = ?")  # always written: None unlocks
        values.append(locked_until)
        with self._transaction() as run:
            run(f"UPDATE console_users SET {', '.join(sets)} WHERE username = ?", (*values, username))

    def count_failed_login(self, username: str) -> int:
        """One more failed sign-in, counted in the database (concurrent guesses each count); the new count."""
        with self._transaction() as run:
            row = run(
                "UPDATE console_users SET failed_logins = failed_logins + 1 WHERE username = ? RETURNING failed_logins",
                (username,),
            ).fetchone()
        return int(row[0]) if row else 0

    def add_session(self, session: ConsoleSession) -> None:
        with self._transaction() as run:
            run(
                f"INSERT INTO console_sessions ({_SESSION}) VALUES (?, ?, ?, ?, ?)",
                (session.token_hash, session.username, session.csrf_token, session.created_at, session.expires_at),
            )

    def get_session(self, token_hash: str) -> ConsoleSession | None:
        rows = self._query(f"SELECT {_SESSION} FROM console_sessions WHERE token_hash = ?", (token_hash,))
        return ConsoleSession(*rows[0]) if rows else None

    def delete_sessions(self, *, token_hash: str | None = None, username: str | None = None) -> None:
        with self._transaction() as run:
            run("DELETE FROM console_sessions WHERE token_hash = ? OR username = ?", (token_hash or "", username or ""))


def _case(row: tuple) -> ReviewCase:
    values = list(row)
    values[5] = bool(values[5])
    values[6], values[7] = json.loads(values[6]), json.loads(values[7])
    values[12] = json.loads(values[12]) if values[12] is not None else None
    values[13] = bytes(values[13]) if values[13] is not None else None
    return ReviewCase(*values)


def _user(row: tuple) -> ConsoleUser:
    values = list(row)
    values[2] = tuple(json.loads(values[2]))
    values[7] = bool(values[7])
    return ConsoleUser(*values)
