"""What every SQL store shares beyond its dialect: the primitives the shared tables are written over, and the
object sources' statements. A store supplies ``_transaction`` (a context in which ``run(sql, params)`` executes one
``?``-placeholder statement and returns its cursor, all committed together), ``_query`` (one read, outside any
write lock) and ``_governance_changed`` (bump the governance generation within a transaction)."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from facegate.errors import ResourceAlreadyExistsException
from facegate.store import ObjectSource

Run = Callable[[str, tuple], Any]  # executes one statement, returns a cursor


class SqlTables:
    def _transaction(self) -> AbstractContextManager[Run]:
        raise NotImplementedError

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        raise NotImplementedError

    def _governance_changed(self, run: Run) -> None:
        raise NotImplementedError


_SOURCE = "owner, name, kind, location, created_at, sealed_secret"


class SourceTables(SqlTables):
    """``SourceStore``: object sources per organisation; every change moves the governance generation."""

    def add_source(self, source: ObjectSource) -> None:
        with self._transaction() as run:
            inserted = run(
                f"INSERT INTO object_sources ({_SOURCE}) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (source.owner, source.name, source.kind, source.location, source.created_at, source.sealed_secret),
            ).rowcount
            if not inserted:
                raise ResourceAlreadyExistsException(f"The source {source.name} already exists for {source.owner}.")
            self._governance_changed(run)

    def get_source(self, owner: str, name: str) -> ObjectSource | None:
        rows = self._query(f"SELECT {_SOURCE} FROM object_sources WHERE owner = ? AND name = ?", (owner, name))
        return _source(rows[0]) if rows else None

    def list_sources(self, owner: str | None = None) -> list[ObjectSource]:
        rows = self._query(
            f"SELECT {_SOURCE} FROM object_sources WHERE CAST(? AS TEXT) IS NULL OR owner = ? ORDER BY owner, name",
            (owner, owner),
        )
        return [_source(row) for row in rows]

    def remove_source(self, owner: str, name: str) -> bool:
        with self._transaction() as run:
            removed = run("DELETE FROM object_sources WHERE owner = ? AND name = ?", (owner, name)).rowcount
            self._governance_changed(run)
        return bool(removed)


def _source(row: tuple) -> ObjectSource:
    owner, name, kind, location, created_at, sealed = row
    return ObjectSource(owner, name, kind, location, created_at, bytes(sealed) if sealed is not None else None)


def json_or_none(value: object) -> str | None:
    """JSON text of a value, or NULL for None."""
    return json.dumps(value) if value is not None else None
