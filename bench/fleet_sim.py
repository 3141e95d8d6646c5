"""A discrete-event model of a staged rollout to a fleet one machine cannot run.

    python bench/fleet_sim.py --calibrate cal.json --predict 10000      # the loopback check
    python bench/fleet_sim.py --calibrate cal.json                      # 10^6, 10^8, 10^9 devices

``cal.json`` is the output of ``bench/bench_registry.py --replicas 3 --out cal.json``: every cost
below is *measured* there (CPU seconds per device and per check-in of the replicas, PostgreSQL
and nginx, and how many cores the servers actually got), except the broker listener's cost per
notice, which this script measures itself on :class:`walle_registry.broker.InProcessBroker`
(the code every replica's LISTEN thread runs for each notice). Assumptions that are not
measurements are flags with their defaults printed in the output (online share, bandwidths,
bundle size, CDN egress, check-in interval, streams a replica holds).

The model. Devices are a random sample of ``--sample`` devices, each standing for ``N/sample``
real ones (a stratified simulation: every event of a sample device is that many real events, so
its work on a tier is that many times a device's cost). Tiers are fluid FIFO servers with a
capacity in CPU cores (or bytes/s for the CDN), fed in event-time order from one event heap:

* **rollout** — stages open by quota (``--stages``); a stage's fan-out is its assignment and
  notice writes on PostgreSQL, then the broker: with PostgreSQL ``NOTIFY`` every replica's
  listener parses *every* notice (``broadcast``, what the code does today) or only its shard
  (``sharded``), then each stream's write; notices reach devices spread over that window. The next
  stage opens ``--bake`` seconds after ``--gate`` of the stage's online devices reported.
* **devices** — online at the start with ``--online`` probability (they hold a stream); the
  others come online after an exponential time (mean ``--offline-mean``) and catch up on connect.
  On a notice a device waits ``uniform(0, jitter)``, pulls (API work on the replicas), downloads the
  bundle (its own bandwidth, lognormal, and the CDN's egress) and reports (replica + database).
* **background** — check-ins of the online devices every ``--checkin-interval`` take their share
  of the replicas and the database before any rollout work.

``--predict N`` models the loopback benchmark instead: one machine whose measured cores all tiers
share, every device online with a stream, one stage, no jitter, loopback bandwidth.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Costs:
    """Measured costs: CPU seconds per device or per check-in, by tier, and the cores the servers got."""

    notify: dict[str, float]  # fan-out work per device (assignment and notice writes, NOTIFY, SSE write)
    pull: dict[str, float]  # manifest, blob authorisation (+ nginx sending the bytes), report
    checkin: dict[str, float]
    listen: float  # broker listener CPU per notice (parse + match), on every replica that receives it
    cores: float  # cores the server processes actually used during the measured rollout
    checkin_cores: float  # ... and during the check-in phase
    source: str = ""
    # CPU seconds a rollout costs whatever its size (first requests filling caches, the create's
    # fixed statements), fitted when runs of two or more sizes calibrate the model
    notify_fixed: dict[str, float] = field(default_factory=dict)
    pull_fixed: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_bench(cls, path: Path, listen: float) -> Costs:
        return cls.fit([path], listen)

    @classmethod
    def fit(cls, paths: list[Path], listen: float) -> Costs:
        """Costs from one or more ``bench_registry.py --out`` runs. Per tier, the fan-out's and the
        pulls' CPU are fitted as ``fixed + per_device * devices`` (least squares; with one run, or
        when the fit gives a negative fixed part, proportional to the devices); check-in costs and
        the cores the servers got are the runs' means."""
        runs = [json.loads(p.read_text()) for p in paths]
        tiers = [k.removesuffix("_cpu_s") for k in runs[0]["phases"]["rollout"]
                 if k.endswith("_cpu_s") and k != "client_cpu_s"]
        ns = [float(r["devices"]) for r in runs]
        fan_cpu: dict[str, list[float]] = defaultdict(list)
        pull_cpu: dict[str, list[float]] = defaultdict(list)
        checkin: dict[str, list[float]] = defaultdict(list)
        cores, checkin_cores = [], []
        for run in runs:
            roll, chk = run["phases"]["rollout"], run["phases"]["checkin"]
            fan = run["phases"].get("fanout")
            # without a fan-out phase (older runs): split by the share of the wall time until notified
            share = None if fan is not None else min(1.0, run["notify_s"]["99"] / roll["wall_s"])
            checkins = max(1.0, run["checkins_per_s"] * chk["wall_s"])
            # devices that had pulled before the last notice went out: their pulls ran inside the
            # fan-out phase, so each takes a pull's share (the rollout's average) back out of it
            early = fan.get("pulled", 0) if fan is not None else 0
            n_run = float(run["devices"])
            for t in tiers:
                total = roll[f"{t}_cpu_s"]
                f = min(fan[f"{t}_cpu_s"], total) if fan is not None else total * (share or 0.0)
                if early and n_run > early:
                    per_pull = (total - f) / (n_run - early)
                    f = max(0.0, f - early * per_pull)
                fan_cpu[t].append(f)
                pull_cpu[t].append(max(0.0, total - f))
                checkin[t].append(chk[f"{t}_cpu_s"] / checkins)
            cores.append(sum(roll[f"{t}_cpu_s"] for t in tiers) / roll["wall_s"])
            checkin_cores.append(sum(chk[f"{t}_cpu_s"] for t in tiers) / chk["wall_s"])
        notify, notify_fixed = _fit_lines(ns, fan_cpu)
        pull, pull_fixed = _fit_lines(ns, pull_cpu)
        return cls(notify=notify, pull=pull, checkin={t: sum(v) / len(v) for t, v in checkin.items()},
                   listen=listen, cores=sum(cores) / len(cores), checkin_cores=sum(checkin_cores) / len(checkin_cores),
                   source=", ".join(str(p) for p in paths), notify_fixed=notify_fixed, pull_fixed=pull_fixed)


