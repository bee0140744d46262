"""``facegate audit ...``: verify, export and read the audit log from the command line.

Every command takes ``--data DIR`` (default $FACEGATE_HOME, else ./facegate-data). Errors print one line and
exit 1; ``verify`` exits 0 only when the log is intact.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from facegate.audit.base import BaseAuditLog
from facegate.audit.canonical import canonical_json
from facegate.audit.log import DB_NAME, PUBLIC_KEY_NAME, AuditLog
from facegate.audit.verify import VerificationReport, verify_export
from facegate.cli_errors import UsageError, one_line_errors
from facegate.config import data_dir

audit_app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="The tamper-evident audit log: verify, export, show."
)

out = Console()
err = Console(stderr=True)

DataOption = Annotated[
    Path | None,
    typer.Option("--data", help="The data directory (default $FACEGATE_HOME, else ./facegate-data)."),
]
_DECISIONS = ("allow", "deny", "error")
_MAX_PROBLEMS_SHOWN = 50


def _open(data: Path, ctx: typer.Context) -> BaseAuditLog:
    """The deployment's log: in PostgreSQL with a postgresql:// store (`facegate --store` or $FACEGATE_STORE),
    else the data directory's, which a reading command refuses to create where none exists."""
    store = (ctx.find_root().obj or {}).get("store") or os.environ.get("FACEGATE_STORE")
    if store:
        from facegate.compose import Settings, build

        return build(Settings.from_env(data, store=store)).audit
    if not (data / DB_NAME).exists():
        raise UsageError(f"no audit log in {data} ({DB_NAME} not found): pass --data or set FACEGATE_HOME")
    return AuditLog(data)


def _epoch(option: str, text: str | None) -> float | None:
    """An ISO 8601 time as epoch seconds; a time without a zone is UTC."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{option} {text!r} is not an ISO 8601 time; use e.g. 2024-05-01 or 2024-05-01T13:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@audit_app.command()
def verify(
    ctx: typer.Context,
    data: DataOption = None,
    log: Annotated[Path | None, typer.Option("--log", help="An exported log (JSON Lines) to verify offline.")] = None,
    public_key: Annotated[
        Path | None, typer.Option("--public-key", help=f"The log's PEM public key (default: DATA/{PUBLIC_KEY_NAME}).")
    ] = None,
) -> None:
    """Check that no entry was altered, removed, inserted or reordered, and that the checkpoints are signed;
    on a live log, also that the columns queries read agree with the signed records."""
    data = data_dir(data, ctx)
    with one_line_errors():
        if log is not None:
            pem = (public_key or data / PUBLIC_KEY_NAME).read_bytes()
            with log.open(encoding="utf-8") as lines:
                report = verify_export(lines, pem)
            source = str(log)
        else:
            audit = _open(data, ctx)
            report = audit.verify(public_key.read_bytes() if public_key else audit.public_key_pem)
            source = str(data / DB_NAME) if isinstance(audit, AuditLog) else "the PostgreSQL audit log"
    _print_report(report, source)
    if report.unfinished:
        shown = ", ".join(map(str, report.unfinished[:20])) + (" ..." if len(report.unfinished) > 20 else "")
        out.print(
            f"{_count(len(report.unfinished), 'change')} announced without an outcome (intent entries {shown}): "
            "the change may have happened unaudited, or was in flight; check the store",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if not report.ok:
        raise typer.Exit(1)


def _print_report(report: VerificationReport, source: str) -> None:
    summary = (
        f"{_count(report.entries, 'entry', 'entries')}, {_count(report.checkpoints, 'checkpoint')}, key {report.key_id}"
    )
    if report.ok:
        out.print(
            f"intact: {source}: {summary}; newest checkpoint root {report.root}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return
    out.print(
        f"NOT intact: {source}: {_count(len(report.problems), 'problem')} ({summary})",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    for problem in report.problems[:_MAX_PROBLEMS_SHOWN]:
        out.print(f"  - {problem}", markup=False, highlight=False, soft_wrap=True)
    if len(report.problems) > _MAX_PROBLEMS_SHOWN:
        out.print(
            f"  ... and {len(report.problems) - _MAX_PROBLEMS_SHOWN} more",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


@audit_app.command()
def export(
    ctx: typer.Context,
    data: DataOption = None,
    to: Annotated[Path | None, typer.Option("--out", help="Write here instead of standard output.")] = None,
) -> None:
    """Sign a fresh checkpoint and write the whole log as JSON Lines, for `audit verify --log` elsewhere."""
    with one_line_errors():
        audit = _open(data_dir(data, ctx), ctx)
        if to is None:
            audit.export(sys.stdout)
            return
        with to.open("w", encoding="utf-8") as file:
            count = audit.export(file)
        err.print(f"exported {count} entries to {to}", markup=False, highlight=False, soft_wrap=True)


@audit_app.command()
def show(
    ctx: typer.Context,
    data: DataOption = None,
    org: Annotated[str | None, typer.Option("--org", help="Only this organisation.")] = None,
    purpose: Annotated[str | None, typer.Option("--purpose", help="Only this purpose.")] = None,
    decision: Annotated[str | None, typer.Option("--decision", help="Only allow, deny or error.")] = None,
    event: Annotated[str | None, typer.Option("--event", help="Only this event (request, policy_change, ...).")] = None,
    since: Annotated[str | None, typer.Option("--since", help="From this ISO 8601 time (UTC if no zone).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Before this ISO 8601 time (UTC if no zone).")] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="At most this many entries, oldest first.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON Lines of the entries instead of a table.")] = False,
) -> None:
    """List audit entries, oldest first, filtered by the record's top-level fields and time."""
    with one_line_errors():
        if decision is not None and decision not in _DECISIONS:
            raise UsageError(f"--decision {decision!r} is not one of: {', '.join(_DECISIONS)}")
        entries = _open(data_dir(data, ctx), ctx).entries(
            organisation=org,
            purpose=purpose,
            decision=decision,
            event=event,
            since=_epoch("--since", since),
            until=_epoch("--until", until),
            limit=limit,
        )
        if as_json:
            for entry in entries:
                sys.stdout.write(canonical_json(entry).decode() + "\n")
            return
        table = Table()
        table.add_column("seq", justify="right", no_wrap=True)
        table.add_column("time (UTC)", no_wrap=True)
        for name in ("organisation", "purpose", "operation", "decision", "policies"):
            table.add_column(name, overflow="fold")
        for entry in entries:
            # Text, not markup: record values are data and may contain "[".
            table.add_row(
                Text(str(entry.get("seq"))),
                Text(_when(entry.get("time"))),
                *(Text(_text(entry.get(name))) for name in ("organisation", "purpose", "operation", "decision")),
                Text(_text(entry.get("policies"))),
            )
        out.print(table)


def _count(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n} {singular if n == 1 else plural or singular + 's'}"


def _when(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return _text(value)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)
