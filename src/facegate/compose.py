"""The composition root: the one place that builds store, engine, keys, audit log, governance and the governed
service from settings, for `facegate serve`, every CLI command, `facegate.open` and bulk-indexing workers."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from facegate.config import DEFAULT_DETECTOR, DEFAULT_HOME


@dataclass(frozen=True)
class Settings:
    """Everything that decides how facegate is assembled; the data directory is explicit, never an env var
    read deep inside (``Settings.from_env`` reads $FACEGATE_HOME once, at the edge)."""

    data_dir: Path
    detector: str = DEFAULT_DETECTOR
    runtime: str = "onnx"
    threads: int | None = None  # ONNX Runtime threads per engine (None: its default)
    regions: tuple[str, ...] = ("us-east-1",)
    # Where collections, faces and governance live: None for the embedded SQLite store in ``data_dir``, or a
    # postgresql:// URL. The audit log, keys' sealing key and model cache stay in ``data_dir`` for now.
    store: str | None = None
    # The key that seals access keys' secrets: servers sharing one database must share it (default
    # data_dir/server.key).
    sealing_key: Path | None = None
    # With a PostgreSQL store the audit log is there too, signed with this key (servers sharing the database
    # share it; default data_dir/audit_signing.key, created if absent).
    audit_signing_key: Path | None = None
    # The scores served: None for the data directory's active calibration (`facegate fairness scores`), else
    # "raw" or a calibration id (the fairness tools compare both).
    scores: str | None = None

    @classmethod
    def from_env(cls, data_dir: str | os.PathLike | None = None, **options) -> Settings:
        """Settings from explicit values, else $FACEGATE_HOME, $FACEGATE_STORE, $FACEGATE_SEALING_KEY and
        $FACEGATE_AUDIT_KEY, else the defaults."""
        options.setdefault("store", os.environ.get("FACEGATE_STORE") or None)
        for option, variable in (("sealing_key", "FACEGATE_SEALING_KEY"), ("audit_signing_key", "FACEGATE_AUDIT_KEY")):
            value = os.environ.get(variable)
            options.setdefault(option, Path(value) if value else None)
        return cls(Path(data_dir or os.environ.get("FACEGATE_HOME") or DEFAULT_HOME), **options)


@dataclass
class Facegate:
    """facegate assembled over one data directory. Parts are built on first use, so a command that only reads
    governance never loads the face models."""

    settings: Settings
    _closed: bool = field(default=False, repr=False)

    @cached_property
    def store(self):
        url = self.settings.store
        if url:
            if not url.startswith(("postgresql://", "postgres://")):
                raise ValueError(f"--store {url.split('://', 1)[0]!r}: give a postgresql:// URL, or omit it for SQLite")
            from facegate.store.postgres import PostgresStore

            return PostgresStore(url)
        from facegate.store.sqlite import SqliteStore

        return SqliteStore(self.settings.data_dir)

    @cached_property
    def engine(self):
        from facegate.engine import FaceEngine

        s = self.settings
        return FaceEngine(
            detector=s.detector, runtime=s.runtime, threads=s.threads, model_cache=Path(s.data_dir) / "models"
        )

    @cached_property
    def service(self):
        from facegate.service import FaceService

        return FaceService(
            self.store, self.engine, region=self.settings.regions[0], videos=self.videos, scores=self.scores
        )

    @cached_property
    def scores(self):
        """Raw distances, or the score calibration `facegate fairness calibrate` made active in the data dir."""
        from facegate.engine.scores import scoring_for

        return scoring_for(Path(self.settings.data_dir), self.engine.similarity, self.settings.scores)

    @cached_property
    def videos(self):
        from facegate.sources import VideoObjects

        return VideoObjects(self.store, self.keys, Path(self.settings.data_dir) / "video-scratch")

    @cached_property
    def console_accounts(self):
        from facegate.console_users import ConsoleAccounts

        return ConsoleAccounts(self.store, self.governance)

    @cached_property
    def jobs(self):
        from facegate.jobs import VideoJobs

        return VideoJobs(self.governed, self.store, self.videos)

    @cached_property
    def keys(self):
        from facegate.keys import KeyRing

        return KeyRing(self.store, self.settings.data_dir, self.settings.sealing_key)

    @cached_property
    def audit(self):
        s = self.settings
        if s.store:
            from facegate.audit.base import create_signing_key
            from facegate.audit.postgres import PostgresAuditLog

            key = s.audit_signing_key or Path(s.data_dir) / "audit_signing.key"
            if s.audit_signing_key is None:
                create_signing_key(key)  # one host's convenience; a host with another key is refused by the log
            return PostgresAuditLog(s.store, key)
        from facegate.audit import AuditLog

        return AuditLog(s.data_dir)

    @cached_property
    def governance(self):
        from facegate.engine.models import EMBEDDING_MODEL_VERSION
        from facegate.governance import Governance

        return Governance(self.store, self.keys, self.audit, model_version=EMBEDDING_MODEL_VERSION)

    @cached_property
    def governed(self):
        from facegate.governed import GovernedService

        return GovernedService(self.governance, self.service)

    def close(self) -> None:
        if "jobs" in self.__dict__:
            self.jobs.close()
        if "store" in self.__dict__:
            self.store.close()
        if "audit" in self.__dict__:
            self.audit.close()


def build(settings: Settings) -> Facegate:
    return Facegate(settings)