def _fit_lines(ns: list[float], cpu: dict[str, list[float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Per tier: (per-device slope, fixed intercept) of CPU over devices."""
    per, fixed = {}, {}
    mean_n = sum(ns) / len(ns)
    var = sum((n - mean_n) ** 2 for n in ns)
    for t, ys in cpu.items():
        mean_y = sum(ys) / len(ys)
        slope = sum((n - mean_n) * (y - mean_y) for n, y in zip(ns, ys, strict=True)) / var if var else 0.0
        icpt = mean_y - slope * mean_n
        if not var or icpt < 0 or slope < 0:
            slope, icpt = sum(ys) / sum(ns), 0.0
        per[t], fixed[t] = slope, icpt
    return per, fixed


def measure_listen_cost(notices: int = 20_000) -> float:
    """CPU seconds per notice of a replica's listener: decode NOTIFY payloads of production-shaped
    notices and hand them to a broker with no local subscriber (the common case at scale)."""
    from walle_registry.broker import MAX_PAYLOAD, InProcessBroker

    broker = InProcessBroker()
    note = {"seq": 123456789, "device": "device-0000000000", "task": "keyboard-predictor", "version": "1.4.2",
            "digest": "ab" * 32, "deployment": 4242, "action": "install"}
    per = max(1, MAX_PAYLOAD // (len(json.dumps(note, separators=(",", ":"))) + 1))
    payload = json.dumps([{**note, "device": f"device-{i:010d}"} for i in range(per)], separators=(",", ":"))
    rounds = max(1, notices // per)
    t = time.process_time()
    for _ in range(rounds):
        broker.deliver(json.loads(payload))
    return (time.process_time() - t) / (rounds * per)


class Fluid:
    """A FIFO server of ``capacity`` units per second; ``take`` returns when work submitted at
    ``t`` finishes. Submissions must come in time order (the event heap guarantees it)."""

    def __init__(self, capacity: float, background: float = 0.0) -> None:
        if background >= capacity:
            raise ValueError(f"background load {background:.3g} exceeds capacity {capacity:.3g}: under-provisioned")
        self.capacity = capacity - background
        self.busy_until = 0.0

    def take(self, t: float, work: float) -> float:
        self.busy_until = max(t, self.busy_until) + work / self.capacity
        return self.busy_until


@dataclass
class Fleet:
    devices: int
    online: float = 0.6
    offline_mean_s: float = 6 * 3600
    checkin_interval_s: float = 900.0
    bandwidth_mbit: float = 10.0  # median device download speed (lognormal, sigma 1)
    bundle_mb: float = 5.0
    stages: tuple[float, ...] = (1.0, 10.0, 50.0, 100.0)
    gate: float = 0.95  # share of a stage's online devices that reported before the next opens
    bake_s: float = 600.0
    jitter_s: float = 300.0


@dataclass
class Plant:
    replicas: int
    replica_cores: float = 1.0
    db_nodes: int = 1
    db_cores: float = 32.0
    cdn_gbit: float = 10_000.0  # CDN egress (None-like huge on loopback)
    broker: str = "broadcast"
    shared_cores: float | None = None  # loopback: every tier on one machine of this many cores


@dataclass
class Outcome:
    notify_s: dict[str, float] = field(default_factory=dict)
    deliver_s: dict[str, float] = field(default_factory=dict)
    peak_per_s: dict[str, float] = field(default_factory=dict)
    checkins_per_s: float | None = None  # loopback only: what the measured cores answer
    stage_opened_s: list[float] = field(default_factory=list)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def simulate(fleet: Fleet, plant: Plant, costs: Costs, sample: int = 20_000, seed: int = 1) -> Outcome:
    rng = random.Random(seed)
    n = fleet.devices
    s = min(sample, n)
    w = n / s  # real devices per simulated one
    online_now = fleet.online * n
    checkin_rate = online_now / fleet.checkin_interval_s
    shared = plant.shared_cores
    if shared is not None:  # loopback: one pool of cores for every tier
        pool = Fluid(shared)
        replicas = db = pool
    else:
        replicas = Fluid(plant.replicas * plant.replica_cores,
                         checkin_rate * costs.checkin.get("replicas", 0.0))
        db = Fluid(plant.db_nodes * plant.db_cores, checkin_rate * costs.checkin.get("postgres", 0.0))
    cdn = Fluid(plant.cdn_gbit * 1e9 / 8)
    bundle = fleet.bundle_mb * 1e6

    # devices: online at start, or the time they come online; stage bucket; bandwidth
    start_online = [rng.random() < fleet.online for _ in range(s)]
    comes_online = [0.0 if on else rng.expovariate(1 / fleet.offline_mean_s) for on in start_online]
    bucket = [rng.random() * 100 for _ in range(s)]
    bw = [fleet.bandwidth_mbit * 1e6 / 8 * math.exp(rng.gauss(0, 1)) for _ in range(s)]

    events: list[tuple[float, int, str, int]] = []
    order = 0

    def push(t: float, kind: str, dev: int) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (t, order, kind, dev))

    notified: dict[int, float] = {}
    delivered: dict[int, float] = {}
    rate: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))  # tier -> second -> count
    out = Outcome()
    stage_of = [next(i for i, p in enumerate(fleet.stages) if b < p) for b in bucket]
    waiting = [0] * len(fleet.stages)  # online assigned devices of a stage that have not reported
    online_in = [sum(1 for d in range(s) if stage_of[d] == st and start_online[d]) for st in range(len(fleet.stages))]
    stage = -1
    gate_passed: set[int] = set()

    def spread(tier: str, t0: float, t1: float, amount: float) -> None:
        """Count ``amount`` events evenly over ``[t0, t1]`` (per-second bins)."""
        first, last = int(t0), max(int(t0), int(t1))
        for sec in range(first, last + 1):
            rate[tier][sec] += amount / (last - first + 1)

    def open_stage(t: float) -> None:
        nonlocal stage
        stage += 1
        out.stage_opened_s.append(t)
        members = [d for d in range(s) if stage_of[d] == stage]
        k = len(members) * w
        once = stage == 0  # a rollout's fixed costs come with its first stage
        t_db = db.take(t, k * costs.notify.get("postgres", 0.0) + (costs.notify_fixed.get("postgres", 0.0) if once
                                                                   else 0.0))
        spread("db_writes", t, t_db, 2 * k)  # assignment + notice rows (targets ride along)
        # every worker process has its own LISTEN thread (one core at most): broadcast makes each
        # parse every notice, sharded channels only those of its own streams
        workers = max(1, round(plant.replicas * plant.replica_cores))
        per_worker = k if plant.broker == "broadcast" else k / workers
        listen_s = per_worker * costs.listen
        fan_cost = costs.notify.get("replicas", 0.0) + (costs.notify.get("nginx", 0.0) if shared else 0.0)
        fan_fixed = costs.notify_fixed.get("replicas", 0.0) + (costs.notify_fixed.get("nginx", 0.0) if shared else 0.0)
        t_fan = replicas.take(t_db, k * fan_cost + (fan_fixed if once else 0.0))
        # the stage's transaction and NOTIFY go out together; listeners then parse the notices at
        # their own pace and write each to its stream
        rng.shuffle(members)
        for i, d in enumerate(members):
            if start_online[d]:
                waiting[stage] += 1
                at = t_fan + listen_s * (i + 1) / len(members)
            else:
                at = max(comes_online[d], t_db)  # catches up when it connects
            rate["broker_notices"][int(at)] += w
            push(at, "notice", d)

    pull_fixed = [dict(costs.pull_fixed)]
    open_stage(0.0)
    t_end = 0.0
    while events:
        t, _, kind, d = heapq.heappop(events)
        t_end = t
        if kind == "notice":
            notified[d] = t
            jitter = rng.uniform(0, fleet.jitter_s) if fleet.jitter_s else 0.0
            push(t + jitter, "pull", d)
        elif kind == "pull":
            rate["api_requests"][int(t)] += 3 * w  # manifest, bundle/blob authorisation, report
            fixed = pull_fixed.pop() if pull_fixed else {}  # the rollout's fixed pull work, with the first pull
            if shared is not None:  # one pool: the device's whole pull is one piece of its work
                push(pool.take(t, w * sum(costs.pull.values()) + sum(fixed.values())), "report", d)
            else:
                t_api = replicas.take(t, w * costs.pull.get("replicas", 0.0) + fixed.get("replicas", 0.0))
                push(max(cdn.take(t_api, w * bundle), t_api + bundle / bw[d]), "report", d)
                rate["cdn_bytes"][int(t_api)] += w * bundle
        elif kind == "report":
            done = t if shared is not None else db.take(t, w * costs.pull.get("postgres", 0.0))
            rate["db_writes"][int(t)] += w
            delivered[d] = done
            if start_online[d]:
                st = stage_of[d]
                waiting[st] -= 1
                if (st == stage and st not in gate_passed and stage + 1 < len(fleet.stages)
                        and waiting[st] <= (1 - fleet.gate) * max(1, online_in[st])):
                    gate_passed.add(st)
                    push(done + fleet.bake_s, "open", -1)
        elif kind == "open":
            open_stage(t)
    del t_end
    base = [d for d in range(s) if start_online[d]]
    out.notify_s = {p: round(pct([notified[d] for d in base if d in notified], float(p[1:])), 2)
                    for p in ("p50", "p99")}
    out.deliver_s = {p: round(pct([delivered[d] for d in base if d in delivered], float(p[1:])), 2)
                     for p in ("p50", "p99")}
    out.peak_per_s = {tier: round(max(bins.values()), 1) for tier, bins in rate.items()}
    out.peak_per_s["checkins"] = round(checkin_rate, 1)
    if shared is not None:
        out.checkins_per_s = round(costs.checkin_cores / sum(costs.checkin.values()), 1)
    return out


def plan(fleet: Fleet, costs: Costs, streams_per_replica: int, replica_cores: float, db_cores: float,
         utilisation: float = 0.5) -> Plant:
    """Replicas for the streams and the check-ins at ``utilisation``; database nodes for the
    check-in flushes and a 10%-stage fan-out in a minute."""
    online = fleet.online * fleet.devices
    by_streams = math.ceil(online / streams_per_replica)
    by_checkins = math.ceil(online / fleet.checkin_interval_s * costs.checkin.get("replicas", 0.0)
                            / (replica_cores * utilisation))
    db_load = (online / fleet.checkin_interval_s * costs.checkin.get("postgres", 0.0)
               + 0.1 * fleet.devices * costs.notify.get("postgres", 0.0) / 60)
    return Plant(replicas=max(by_streams, by_checkins, 1), replica_cores=replica_cores,
                 db_nodes=max(1, math.ceil(db_load / (db_cores * utilisation))), db_cores=db_cores)


def compare(pred: Outcome, run: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Predicted, measured and the prediction's error (predicted / measured - 1) per figure."""
    pairs = {"notified_p50_s": (pred.notify_s["p50"], run["notify_s"]["50"]),
             "notified_p99_s": (pred.notify_s["p99"], run["notify_s"]["99"]),
             "pulled_p50_s": (pred.deliver_s["p50"], run["pull_s"]["50"]),
             "pulled_p99_s": (pred.deliver_s["p99"], run["pull_s"]["99"]),
             "checkins_per_s": (pred.checkins_per_s or float("nan"), run["checkins_per_s"])}
    return {k: {"predicted": p, "measured": m, "error": round(p / m - 1, 3) if m else float("nan")}
            for k, (p, m) in pairs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calibrate", type=Path, required=True, nargs="+",
                    help="bench_registry.py --replicas N --out JSON (runs of two sizes also fit fixed costs)")
    ap.add_argument("--predict", type=int, default=0, help="model the loopback benchmark with this many devices")
    ap.add_argument("--measured", type=Path, default=None,
                    help="with --predict: a bench_registry.py --out JSON of that run, printed next to the prediction")
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--sizes", default="1e6,1e8,1e9")
    ap.add_argument("--sample", type=int, default=20_000)
    ap.add_argument("--online", type=float, default=0.6)
    ap.add_argument("--bundle-mb", type=float, default=5.0)
    ap.add_argument("--bandwidth-mbit", type=float, default=10.0)
    ap.add_argument("--cdn-gbit", type=float, default=10_000.0)
    ap.add_argument("--jitter", type=float, default=300.0)
    ap.add_argument("--bake", type=float, default=600.0)
    ap.add_argument("--streams-per-replica", type=int, default=19_400,
                    help="idle streams one replica holds (bench/bench_streams.py held 19,400, the most the "
                         "20,000-descriptor limit of the measuring machine allowed, at 37 KiB each)")
    ap.add_argument("--replica-cores", type=float, default=4.0, help="worker processes per replica")
    ap.add_argument("--db-cores", type=float, default=32.0)
    ap.add_argument("--broker", choices=["broadcast", "sharded"], default="broadcast")
    args = ap.parse_args()
    costs = Costs.fit(args.calibrate, measure_listen_cost())
    report: dict[str, Any] = {"costs": asdict(costs)}
    if args.predict:
        fleet = Fleet(args.predict, online=1.0, bundle_mb=0.07, stages=(100.0,), bake_s=0.0, jitter_s=0.0,
                      bandwidth_mbit=1e5)
        plant = Plant(replicas=args.replicas, shared_cores=costs.cores, cdn_gbit=1e3)
        pred = simulate(fleet, plant, costs, args.sample)
        report["prediction"] = {"devices": args.predict, **asdict(pred)}
        if args.measured:
            report["versus_measured"] = compare(pred, json.loads(args.measured.read_text()))
    else:
        rows = []
        for size in (int(float(x)) for x in args.sizes.split(",")):
            fleet = Fleet(size, online=args.online, bundle_mb=args.bundle_mb, bandwidth_mbit=args.bandwidth_mbit,
                          jitter_s=args.jitter, bake_s=args.bake)
            plant = plan(fleet, costs, args.streams_per_replica, args.replica_cores, args.db_cores)
            plant.cdn_gbit, plant.broker = args.cdn_gbit, args.broker
            res = simulate(fleet, plant, costs, args.sample)
            rows.append({"devices": size, "replicas": plant.replicas, "db_nodes": plant.db_nodes, **asdict(res)})
        report["assumptions"] = {k: v for k, v in vars(args).items() if k not in ("calibrate", "predict")}
        report["projection"] = rows
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
