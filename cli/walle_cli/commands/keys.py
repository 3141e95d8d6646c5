"""``walle keys``: generate Ed25519 signing keys; trust, list and revoke publisher keys in the
registry (``--local``: in this machine's trusted-key store, the one bundles are verified against)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from walle_cli.commands.registry import JsonOpt, TokenOpt, UrlOpt, client
from walle_cli.console import fail, out, walle_errors
from walle_cli.timefmt import readable_time
from walle_core import flags
from walle_core.task import KeyStore, generate_key, key_id, load_public_key, save_keypair

keys_app = typer.Typer(help="Signing keys: generate them; trust, list and revoke them in the registry.",
                       no_args_is_help=True)

LocalOpt = Annotated[bool, typer.Option("--local", help="this machine's trusted-key store (WALLE_KEYS_DIR), "
                                                        "not the registry")]


@keys_app.command("generate")
def generate(
    stem: Annotated[Path, typer.Argument(help="Writes STEM.key (private, 0600) and STEM.pub.")],
    trust: Annotated[bool, typer.Option("--trust", help="Also add the public key to the local trusted store.")] = False,
) -> None:
    """Generate an Ed25519 key pair for signing task bundles."""
    with walle_errors():
        private = generate_key()
        key_path, pub_path = save_keypair(private, stem)
        if trust:
            KeyStore(flags.keys_dir()).add(private.public_key())
    out().print(f"key id {key_id(private.public_key())}: {escape(str(key_path))}, {escape(str(pub_path))}")


@keys_app.command("trust")
def trust(
    pub: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Public key (.pub) to trust.")],
    name: Annotated[str, typer.Option("--name", help="a label for the key (registry)")] = "",
    local: LocalOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Trust a publisher key: the registry accepts bundles it signed (admin token)."""
    if local:
        with walle_errors():
            kid = KeyStore(flags.keys_dir()).add(load_public_key(pub))
        out().print(f"trusted {kid} locally")
        return
    with walle_errors():
        load_public_key(pub)  # a readable Ed25519 key, or a clear error before the request
    with client(url, token) as c:
        key = c.add_key(pub.read_text(), name)
    if as_json:
        out().print_json(json.dumps(key))
    else:
        out().print(escape(f"trusted {key['key_id']} in the registry" + (f" ({key['name']})" if key["name"] else "")))


@keys_app.command("list")
def list_keys(local: LocalOpt = False, url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """List the publisher keys the registry trusts."""
    if local:
        with walle_errors():
            ids = KeyStore(flags.keys_dir()).ids()
        if as_json:
            out().print_json(json.dumps(ids))
        for kid in [] if as_json else ids:
            out().print(kid)
        return
    with client(url, token) as c:
        keys = c.keys()
    if as_json:
        out().print_json(json.dumps(keys))
        return
    table = Table("key id", "name", "trusted since")
    for k in keys:
        table.add_row(k["key_id"], escape(k["name"]), readable_time(k["created_at"]))
    out().print(table)
    out().print(f"{len(keys)} key(s)")


@keys_app.command("revoke")
def revoke(
    kid: Annotated[str, typer.Argument(metavar="KEY_ID", help="the key id (walle keys list)")],
    local: LocalOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Stop trusting a publisher key: its bundles are refused from now on, on every replica."""
    if local:
        with walle_errors():
            store = KeyStore(flags.keys_dir())
        if kid not in store.ids():
            fail(f"no trusted key {kid!r} in {flags.keys_dir()}")
        store.remove(kid)
        out().print(f"revoked {kid} locally")
        return
    with client(url, token) as c:
        c.revoke_key(kid)
    out().print(f"revoked {kid} in the registry")
