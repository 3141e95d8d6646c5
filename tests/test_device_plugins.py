"""Backend plugins through the registry to a device agent, end to end.

The plugin template of docs/plugins.md is built into a real wheel (``pip wheel``), signed and
published to a live registry, and targeted at a device by a plugin deployment. The agent pulls it,
verifies signature and digest against its own trusted keys, unpacks it into its plugin folder and
a fresh ``walle_core.plugins.Registry()`` in the same process lists the backend as available.
A wheel signed by a key the device does not trust, or whose bytes do not match the signed
digest, is rejected and nothing is installed. An upgrade keeps the previous version, and rolling
the deployment back switches to it without a download.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_e2e_fixtures import *  # noqa: F403
from test_plugins import doc_files

from walle_core import plugins as engine_plugins
from walle_core.plugins import Registry
from walle_core.task import generate_key, save_keypair
from walle_demo.demo import Stack
from walle_device import AgentConfig, DeviceAgent, LinkDown
from walle_registry.client import ApiError

ROOT = Path(__file__).resolve().parents[1]
NAME, BACKEND = "my_walle_backend", "mybackend"


def build_wheel(src: Path, out: Path, version: str) -> Path:
    files = doc_files(ROOT / "docs" / "plugins.md")
    files["pyproject.toml"] = files["pyproject.toml"].replace('version = "0.1.0"', f'version = "{version}"')
    for rel, text in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
           "--disable-pip-version-check", "--quiet", "-w", str(out), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout}\n{proc.stderr}"
    return next(out.glob(f"{NAME}-{version}-*.whl"))


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("wheels")
    return {v: build_wheel(base / f"src-{v}", base / "dist", v) for v in ("0.1.0", "0.2.0")}


@pytest.fixture(autouse=True)
def clean_process(tmp_path: Path) -> Iterator[None]:
    """Whatever the agents put on sys.path / in sys.modules is taken off again."""
    yield
    sys.path[:] = [p for p in sys.path if not p.startswith(str(tmp_path))]
    for mod in [m for m in sys.modules if m == NAME or m.startswith(NAME + ".")]:
        del sys.modules[mod]
    engine_plugins.reset_registry()


def available() -> set[str]:
    return {b.name for b in Registry().available()}


def agent_config(stack: Stack, device_id: str) -> AgentConfig:
    return AgentConfig(root=stack.root / device_id, registry_url=stack.server.url, keys=stack.keys,
                       enroll_token=stack.enroll_token, device_id=device_id, heartbeat_s=3600,
                       attributes={"os": "android", "app_version": "3.2.0"})


def deployment_states(stack: Stack) -> dict[str, tuple[str, str]]:
    return {d["id"]: (d["version"], d["state"]) for d in stack.admin.plugin_deployments(NAME)}


def test_plugin_is_deployed_installed_and_rolled_back(stack: Stack, wheels: dict[str, Path]) -> None:
    assert BACKEND not in available()
    key_file = stack.root / "keys" / "publisher.key"
    v1 = stack.admin.publish_plugin(wheels["0.1.0"], key_file)
    v2 = stack.admin.publish_plugin(wheels["0.2.0"], key_file)
    assert (v1["name"], v1["version"]) == (NAME, "0.1.0")
    with pytest.raises(ApiError) as err:  # the registry re-checks the signature it hands to devices
        stack.admin.deploy_plugin(NAME, "0.1.0", v1["key_id"], v2["signature"], device_ids=["plug-1"])
    assert err.value.status == 422 and "bad signature" in err.value.detail
    bystander = stack.admin.register("plug-other", os="ios", app_version="3.2.0")

    async def run() -> None:
        agent = DeviceAgent(agent_config(stack, "plug-1"))
        await agent.start()
        try:
            await agent.reconcile()
            assert agent.active_plugins() == {}
            dep1 = stack.admin.deploy_plugin(NAME, "0.1.0", v1["key_id"], v1["signature"], device_ids=["plug-1"])
            await agent.reconcile()
            assert agent.active_plugins() == {NAME: "0.1.0"}
            folder = agent.root / "plugins" / f"{NAME}-0.1.0"
            assert (folder / NAME / "plugin.py").exists() and (folder / f"{NAME}-0.1.0.dist-info").is_dir()
            assert BACKEND in available()  # a fresh Registry in this process finds the entry point
            assert engine_plugins.registry().get(BACKEND).name == BACKEND
            assert stack.admin.plugin_deployments(NAME)[0]["installs"] == {"installed": 1}
            assert bystander.targets() == [] and bystander._req("GET", "/v1/device/plugins").json() == []

            dep2 = stack.admin.deploy_plugin(NAME, "0.2.0", v2["key_id"], v2["signature"], device_ids=["plug-1"])
            await agent.reconcile()
            assert agent.active_plugins() == {NAME: "0.2.0"}
            assert BACKEND in available()  # loaded again, from the new version's folder
            assert sys.modules[NAME].__file__.startswith(str(agent.root / "plugins" / f"{NAME}-0.2.0"))
            assert (agent.root / "plugins" / f"{NAME}-0.1.0").is_dir()  # kept for rollback

            stack.admin._req("POST", f"/v1/plugin-deployments/{dep2['id']}/rollback")
            fetched = agent.stats.plugin_installs
            await agent.reconcile()
            assert agent.active_plugins() == {NAME: "0.1.0"} and agent.stats.rollbacks == 1
            assert not list((agent.root / "downloads").iterdir())  # nothing was downloaded again
            assert agent.stats.plugin_installs == fetched + 1
            assert BACKEND in available()
            assert not [p for p in sys.path if f"{NAME}-0.2.0" in p]
            assert deployment_states(stack) == {dep1["id"]: ("0.1.0", "active"), dep2["id"]: ("0.2.0", "rolled_back")}
        finally:
            await agent.stop()
        sys.path[:] = [p for p in sys.path if str(agent.root) not in p]
        engine_plugins.reset_registry()
        assert BACKEND not in available()
        again = DeviceAgent(agent_config(stack, "plug-1"))  # a restart makes the installed plugin visible again
        await again.start()
        try:
            assert again.active_plugins() == {NAME: "0.1.0"} and BACKEND in available()
        finally:
            await again.stop()

    asyncio.run(run())


def test_untrusted_signature_is_rejected(stack: Stack, wheels: dict[str, Path]) -> None:
    """The registry trusts a second publisher; the device does not: it installs nothing."""
    other = generate_key()
    priv, pub = save_keypair(other, stack.root / "keys" / "other")
    stack.admin.add_key(pub.read_text(), "another publisher")
    signed = stack.admin.publish_plugin(wheels["0.1.0"], priv)
    stack.admin.deploy_plugin(NAME, "0.1.0", signed["key_id"], signed["signature"], device_ids=["plug-2"])

    async def run() -> None:
        agent = DeviceAgent(agent_config(stack, "plug-2"))
        await agent.start()
        try:
            await agent.reconcile()
            await agent.reconcile()  # a rejected wheel is not fetched again
            assert agent.active_plugins() == {}
            assert not list((agent.root / "plugins").iterdir()) and not list((agent.root / "downloads").iterdir())
            assert BACKEND not in available()
            assert stack.admin.plugin_deployments(NAME)[0]["installs"] == {"error": 1}
            assert "not trusted" in agent.stats.last_error or "UnknownKeyError" in agent.stats.last_error
        finally:
            await agent.stop()

    asyncio.run(run())


def test_wheel_that_does_not_match_its_digest_is_rejected(stack: Stack, wheels: dict[str, Path]) -> None:
    """The registry's stored wheel is altered after publishing: the download fails its sha256."""
    signed = stack.admin.publish_plugin(wheels["0.1.0"], stack.root / "keys" / "publisher.key")
    sha = signed["sha256"]
    blob = stack.server.data / "blobs" / sha[:2] / sha[2:4] / sha
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    stack.admin.deploy_plugin(NAME, "0.1.0", signed["key_id"], signed["signature"], device_ids=["plug-3"])

    async def run() -> None:
        agent = DeviceAgent(agent_config(stack, "plug-3"))
        await agent.start()
        try:
            with pytest.raises(LinkDown, match="does not match sha256"):
                await agent.reconcile()
            assert agent.active_plugins() == {}
            assert not list((agent.root / "plugins").iterdir()) and not list((agent.root / "downloads").iterdir())
            assert BACKEND not in available()
            assert stack.admin.plugin_deployments(NAME)[0]["installs"] == {"error": 1}
        finally:
            await agent.stop()

    asyncio.run(run())


