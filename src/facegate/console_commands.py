"""`facegate console-users`: the people who sign in to the console."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

console_users_app = typer.Typer(
    no_args_is_help=True, help="People who sign in to the console: reviewers, operators, auditors."
)
out = Console()
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@console_users_app.command("create")
def console_users_create(
    username: str,
    org: Annotated[list[str], typer.Option("--org", help="An organisation the user works for (repeat; '*': all).")],
    role: Annotated[str, typer.Option(help="reviewer, operator or auditor.")] = "reviewer",
) -> None:
    """Create a console user; prints a one-time password, to be changed at first sign-in."""
    from facegate import cli

    password = cli.state.facegate.console_accounts.create(username, role, tuple(org))
    out.print(f"{username} ({role}, {', '.join(org)}): one-time password {password}", highlight=False)


@console_users_app.command("list")
def console_users_list(as_json: JsonOption = False) -> None:
    """List console users."""
    from facegate import cli

    users = cli.state.facegate.console_accounts.users()
    if as_json:
        print(
            json.dumps(
                [{"Username": u.username, "Role": u.role, "Organisations": list(u.organisations)} for u in users]
            )
        )
        return
    for u in users:
        out.print(f"{u.username}  {u.role}  {', '.join(u.organisations)}", highlight=False)
