"""``walle demo``: the whole Walle loop on one machine, and a quick engine check.

* :func:`run_e2e` — a registry (SQLite, loopback) in a child process, a fleet of simulated devices,
  a purchase-intent model trained on the spot, packed with its feature script and trigger as a
  signed task, rolled out in stages, results collected, checked against the model run directly,
  and an HTML report with plots (see ``walle_demo.report``).
* :func:`run_demo` (``walle demo --quick``) — a tiny ONNX MLP on every available backend, compared
  with numpy.
"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import walle_core
from walle_core.plugins import registry

IN, HIDDEN, OUT = 8, 16, 4


@dataclass
class DemoResult:
    backend: str
    shape: tuple[int, ...]
    max_abs_error: float
    ok: bool
    first_ms: float  # includes planning and kernel preparation
    warm_ms: float


def make_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.standard_normal((IN, HIDDEN)) / np.sqrt(IN),
        "b1": rng.standard_normal(HIDDEN) * 0.1,
        "w2": rng.standard_normal((HIDDEN, OUT)) / np.sqrt(HIDDEN),
        "b2": rng.standard_normal(OUT) * 0.1,
    }
    # Cast last: the model is float32 throughout, as ONNX requires matching operand types.
    return {k: v.astype(np.float32) for k, v in weights.items()}


def build_mlp(path: Path, weights: dict[str, np.ndarray]) -> Path:
    """``softmax(relu(x @ w1 + b1) @ w2 + b2)`` with a symbolic batch dim, written to ``path``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["z0"]),
        helper.make_node("Add", ["z0", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "walle_demo_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", IN])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", OUT])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def numpy_mlp(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    h = np.maximum(x @ w["w1"] + w["b1"], 0)
    z = h @ w["w2"] + w["b2"]
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def run_demo(batch: int = 3, backends: list[str] | None = None) -> list[DemoResult]:
    """Run the MLP on each backend (default: every available one); raises ``WalleError``."""
    names = backends if backends else [b.name for b in registry().available()]
    weights = make_weights()
    x = np.random.default_rng(1).standard_normal((batch, IN)).astype(np.float32)
    expected = numpy_mlp(x, weights)
    results: list[DemoResult] = []
    with tempfile.TemporaryDirectory(prefix="walle-demo-") as tmp:
        path = build_mlp(Path(tmp) / "mlp.onnx", weights)
        for name in names:
            model = walle_core.load(path, backend=name)
            t0 = time.perf_counter()
            got = model.run({"x": x})["probs"]
            t1 = time.perf_counter()
            model.run({"x": x})
            t2 = time.perf_counter()
            same = got.shape == expected.shape
            err = float(np.max(np.abs(got - expected))) if same else float("inf")
            ok = same and bool(np.allclose(got, expected, rtol=1e-5, atol=1e-6))
            first_ms, warm_ms = (t1 - t0) * 1e3, (t2 - t1) * 1e3
            results.append(DemoResult(name, tuple(got.shape), err, ok, first_ms, warm_ms))
    return results