def test_installer_checks_signature_digest_and_record(stack: Stack, wheels: dict[str, Path], tmp_path: Path) -> None:
    """The installer on its own: a wheel altered inside (RECORD no longer matches) is refused
    even with a good outer signature, and a failed install leaves no folder."""
    import hashlib
    import zipfile

    from walle_core.task import DigestMismatchError, SignatureError, key_id
    from walle_device import PluginInstaller

    inst = PluginInstaller(tmp_path / "dev", stack.keys)
    good = wheels["0.1.0"]
    sha = hashlib.sha256(good.read_bytes()).hexdigest()
    kid = key_id(stack.private_key.public_key())
    copy = tmp_path / good.name
    copy.write_bytes(good.read_bytes())
    with pytest.raises(SignatureError):
        inst.install(copy, NAME, "0.1.0", sha, kid, stack.private_key.sign(b"something else"))
    with pytest.raises(DigestMismatchError):
        inst.install(copy, NAME, "0.1.0", "0" * 64, kid, stack.private_key.sign(b"0" * 64))
    tampered = tmp_path / "tampered" / good.name
    tampered.parent.mkdir()
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(tampered, "w") as zout:
        for item in zin.infolist():
            body = zin.read(item)
            if item.filename.endswith("plugin.py"):
                body += b"\nprint('injected')\n"
            zout.writestr(item, body)
    tsha = hashlib.sha256(tampered.read_bytes()).hexdigest()
    with pytest.raises(DigestMismatchError, match="RECORD"):
        inst.install(tampered, NAME, "0.1.0", tsha, kid, stack.private_key.sign(tsha.encode()))
    assert not list(inst.dir.iterdir())
    folder = inst.install(copy, NAME, "0.1.0", sha, kid, stack.private_key.sign(sha.encode()))
    assert (folder / NAME / "__init__.py").exists() and not copy.exists()
