"""``walle device simulate``: N device agents in one process, fed by simulated shoppers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated

import typer

from walle_cli.console import fail, out

device_app = typer.Typer(help="The device side: run simulated devices against a registry.", no_args_is_help=True)


@device_app.command("simulate")
def simulate(
    registry: Annotated[str, typer.Option("--registry", envvar="WALLE_REGISTRY_URL", help="Registry URL.")],
    enroll_token: Annotated[str, typer.Option("--enroll-token", envvar="WALLE_ENROLL_TOKEN",
                                              help="Publisher token with the enroll scope (first start only).")] = "",
    devices: Annotated[int, typer.Option("--devices", "-n", min=1, max=5000)] = 10,
    root: Annotated[Path, typer.Option("--root", help="Folder holding every device's state (kept across runs).")]
    = Path("walle-devices"),
    trust: Annotated[list[Path] | None, typer.Option("--trust", help="Publisher public key (.pub) to trust; "
                                                                     "repeat. Default: WALLE_KEYS_DIR.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the device profiles and shoppers.")] = 7,
    prefix: Annotated[str, typer.Option("--id-prefix", help="Device ids are PREFIX-0000, PREFIX-0001, ...")] = "sim",
    sessions: Annotated[int, typer.Option(min=0, help="Sessions per shopper, then drain and exit (0: run "
                                                      "until --duration or Ctrl-C).")] = 0,
    duration: Annotated[float, typer.Option(min=0, help="Seconds to run (0: no limit).")] = 0.0,
    pause: Annotated[float, typer.Option(min=0.01, help="Mean seconds between a shopper's sessions.")] = 1.5,
    backend: Annotated[str, typer.Option(help="Engine backend for task runs (auto: the search picks).")] = "auto",
) -> None:
    """Run DEVICES agents (asyncio, one shared engine), each with its own attributes and shopper."""
    from walle_core import flags
    from walle_core.task import KeyStore, load_public_key
    from walle_demo.simulator import Fleet, FleetConfig

    keys = KeyStore(flags.keys_dir()) if not trust else KeyStore(keys=[load_public_key(p) for p in trust])
    if not keys.ids():
        fail("no trusted publisher key: pass --trust KEY.pub or set WALLE_KEYS_DIR")
    cfg = FleetConfig(registry, enroll_token, root, keys, devices=devices, seed=seed, id_prefix=prefix,
                      sessions=sessions, pause_s=(pause * 0.5, pause * 1.5), backend=backend)

    async def main() -> dict[str, int]:
        async with Fleet(cfg) as fleet:
            t0 = time.monotonic()
            last = 0.0
            while True:
                await asyncio.sleep(0.5)
                elapsed = time.monotonic() - t0
                if elapsed - last >= 5:
                    last = elapsed
                    out().print(f"{elapsed:6.1f} s  " + "  ".join(f"{k} {v}" for k, v in fleet.summary().items()))
                if duration and elapsed >= duration:
                    break
                if sessions and await fleet.users_done(0.01):
                    break
            await fleet.drain(30)
            return dict(fleet.summary())

    try:
        summary = asyncio.run(main())
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    out().print("done: " + "  ".join(f"{k} {v}" for k, v in summary.items()))
