"""``walle keys``: generate Ed25519 signing keys and manage the trusted-key store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from walle_cli.console import out, walle_errors
from walle_core import flags
from walle_core.task import KeyStore, generate_key, key_id, load_public_key, save_keypair

keys_app = typer.Typer(help="Signing keys and the trusted-key store.", no_args_is_help=True)


@keys_app.command("generate")
def generate(
    stem: Annotated[Path, typer.Argument(help="Writes STEM.key (private, 0600) and STEM.pub.")],
    trust: Annotated[bool, typer.Option("--trust", help="Also add the public key to the trusted store.")] = False,
) -> None:
    """Generate an Ed25519 key pair for signing task bundles."""
    with walle_errors():
        private = generate_key()
        key_path, pub_path = save_keypair(private, stem)
        if trust:
            KeyStore(flags.keys_dir()).add(private.public_key())
    out().print(f"key id {key_id(private.public_key())}: {escape(str(key_path))}, {escape(str(pub_path))}")


@keys_app.command("trust")
def trust(pub: Annotated[Path, typer.Argument(help="Public key (.pub) to trust.")]) -> None:
    """Add a public key to the trusted-key store (WALLE_KEYS_DIR)."""
    with walle_errors():
        kid = KeyStore(flags.keys_dir()).add(load_public_key(pub))
    out().print(f"trusted {kid}")


@keys_app.command("list")
def list_keys() -> None:
    """List the trusted key ids."""
    with walle_errors():
        for kid in KeyStore(flags.keys_dir()).ids():
            out().print(kid)
