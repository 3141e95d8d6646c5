"""``walle tokens create|list|revoke``: the registry's API tokens (admin token required)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from walle_cli.commands.registry import JsonOpt, TokenOpt, UrlOpt, client
from walle_cli.console import err, out
from walle_cli.timefmt import readable_time

tokens_app = typer.Typer(help="API tokens for publishers, operators and device enrolment.", no_args_is_help=True)

SCOPE_HELP = "publish (upload bundles), deploy (rollouts), read (listings, console), enroll (register devices), admin"


@tokens_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="who or what holds the token")],
    scope: Annotated[list[str], typer.Option("--scope", "-s", help=f"repeat; {SCOPE_HELP}")],
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a token with the given scopes. The secret alone goes to stdout, shown once
    (``TOKEN=$(walle tokens create ci -s publish)``); what it is goes to stderr."""
    with client(url, token) as c:
        tok = c.create_token(name, scope)
    if as_json:
        out().print_json(json.dumps(tok))
        return
    err().print(escape(f"token {tok['id']} ({tok['name']}, scopes {' '.join(tok['scopes'])}) created; "
                       "its secret is shown once:"))
    typer.echo(tok["token"])


@tokens_app.command("list")
def list_(url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """List tokens (never their secrets)."""
    with client(url, token) as c:
        toks = c.tokens()
    if as_json:
        out().print_json(json.dumps(toks))
        return
    table = Table("id", "name", "scopes", "created", "state")
    for t in toks:
        table.add_row(str(t["id"]), escape(t["name"]), " ".join(t["scopes"]), readable_time(t["created_at"]),
                      "revoked" if t["revoked"] else "active")
    out().print(table)
    out().print(f"{len(toks)} token(s)")


@tokens_app.command("revoke")
def revoke(token_id: Annotated[int, typer.Argument(metavar="ID", help="the token's id (walle tokens list)")],
           url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Revoke a token: it is refused from now on, on every replica."""
    with client(url, token) as c:
        c.revoke_token(token_id)
    out().print(f"revoked token {token_id}")
