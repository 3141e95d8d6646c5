"""Plugin discovery: built-in backends, broken plugins, and a real third-party package.

Third-party packages are installed for real (``pip install --target`` into a temp folder that is
put on ``sys.path``), so ``importlib.metadata`` finds their ``walle.backends`` entry points exactly
as it would after ``pip install``; nothing outside the temp folder is touched.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

import walle_core
from walle_core import atomic as A
from walle_core import plugins
from walle_core.backend import Availability, Backend, DeviceInfo, Executable, Program
from walle_core.errors import BackendUnavailableError
from walle_core.plugins import ENTRY_POINT_GROUP, Registry

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = {"reference", "cpu", "opencl", "vulkan", "metal"}


# --------------------------------------------------------------------------- helpers


def pip_install_target(src: Path, target: Path) -> None:
    """Build and install the package at ``src`` into ``target`` with pip, offline."""
    cmd = [
        sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
        "--disable-pip-version-check", "--quiet", "--target", str(target), str(src),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"


def write_files(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


Installer = Callable[[dict[str, str]], Path]


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Installer]:
    """Install a package from a dict of files; undo sys.path and sys.modules afterwards."""
    before = set(sys.modules)

    def install(files: dict[str, str]) -> Path:
        src = write_files(tmp_path / "src", files)
        target = tmp_path / "site"
        pip_install_target(src, target)
        monkeypatch.syspath_prepend(str(target))
        importlib.invalidate_caches()
        return target

    yield install
    for name in set(sys.modules) - before:
        if name.startswith(("my_walle_backend", "walle_broken_plugins")):
            del sys.modules[name]


def doc_files(doc: Path) -> dict[str, str]:
    """The code blocks of a markdown page whose fence names a file: ```python file=a/b.py"""
    pattern = re.compile(r"^```\w*\s+file=(\S+)\n(.*?)^```", re.M | re.S)
    return {m.group(1): m.group(2) for m in pattern.finditer(doc.read_text())}


def relu_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Relu", ["n"], ["y"])],
        "neg_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


# --------------------------------------------------------------------------- built-in backends


def test_builtin_backends_are_listed() -> None:
    entries = {e.name: e for e in Registry().entries()}
    assert set(entries) >= BUILTIN
    for name in BUILTIN:
        assert entries[name].source.startswith("entry point walle:"), entries[name].source


def test_reference_is_available_with_a_device() -> None:
    entry = {e.name: e for e in Registry().entries()}["reference"]
    assert entry.availability == Availability(True)
    assert entry.backend is not None and entry.backend.name == "reference"
    assert entry.device is not None and entry.device.kind == "cpu"


@pytest.mark.skipif(sys.platform == "darwin", reason="Metal is real on macOS")
def test_metal_is_unavailable_off_macos() -> None:
    entry = {e.name: e for e in Registry().entries()}["metal"]
    assert not entry.availability.available
    assert "macOS" in entry.availability.reason
    assert entry.backend is None and entry.device is None


@pytest.mark.parametrize("name", ["cpu", "opencl", "vulkan", "metal"])
def test_unavailable_backends_are_never_offered(name: str) -> None:
    reg = Registry()
    entry = {e.name: e for e in reg.entries()}[name]
    offered = {b.name for b in reg.available()}
    if entry.availability.available:  # a backend that says yes must hand out an instance
        assert entry.backend is not None and name in offered
        return
    assert entry.availability.reason, "an unavailable backend must say why"
    assert entry.backend is None
    assert name not in offered
    with pytest.raises(BackendUnavailableError, match=name):
        reg.get(name)


def test_available_matches_entries() -> None:
    reg = Registry()
    assert [b.name for b in reg.available()] == [
        e.name for e in reg.entries() if e.availability.available
    ]
    assert "reference" in {b.name for b in reg.available()}


def test_available_backends_really_run_an_op() -> None:
    """Truthful availability: every backend that says yes compiles and runs a one-op program."""
    x = A.Tensor((2, 3), np.dtype(np.float32), id=1)
    y = A.Tensor((2, 3), np.dtype(np.float32), id=2)
    op = A.Unary([x], [y], fn="relu")
    data = np.array([[-1, 0, 2], [3, -4, 5]], np.float32)
    ran = []
    for backend in Registry().available():
        algos = backend.algorithms(op)
        if not algos:
            continue
        exe = backend.compile(Program([(op, algos[0])], [x], [y]))
        (out,) = exe.run([data])
        np.testing.assert_array_equal(out, np.maximum(data, 0))
        ran.append(backend.name)
    assert "reference" in ran


def test_in_process_unavailable_backend_is_not_offered() -> None:
    class Absent(Backend):
        name = "absent"

        def availability(self) -> Availability:
            return Availability(False, "no such device here")

        def device_info(self) -> DeviceInfo:
            raise BackendUnavailableError("no such device here")

        def algorithms(self, op: A.Op) -> tuple[()]:
            return ()

        def compile(self, program: Program, *, threads: int | None = None) -> Executable:
            raise BackendUnavailableError("no such device here")

    reg = Registry()
    entry = reg.register(Absent)
    assert entry.availability.reason == "no such device here" and entry.device is None
    assert "absent" not in {b.name for b in reg.available()}


def test_disabled_plugin_is_listed_but_not_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WALLE_DISABLE_PLUGINS", "vulkan")
    entry = {e.name: e for e in Registry().entries()}["vulkan"]
    assert not entry.availability.available
    assert "WALLE_DISABLE_PLUGINS" in entry.availability.reason


# --------------------------------------------------------------------------- broken plugins

BROKEN = {
    "pyproject.toml": textwrap.dedent(
        """
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "walle-broken-plugins"
        version = "0.0.1"

        [project.entry-points."walle.backends"]
        missing = "walle_broken_plugins.does_not_exist"
        explodes = "walle_broken_plugins.explodes"
        badhook = "walle_broken_plugins.badhook"
        notabackend = "walle_broken_plugins.notabackend"
        probefails = "walle_broken_plugins.probefails"

        [tool.setuptools]
        packages = ["walle_broken_plugins"]
        """
    ),
    "walle_broken_plugins/__init__.py": "",
    "walle_broken_plugins/explodes.py": 'raise RuntimeError("boom at import")\n',
    "walle_broken_plugins/badhook.py": textwrap.dedent(
        """
        from walle_core.hookspecs import hookimpl

        @hookimpl
        def walle_backends():
            raise ValueError("hook is broken")
        """
    ),
    "walle_broken_plugins/notabackend.py": textwrap.dedent(
        """
        from walle_core.hookspecs import hookimpl

        class NotABackend:
            name = "notabackend"

        @hookimpl
        def walle_backends():
            return [NotABackend]
        """
    ),
    "walle_broken_plugins/probefails.py": textwrap.dedent(
        """
        from walle_core.backend import Backend
        from walle_core.hookspecs import hookimpl

        class ProbeFails(Backend):
            name = "probefails"
            def availability(self):
                raise OSError("driver crashed")
            def device_info(self):
                raise OSError("driver crashed")
            def algorithms(self, op):
                return ()
            def compile(self, program, *, threads=None):
                raise OSError("driver crashed")

        @hookimpl
        def walle_backends():
            return [ProbeFails]
        """
    ),
}


def test_broken_plugins_are_listed_unavailable(installed: Installer) -> None:
    installed(BROKEN)
    names = {ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert {"missing", "explodes", "badhook", "notabackend", "probefails"} <= names

    reg = Registry()  # must not raise
    entries = {e.name: e for e in reg.entries()}
    expected = {
        "missing": "plugin failed to load: ModuleNotFoundError",
        "explodes": "plugin failed to load: RuntimeError: boom at import",
        "badhook": "walle_backends() raised ValueError('hook is broken')",
        "notabackend": "is not a walle_core.backend.Backend",
        "probefails": "backend raised while probing: OSError('driver crashed')",
    }
    for name, reason in expected.items():
        entry = entries[name]
        assert not entry.availability.available, name
        assert reason in entry.availability.reason, (name, entry.availability.reason)
        assert entry.backend is None
    assert entries["missing"].source == (
        "entry point walle-broken-plugins:walle_broken_plugins.does_not_exist"
    )
    offered = {b.name for b in reg.available()}
    assert "reference" in offered and not offered & set(expected)


# --------------------------------------------------------------------------- a real third party


def test_documented_template_installs_and_runs(
    installed: Installer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plugin template in docs/plugins.md, installed with pip, is discovered and runs."""
    files = doc_files(ROOT / "docs" / "plugins.md")
    assert set(files) == {"pyproject.toml", "my_walle_backend/__init__.py",
                          "my_walle_backend/plugin.py"}
    installed(files)

    reg = Registry()
    entry = {e.name: e for e in reg.entries()}["mybackend"]
    assert entry.availability.available, entry.availability.reason
    assert entry.source == "entry point my-walle-backend:my_walle_backend.plugin"
    assert entry.device is not None and entry.device.kind == "cpu"
    assert "mybackend" in {b.name for b in reg.available()}

    # Run a model on it through the public API: Neg and Relu run on mybackend, the rest (if any)
    # falls back to reference.
    monkeypatch.setattr(plugins, "_registry", reg)
    model = walle_core.load(relu_model(), backend="mybackend")
    assert model.backend_names == ["mybackend", "reference"]
    x = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    np.testing.assert_array_equal(model.run({"x": x})["y"], np.maximum(-x, 0))
    steps = model.plan_for({"x": x}).stage.steps
    assert "mybackend" in {s.backend for s in steps}


def test_template_uninstalled_is_gone() -> None:
    """After the install tests, the throwaway packages are not visible any more."""
    names = {ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert "mybackend" not in names and "missing" not in names
    assert "mybackend" not in {e.name for e in Registry().entries()}
