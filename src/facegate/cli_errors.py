"""One way for every command to report what a user got wrong: one line on stderr, exit status 1, no traceback."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from facegate.errors import FacegateError

err = Console(stderr=True)


class UsageError(Exception):
    """A command-line input that is wrong; the message says what would be accepted."""


def fail(message: str) -> None:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one line on stderr and exit 1."""
    try:
        yield
    except FacegateError as exc:
        fail(f"{exc.code}: {exc.message}")
    except UsageError as exc:
        fail(str(exc))
    except FileNotFoundError as exc:
        fail(f"file not found: {exc.filename}")
    except PermissionError as exc:
        fail(f"permission denied: {exc.filename}")
    except UnicodeDecodeError as exc:
        fail(f"the file is not UTF-8 text ({exc.reason} at byte {exc.start})")
    except (OSError, sqlite3.Error, ValueError, KeyError) as exc:
        fail(str(exc))