# ====================================================================================== end to end


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RegistryProcess:
    """``python -m walle_registry`` on 127.0.0.1 in a child process (SQLite under ``data``)."""

    def __init__(self, data: Path, admin_token: str, port: int | None = None,
                 db_url: str | None = None) -> None:
        self.data, self.admin_token, self.db_url = Path(data), admin_token, db_url
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> RegistryProcess:
        import httpx

        self.data.mkdir(parents=True, exist_ok=True)
        log = (self.data / "server.log").open("ab")
        cmd = [sys.executable, "-m", "walle_registry", "--host", "127.0.0.1", "--port", str(self.port),
               "--data", str(self.data), "--admin-token", self.admin_token]
        if self.db_url:
            cmd += ["--db", self.db_url]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the registry exited with {self.proc.returncode}; see {self.data / 'server.log'}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"the registry did not start within {timeout_s:g} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks run (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> RegistryProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Stack:
    """A registry with a trusted publisher key and an enrolment token, ready for devices."""

    root: Path
    server: RegistryProcess
    admin: Any  # walle_registry.client.RegistryClient
    private_key: Any
    keys: Any  # KeyStore the devices trust
    enroll_token: str

    @classmethod
    def start(cls, root: Path) -> Stack:
        import secrets

        from walle_core.task import KeyStore, generate_key, save_keypair
        from walle_registry.client import RegistryClient

        root.mkdir(parents=True, exist_ok=True)
        admin_token = "wpt_" + secrets.token_hex(16)
        server = RegistryProcess(root / "registry", admin_token).start()
        admin = RegistryClient(server.url, admin_token)
        key = generate_key()
        (root / "keys").mkdir(parents=True, exist_ok=True)
        _, pub = save_keypair(key, root / "keys" / "publisher")
        admin.add_key(pub.read_text(), "demo publisher")
        enroll = admin.create_token("device enrolment", ["enroll"])
        keys = KeyStore(keys=[key.public_key()])
        return cls(root, server, admin, key, keys, str(enroll["token"]))

    def restart_registry(self) -> None:
        """Kill -9 the registry and start it again on the same port and data."""
        self.server.kill()
        self.server = RegistryProcess(self.server.data, self.server.admin_token, self.server.port).start()

    def close(self) -> None:
        self.admin.close()
        self.server.stop()

    def results(self, task: str, version: str | None = None, page: int = 5000) -> list[dict[str, Any]]:
        """Every uploaded result of ``task``, page by page (each page continues after the last id)."""
        return list(self.admin.all_results(task, version, page=page))


class ResultTally:
    """How many results the registry holds for a task, counted incrementally: each poll reads
    only the pages after the last result id it saw."""

    def __init__(self, admin: Any, task: str, page: int = 5000) -> None:
        self.admin, self.task, self.page = admin, task, page
        self.after = self.count = 0

    def poll(self) -> int:
        for row in self.admin.all_results(self.task, page=self.page, after=self.after):
            self.count += 1
            self.after = int(row["id"])
        return self.count


def verify_results(results: list[dict[str, Any]], model_path: Path, backend: str = "reference") -> list[str]:
    """Check each good result: its features are those of its visit and its intent is what the
    model gives for them when run directly. Returns the problems found (empty: all correct)."""
    model = walle_core.load(model_path, backend=backend)
    problems: list[str] = []
    good = [r for r in results if r["value"].get("user", {}).get("status") == "ok"]
    if not good:
        return problems
    x = np.asarray([r["value"]["user"]["outputs"]["features"] for r in good], np.float32)
    want = model.run({"x": x})["intent"][:, 0]
    for r, expected in zip(good, want, strict=True):
        got = float(r["value"]["user"]["outputs"]["intent"])
        if not np.isclose(got, float(expected), rtol=1e-4, atol=1e-6):
            problems.append(f"{r['device']} seq {r['seq']}: intent {got} != {float(expected)} (direct run)")
    return problems


def policy_matches(attributes: dict[str, Any], os_names: Sequence[str], min_app: str) -> bool:
    """The demo's policy, evaluated on the device side for checking (os in list, app >= min)."""
    from walle_core.task import version_tuple

    return attributes["os"] in os_names and version_tuple(attributes["app_version"]) >= version_tuple(min_app)


@dataclass
class E2EOutcome:
    report: Path
    summary: dict[str, Any]
    problems: list[str]


DEMO_OS = ("android", "ios")
DEMO_MIN_APP = "3.0.0"


