"""``walle task``: pack, sign, verify and run task bundles."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.markup import escape

import walle_core
from walle_cli.console import fail, out, walle_errors
from walle_cli.progress import byte_progress
from walle_core import flags
from walle_core.pipeline import compile_spec
from walle_core.task import (
    KeyStore,
    collect_files,
    extract_bundle,
    load_private_key,
    load_public_key,
    pack,
    read_manifest,
    sign_bundle,
    verify_bundle,
)
from walle_core.vm import MODES, TaskSpec, run_once

KeyOption = Annotated[
    list[Path] | None,
    typer.Option("--key", "-k", help="Trust this public key (repeatable) instead of WALLE_KEYS_DIR."),
]


def _store(keys: list[Path] | None) -> KeyStore:
    if keys:
        return KeyStore(keys=[load_public_key(k) for k in keys])
    return KeyStore(flags.keys_dir())


def pack_cmd(
    src: Annotated[Path, typer.Argument(help="Task folder with task.json, the script and resources.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Bundle path (default NAME-VERSION.walle).")] = None,
) -> None:
    """Pack a task folder into a deterministic, unsigned bundle."""
    with walle_errors(), tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "b.walle"
        total = sum(p.stat().st_size for p in collect_files(src))
        with byte_progress(f"packing {src.name}", total) as advance:
            manifest = pack(src, staged, advance)
        if manifest.trigger:  # devices compile it at install: refuse a trigger they would refuse
            compile_spec(manifest.trigger)
        target = output or Path(f"{manifest.name}-{manifest.version}.walle")
        staged.replace(target)
    out().print(f"packed {manifest.name} {manifest.version} ({len(manifest.files)} files) -> "
                f"{escape(str(target))}  manifest sha256 {manifest.digest()}")


def sign_cmd(
    bundle: Annotated[Path, typer.Argument(help="Bundle to sign.")],
    key: Annotated[Path, typer.Option("--key", "-k", help="Private key (.key).")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Signed bundle (default: in place).")] = None,
) -> None:
    """Sign a bundle's manifest with an Ed25519 key."""
    with walle_errors():
        private = load_private_key(key)
        total = sum(f.size for f in read_manifest(bundle).files)
        with byte_progress(f"signing {bundle.name}", total) as advance:
            signed = sign_bundle(bundle, private, output, progress=advance)
    out().print(f"signed {signed.manifest.name} with key {signed.key_id} -> {escape(str(output or bundle))}")


def verify_cmd(bundle: Annotated[Path, typer.Argument(help="Bundle to verify.")], key: KeyOption = None) -> None:
    """Verify signature, manifest, file digests and archive safety; extracts nothing."""
    with walle_errors():
        vb = verify_bundle(bundle, _store(key))
    m = vb.manifest
    out().print(f"OK {m.name} {m.version}: signed by {vb.key_id}, {len(m.files)} files, "
                f"bundle sha256 {vb.sha256}")


def _read_events(path: Path | None) -> list[dict[str, Any]]:
    if path is None:
        return []
    events: list[dict[str, Any]] = []
    try:
        for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
            if line.strip():
                event = json.loads(line)
                if not isinstance(event, dict):
                    fail(f"{path}:{n}: an event must be a JSON object")
                events.append(event)
    except (OSError, ValueError) as exc:
        fail(f"cannot read events from {path}: {exc}")
    return events


def _show(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype}{list(value.shape)} {np.array2string(value.reshape(-1)[:6], precision=5)}"
    return json.dumps(value)[:200]


def run_cmd(
    bundle: Annotated[Path, typer.Argument(help="Signed bundle.")],
    events: Annotated[Path | None, typer.Option("--events", "-e", help="JSON-lines file of matched events.")] = None,
    mode: Annotated[str, typer.Option("--mode", "-m", help=f"VM mode: {', '.join(MODES)}.")] = "thread",
    key: KeyOption = None,
    backend: Annotated[str | None, typer.Option("--backend", "-b", help="Engine backend for the model.")] = None,
) -> None:
    """Verify, install into a temporary sandbox and run one task, as a device would."""
    feed = _read_events(events)
    with walle_errors(), tempfile.TemporaryDirectory(prefix="walle-task-") as tmp:
        vb = extract_bundle(bundle, Path(tmp) / "task", _store(key))
        vb.manifest.check_compatible(walle_core.__version__)
        result = run_once(TaskSpec.from_manifest(vb.manifest, Path(tmp) / "task", backend), feed, mode)
    console = out()
    console.print(f"task {escape(result.name)}: [bold]{result.status}[/bold] in {result.wall_s * 1e3:.1f} ms ({mode})")
    for line in result.logs:
        console.print(f"  log: {escape(line)}")
    for name, value in result.outputs.items():
        console.print(f"  {escape(name)} = {escape(_show(value))}")
    if not result.ok:
        fail(result.error or result.status, code=1)


def register(group: typer.Typer) -> None:
    """Add pack/sign/verify/run to the ``walle task`` group (shared with the registry's publish)."""
    group.command("pack")(pack_cmd)
    group.command("sign")(sign_cmd)
    group.command("verify")(verify_cmd)
    group.command("run")(run_cmd)