def _status_table(elapsed: float, st: dict[str, Any], fleet: Any, results: int) -> Any:
    from rich.table import Table

    table = Table(title=f"Walle demo: rollout of {st['task']} {st['version']}  ({elapsed:5.1f} s)", min_width=72)
    table.add_column("stage")
    table.add_column("share", justify="right")
    table.add_column("targeted", justify="right")
    table.add_column("assigned", justify="right")
    table.add_column("running", justify="right")
    table.add_column("failed", justify="right")
    for p in st["progress"]:
        marker = "→ " if p["index"] == st["current_stage"] and st["state"] == "running" else "  "
        table.add_row(f"{marker}{p['index'] + 1}", f"{p['percentage']:g}%", str(p["targeted"]), str(p["assigned"]),
                      str(p["succeeded"]), str(p["failed"]))
    s = fleet.summary()
    table.caption = (f"state [bold]{st['state']}[/bold] · devices {s['devices']} (connected {s['connected']}) · "
                     f"events {s['events']} · task runs {s['runs_ok']} ok / {s['runs_failed']} failed · "
                     f"results at the registry {results}")
    return table


def run_e2e(devices: int = 60, out: Path = Path("walle-demo"), seed: int = 7, timeout_s: float = 240.0,
            after_s: float = 6.0, console: Any = None) -> E2EOutcome:
    """The whole loop (see module doc). Raises RuntimeError when the rollout does not complete."""
    import asyncio

    return asyncio.run(_e2e(devices, Path(out), seed, timeout_s, after_s, console))


async def _e2e(n: int, out: Path, seed: int, timeout_s: float, after_s: float, console: Any) -> E2EOutcome:
    import asyncio
    import shutil

    from rich.console import Console
    from rich.live import Live

    from walle_demo import report as R
    from walle_demo import scenario
    from walle_demo.simulator import Fleet, FleetConfig
    from walle_device import RunRecord, plan_backends

    con = console or Console(highlight=False)
    t_start = time.monotonic()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    con.print(f"[bold]1/5[/bold] training the purchase-intent model on simulated shoppers (seed {seed}) ...")
    data = await asyncio.to_thread(scenario.make_dataset, seed)
    model = await asyncio.to_thread(scenario.train, data, seed)
    model_path = scenario.export_onnx(model, out / "model" / "purchase_intent.onnx")
    con.print(f"      {len(data.y)} item-page visits, {data.y.mean():.1%} bought; MLP 12→16→1, "
              f"AUC train {model.train_auc:.3f} / held-out {model.test_auc:.3f} → {model_path}")
    con.print("[bold]2/5[/bold] starting the registry (SQLite, 127.0.0.1) and publishing the signed task ...")
    stack = await asyncio.to_thread(Stack.start, out)
    runs: list[tuple[str, RunRecord]] = []
    fleet: Fleet | None = None
    try:
        bundle = scenario.build_bundle(out / "bundles", model_path, "1.0.0", stack.private_key)
        rel = await asyncio.to_thread(stack.admin.publish, bundle)
        con.print(f"      {scenario.TASK} {rel['version']} ({bundle.stat().st_size} bytes, manifest "
                  f"{rel.get('manifest_digest', '')[:12]}) at {stack.server.url}")
        con.print(f"[bold]3/5[/bold] starting {n} simulated devices (one process, asyncio) ...")
        cfg = FleetConfig(stack.server.url, stack.enroll_token, out / "devices", stack.keys, devices=n, seed=seed,
                          pause_s=(0.5, 2.5))
        fleet = Fleet(cfg, on_run=lambda did, r: runs.append((did, r)))
        await fleet.start()
        deadline = time.monotonic() + 60
        while not all(d.agent.connected for d in fleet.devices.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        profiles = {did: d.profile for did, d in fleet.devices.items()}
        targeted = {did for did, p in profiles.items() if policy_matches(p.attributes(), DEMO_OS, DEMO_MIN_APP)}
        con.print(f"      {sum(d.agent.connected for d in fleet.devices.values())} connected; the policy "
                  f"(os in {list(DEMO_OS)}, app >= {DEMO_MIN_APP}) matches {len(targeted)}")
        con.print("[bold]4/5[/bold] staged rollout 10% → 50% → 100% (success ≥ 90%, auto-pause on > 10% errors)")
        dep = await asyncio.to_thread(stack.admin.deploy, task=scenario.TASK, version="1.0.0",
                                      filters={"os": list(DEMO_OS), "app_version": f">={DEMO_MIN_APP}"},
                                      stages=[10, 50, 100], success_threshold=0.9, error_threshold=0.1,
                                      min_sample=2)
        t_dep = time.monotonic()
        timeline: list[tuple[float, int, int, int]] = []
        st: dict[str, Any] = {}
        n_results = 0
        tally = ResultTally(stack.admin, scenario.TASK)
        with Live(console=con, refresh_per_second=4, transient=False) as live:
            while time.monotonic() - t_dep < timeout_s:
                st = await asyncio.to_thread(stack.admin.status, dep["id"])
                assigned = sum(p["assigned"] for p in st["progress"])
                ok = sum(p["succeeded"] for p in st["progress"])
                bad = sum(p["failed"] for p in st["progress"])
                timeline.append((time.monotonic() - t_dep, assigned, ok, bad))
                n_results = await asyncio.to_thread(tally.poll)
                live.update(_status_table(time.monotonic() - t_dep, st, fleet, n_results))
                if st["state"] != "running":
                    break
                await asyncio.sleep(0.5)
            if st.get("state") == "completed":  # let the devices keep shopping for a moment
                end = time.monotonic() + after_s
                while time.monotonic() < end:
                    await asyncio.sleep(0.5)
                    n_results = await asyncio.to_thread(tally.poll)
                    live.update(_status_table(time.monotonic() - t_dep, st, fleet, n_results))
        if st.get("state") != "completed":
            raise RuntimeError(f"the rollout did not complete within {timeout_s:g} s: {st.get('state')} "
                               f"{st.get('reason', '')}")
        for d in fleet.devices.values():
            if d.task is not None:
                d.task.cancel()
        drained = await fleet.drain(30)
        fleet_summary = fleet.summary()
        active = {did: d.agent.active() for did, d in fleet.devices.items()}
        await fleet.stop()
        fleet = None
        con.print("[bold]5/5[/bold] collecting results and writing the report ...")
        results = await asyncio.to_thread(stack.results, scenario.TASK)
        problems = await asyncio.to_thread(verify_results, results, model_path)
        produced = {r["device"] for r in results}
        missing = sorted(targeted - produced)
        strays = sorted(produced - targeted)
        problems += [f"targeted device {d} produced no result" for d in missing]
        problems += [f"device {d} is outside the policy but produced results" for d in strays]
        if not drained:
            problems.append("some devices still had results or reports waiting after 30 s")
        search_pick = plan_backends(model_path, "auto")
        bench = await asyncio.to_thread(_backend_times, model_path)
        marks = [(t, f"stage {i + 2}") for i, t in enumerate(_stage_times(timeline, st))]
        latency_ms = [max(0.0, (r["received_at"] - r["value"]["user"]["fired_at"]) * 1000) for r in results
                      if r["value"].get("user", {}).get("fired_at")]
        run_ms: dict[str, list[float]] = {}
        for _, rec in runs:
            run_ms.setdefault(rec.backend, []).append(rec.run_ms)
        ok_results = [r for r in results if r["value"].get("user", {}).get("status") == "ok"]
        intents = [float(r["value"]["user"]["outputs"]["intent"]) for r in ok_results]
        summary = {
            "devices simulated": n,
            "devices targeted by the policy": len(targeted),
            "devices running the task": sum(1 for a in active.values() if a.get(scenario.TASK) == "1.0.0"),
            "events ingested on devices": fleet_summary["events"],
            "task runs (ok / failed)": f"{fleet_summary['runs_ok']} / {fleet_summary['runs_failed']}",
            "results at the registry": len(results),
            "results checked against a direct model run": f"{len(ok_results)} ({'all correct' if not problems else f'{len(problems)} problem(s)'})",
            "non-targeted devices with results": len(strays),
            "rollout time (all stages)": f"{timeline[-1][0]:.1f} s" if timeline else "-",
            "trigger → result latency p50 / p95": f"{R.percentile(latency_ms, 50):.0f} / {R.percentile(latency_ms, 95):.0f} ms",
            "backend picked by the search": search_pick,
            "model": f"MLP 12→16→1, held-out AUC {model.test_auc:.3f} ({len(data.y)} visits, seed {seed})",
            "mean predicted purchase intent": f"{np.mean(intents):.3f}" if intents else "-",
            "total demo time": f"{time.monotonic() - t_start:.1f} s",
        }
        charts = [
            R.line_chart({"assigned": [(t, a) for t, a, _, _ in timeline],
                          "running (reported ok)": [(t, o) for t, _, o, _ in timeline],
                          "failed": [(t, b) for t, _, _, b in timeline]},
                         "Rollout progress", "seconds since the deployment", "devices", marks),
            R.histogram(latency_ms, "Trigger → result at the registry", "latency (ms)"),
            R.bar_chart({k: v * 1e6 for k, v in bench.items()}, "Model run time per backend (batch 1, direct)",
                        "µs per run", highlight=search_pick),
            R.bar_chart({k: float(np.median(v)) for k, v in run_ms.items()}, "Task run time on devices (VM, median)",
                        "ms per run"),
        ]
        per_stage = [["stage", "share", "targeted", "assigned", "running", "failed"]] + [
            [str(p["index"] + 1), f"{p['percentage']:g}%", str(p["targeted"]), str(p["assigned"]), str(p["succeeded"]),
             str(p["failed"])] for p in st["progress"]]
        by_os: dict[str, list[int]] = {}
        for did, p in profiles.items():
            row = by_os.setdefault(f"{p.os} {'≥' if policy_matches(p.attributes(), DEMO_OS, DEMO_MIN_APP) else '<'} policy", [0, 0])
            row[0] += 1
            row[1] += did in produced
        tables = {
            "Stages": per_stage,
            "Devices by policy match": [["group", "devices", "with results"]] + [[k, str(a), str(b)] for k, (a, b) in sorted(by_os.items())],
            "Sample results": [["device", "item", "intent", "backend", "run ms"]] + [
                [r["device"], str(r["value"]["user"]["outputs"]["item_id"]), f"{r['value']['user']['outputs']['intent']:.3f}",
                 str(r["value"]["user"]["backend"]), f"{r['value']['user']['run_ms']:.2f}"] for r in ok_results[:12]],
        }
        if problems:
            tables["Problems"] = [["problem"]] + [[p] for p in problems[:50]]
        report_path = R.write_report(out / "report.html", summary, charts, tables)
        (out / "summary.json").write_text(__import__("json").dumps(summary, indent=2), "utf-8")
        return E2EOutcome(report_path.resolve(), summary, problems)
    finally:
        if fleet is not None:
            await fleet.stop()
        await asyncio.to_thread(stack.close)


def _stage_times(timeline: list[tuple[float, int, int, int]], st: dict[str, Any]) -> list[float]:
    """When the assigned count jumped (a new stage's devices were assigned)."""
    out: list[float] = []
    for (_, a0, _, _), (t1, a1, _, _) in itertools.pairwise(timeline):
        if a1 > a0 and len(out) < max(0, len(st.get("progress", [])) - 1) and a0 > 0:
            out.append(t1)
    return out


def _backend_times(model_path: Path, repeats: int = 200) -> dict[str, float]:
    """Seconds per batch-1 run of the model on every available backend (warm, median of 5 blocks)."""
    x = np.zeros((1, 12), np.float32)
    times: dict[str, float] = {}
    for b in registry().available():
        try:
            m = walle_core.load(model_path, backend=b.name)
            m.run({"x": x})
        except walle_core.WalleError:
            continue
        blocks = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(repeats // 5):
                m.run({"x": x})
            blocks.append((time.perf_counter() - t0) / (repeats // 5))
        times[b.name] = float(np.median(blocks))
    return times
