"""Trigger specs: JSON-serialisable sequence patterns, a builder DSL, and their validation.

A spec is plain data because triggers ship inside task bundles::

    {"id": "cart_abandon", "within_ms": 600000,
     "pattern": [
        {"name": "add",  "event": "add_to_cart"},
        {"name": "view", "contiguity": "followed_by", "event": "view_item", "one_or_more": true},
        {"name": "buy",  "contiguity": "not_followed_by", "event": "purchase"}]}

``docs/pipeline.md`` defines every operator; :func:`compile_spec` checks a spec and returns the
:class:`CompiledTrigger` the matcher runs.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from walle_core.pipeline.errors import TriggerSpecError
from walle_core.pipeline.events import Event

CONTIGUITIES = ("next", "followed_by", "followed_by_any", "not_next", "not_followed_by")
INNER = ("relaxed", "consecutive", "any")
# Internal contiguity codes: strict, relaxed (first matching event), any (every matching event).
STRICT, RELAXED, ANY = 0, 1, 2
_CONTIG_CODE = {"next": STRICT, "followed_by": RELAXED, "followed_by_any": ANY}
_INNER_CODE = {"consecutive": STRICT, "relaxed": RELAXED, "any": ANY}
_STAGE_KEYS = {"name", "contiguity", "event", "where", "times", "one_or_more", "optional", "inner"}
# "features": what the pipeline computes over a match (checked by the pipeline, not the matcher).
_SPEC_KEYS = {"id", "pattern", "within_ms", "emit_timeouts", "description", "features"}


def _contains(a: Any, b: Any) -> bool:
    return b in a


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "in": lambda a, b: a in b,
    "not_in": lambda a, b: a not in b,
    "contains": _contains,
    "startswith": lambda a, b: isinstance(a, str) and a.startswith(b),
    "exists": lambda a, b: True,  # reaching the op means the field exists
}
_MISSING = object()


def _getter(path: str) -> Callable[[Event], Any]:
    head, _, rest = path.partition(".")
    if head in ("event_id", "page", "timestamp_ms", "key") and not rest:
        return operator.attrgetter(head)
    if head != "args" or not rest:
        raise TriggerSpecError(
            f"where field {path!r}: expected event_id, page, timestamp_ms, key or args.<name>"
        )
    parts = rest.split(".")

    def get(ev: Event) -> Any:
        value: Any = ev.args
        for p in parts:
            if not isinstance(value, Mapping) or p not in value:
                return _MISSING
            value = value[p]
        return value

    return get


def _predicate(field_path: str, op: str, value: Any) -> Callable[[Event], bool]:
    get = _getter(field_path)
    fn = _OPS[op]

    def pred(ev: Event) -> bool:
        got = get(ev)
        if got is _MISSING:
            return False
        try:
            return bool(fn(got, value))
        except TypeError:  # "3" < 4 in an event: the condition is simply not met
            return False

    return pred


@dataclass(frozen=True)
class Condition:
    """Which events a stage accepts: an event-id set (None = any id) and field predicates."""

    ids: frozenset[str] | None
    where: tuple[tuple[str, str, Any], ...]
    test: Callable[[Event], bool] | None  # None: the id check is the whole condition

    def __call__(self, ev: Event) -> bool:
        if self.ids is not None and ev.event_id not in self.ids:
            return False
        return self.test is None or self.test(ev)


def make_condition(event: Any, where: Any, ctx: str) -> Condition:
    if event is None:
        ids = None
    elif isinstance(event, str | int) and not isinstance(event, bool):
        ids = frozenset([str(event)])
    elif isinstance(event, list) and event and all(
        isinstance(e, str | int) and not isinstance(e, bool) for e in event
    ):
        ids = frozenset(str(e) for e in event)
    else:
        raise TriggerSpecError(f"{ctx}: 'event' must be an id, a non-empty list of ids or null")
    if where is None:
        where = []
    if not isinstance(where, list):
        raise TriggerSpecError(f"{ctx}: 'where' must be a list of {{field, op, value}} objects")
    clauses: list[tuple[str, str, Any]] = []
    preds: list[Callable[[Event], bool]] = []
    for i, w in enumerate(where):
        if not isinstance(w, Mapping) or not {"field", "op"} <= set(w) or set(w) - {"field", "op", "value"}:
            raise TriggerSpecError(f"{ctx}: where[{i}] must be an object with field, op[, value]")
        f, op, value = w["field"], w["op"], w.get("value")
        if not isinstance(f, str) or op not in _OPS:
            raise TriggerSpecError(f"{ctx}: where[{i}]: unknown op {op!r} (known: {sorted(_OPS)})")
        if op in ("in", "not_in") and not isinstance(value, list):
            raise TriggerSpecError(f"{ctx}: where[{i}]: {op!r} needs a list value")
        if op != "exists" and "value" not in w:
            raise TriggerSpecError(f"{ctx}: where[{i}]: op {op!r} needs a value")
        preds.append(_predicate(f, op, value))
        clauses.append((f, op, value))
    test: Callable[[Event], bool] | None
    if not preds:
        test = None
    elif len(preds) == 1:
        test = preds[0]
    else:
        test = lambda ev: all(p(ev) for p in preds)  # noqa: E731
    return Condition(ids, tuple(clauses), test)


@dataclass(frozen=True)
class Stage:
    """A consuming stage after compilation (negations are folded into ``neg_*`` of the next)."""

    name: str
    cond: Condition
    min: int  # events taken when present (>= 1)
    max: int | None  # None: unbounded
    optional: bool  # may take no event at all
    contiguity: int  # how the stage's first element follows the previous taken element
    inner: int  # how a loop's elements follow each other
    neg_next: Condition | None  # not_next before this stage
    neg_follow: Condition | None  # not_followed_by before this stage


@dataclass(frozen=True)
class CompiledTrigger:
    id: str
    stages: tuple[Stage, ...]
    within_ms: int | None
    tail_neg_next: Condition | None
    tail_neg_follow: Condition | None
    emit_timeouts: bool
    spec: Mapping[str, Any]

    def reachable(self, j: int) -> tuple[tuple[int, ...], bool]:
        """Stages a run that last took stage ``j`` may enter next (skipping optional ones), and
        whether it may complete (every later stage optional). ``j = -1``: the start."""
        out: list[int] = []
        k = j + 1
        while k < len(self.stages):
            out.append(k)
            if not self.stages[k].optional:
                return tuple(out), False
            k += 1
        return tuple(out), True


def _quantifier(st: Mapping[str, Any], ctx: str) -> tuple[int, int | None, bool]:
    times = st.get("times")
    more = st.get("one_or_more", False)
    if times is not None and more:
        raise TriggerSpecError(f"{ctx}: use either 'times' or 'one_or_more', not both")
    lo: int
    hi: int | None
    if more is True:
        lo, hi = 1, None
    elif more is not False:
        raise TriggerSpecError(f"{ctx}: 'one_or_more' must be true or false")
    elif times is None:
        lo, hi = 1, 1
    elif isinstance(times, int) and not isinstance(times, bool):
        lo, hi = times, times
    elif (
        isinstance(times, list)
        and len(times) == 2
        and isinstance(times[0], int)
        and (times[1] is None or isinstance(times[1], int))
    ):
        lo, hi = times[0], times[1]
    else:
        raise TriggerSpecError(f"{ctx}: 'times' must be n, [n, m] or [n, null]")
    if lo < 1 or (hi is not None and hi < lo):
        raise TriggerSpecError(f"{ctx}: times needs 1 <= n <= m, got {times!r}")
    optional = st.get("optional", False)
    if not isinstance(optional, bool):
        raise TriggerSpecError(f"{ctx}: 'optional' must be true or false")
    return lo, hi, optional


def compile_spec(spec: Any) -> CompiledTrigger:
    """Validate ``spec`` (a dict, see module doc) and compile it; raise :class:`TriggerSpecError`."""
    if not isinstance(spec, Mapping):
        raise TriggerSpecError(f"a trigger spec must be a JSON object, got {type(spec).__name__}")
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise TriggerSpecError(f"unknown trigger field(s) {unknown}; expected {sorted(_SPEC_KEYS)}")
    tid = spec.get("id")
    if not isinstance(tid, str) or not tid:
        raise TriggerSpecError("trigger 'id' must be a non-empty string")
    within = spec.get("within_ms")
    if within is not None and (isinstance(within, bool) or not isinstance(within, int) or within <= 0):
        raise TriggerSpecError(f"trigger {tid!r}: within_ms must be a positive integer")
    emit_timeouts = spec.get("emit_timeouts", False)
    if not isinstance(emit_timeouts, bool):
        raise TriggerSpecError(f"trigger {tid!r}: emit_timeouts must be true or false")
    pattern = spec.get("pattern")
    if not isinstance(pattern, list) or not pattern:
        raise TriggerSpecError(f"trigger {tid!r}: 'pattern' must be a non-empty list of stages")
    stages: list[Stage] = []
    names: set[str] = set()
    pending_neg: tuple[str, Condition] | None = None
    for i, st in enumerate(pattern):
        if not isinstance(st, Mapping):
            raise TriggerSpecError(f"trigger {tid!r}: pattern[{i}] must be an object")
        name = st.get("name", f"s{i}")
        ctx = f"trigger {tid!r}, stage {i} ({name!r})"
        bad = sorted(set(st) - _STAGE_KEYS)
        if bad:
            raise TriggerSpecError(f"{ctx}: unknown field(s) {bad}; expected {sorted(_STAGE_KEYS)}")
        if not isinstance(name, str) or not name or name in names:
            raise TriggerSpecError(f"{ctx}: stage names must be unique non-empty strings")
        names.add(name)
        contig = st.get("contiguity", "begin" if i == 0 else "followed_by")
        if i == 0:
            if contig != "begin":
                raise TriggerSpecError(f"{ctx}: the first stage is 'begin'; got contiguity {contig!r}")
        elif contig not in CONTIGUITIES:
            raise TriggerSpecError(f"{ctx}: unknown contiguity {contig!r} (known: {list(CONTIGUITIES)})")
        cond = make_condition(st.get("event"), st.get("where"), ctx)
        if contig in ("not_next", "not_followed_by"):
            for k in ("times", "one_or_more", "optional", "inner"):
                if k in st:
                    raise TriggerSpecError(f"{ctx}: a negation takes no quantifier ({k!r})")
            prev = stages[-1] if stages else None
            if pending_neg is not None or prev is None:
                raise TriggerSpecError(f"{ctx}: a negation must follow a non-negated stage")
            if prev.optional:
                raise TriggerSpecError(f"{ctx}: a negation cannot follow an optional stage")
            pending_neg = (contig, cond)
            continue
        lo, hi, optional = _quantifier(st, ctx)
        inner = st.get("inner", "relaxed")
        if inner not in INNER:
            raise TriggerSpecError(f"{ctx}: unknown inner contiguity {inner!r} (known: {list(INNER)})")
        neg_next = neg_follow = None
        if pending_neg is not None:
            if optional:
                raise TriggerSpecError(f"{ctx}: a stage after a negation cannot be optional")
            if pending_neg[0] == "not_next":
                neg_next = pending_neg[1]
            else:
                neg_follow = pending_neg[1]
            pending_neg = None
        stages.append(
            Stage(name, cond, lo, hi, optional, _CONTIG_CODE.get(contig, RELAXED), _INNER_CODE[inner], neg_next, neg_follow)
        )
    if all(s.optional for s in stages):
        raise TriggerSpecError(f"trigger {tid!r}: at least one stage must be non-optional")
    tail_next = tail_follow = None
    if pending_neg is not None:
        if pending_neg[0] == "not_followed_by":
            if within is None:
                raise TriggerSpecError(
                    f"trigger {tid!r}: a pattern ending in not_followed_by needs within_ms "
                    "(the match is decided when the window closes)"
                )
            tail_follow = pending_neg[1]
        else:
            tail_next = pending_neg[1]
    return CompiledTrigger(tid, tuple(stages), within, tail_next, tail_follow, emit_timeouts, dict(spec))


class Pattern:
    """Builder DSL mirroring Flink CEP's ``Pattern`` API; :meth:`to_spec` gives the JSON spec.

    >>> Pattern.begin("a", event="login").followed_by("b", event="buy").within(60_000).to_spec("t")
    ... # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._stages: list[dict[str, Any]] = []
        self._within: int | None = None
        self._timeouts = False

    def _add(self, contiguity: str | None, name: str, event: Any) -> Pattern:
        st: dict[str, Any] = {"name": name}
        if contiguity is not None:
            st["contiguity"] = contiguity
        if event is not None:
            st["event"] = event
        self._stages.append(st)
        return self

    @classmethod
    def begin(cls, name: str, event: Any = None) -> Pattern:
        return cls()._add(None, name, event)

    def next(self, name: str, event: Any = None) -> Pattern:
        return self._add("next", name, event)

    def followed_by(self, name: str, event: Any = None) -> Pattern:
        return self._add("followed_by", name, event)

    def followed_by_any(self, name: str, event: Any = None) -> Pattern:
        return self._add("followed_by_any", name, event)

    def not_next(self, name: str, event: Any = None) -> Pattern:
        return self._add("not_next", name, event)

    def not_followed_by(self, name: str, event: Any = None) -> Pattern:
        return self._add("not_followed_by", name, event)

    def _last(self) -> dict[str, Any]:
        if not self._stages:
            raise TriggerSpecError("call begin() first")
        return self._stages[-1]

    def where(self, field: str, op: str, value: Any = None) -> Pattern:
        clause: dict[str, Any] = {"field": field, "op": op}
        if op != "exists":
            clause["value"] = value
        self._last().setdefault("where", []).append(clause)
        return self

    def times(self, n: int, m: int | None = -1) -> Pattern:
        """``times(n)``: exactly n; ``times(n, m)``: n to m; ``times(n, None)``: n or more."""
        self._last()["times"] = n if m == -1 else [n, m]
        return self

    def one_or_more(self) -> Pattern:
        self._last()["one_or_more"] = True
        return self

    def optional(self) -> Pattern:
        self._last()["optional"] = True
        return self

    def consecutive(self) -> Pattern:
        self._last()["inner"] = "consecutive"
        return self

    def allow_combinations(self) -> Pattern:
        self._last()["inner"] = "any"
        return self

    def within(self, ms: int) -> Pattern:
        self._within = ms
        return self

    def emit_timeouts(self, on: bool = True) -> Pattern:
        self._timeouts = on
        return self

    def to_spec(self, trigger_id: str) -> dict[str, Any]:
        spec: dict[str, Any] = {"id": trigger_id, "pattern": [dict(s) for s in self._stages]}
        if self._within is not None:
            spec["within_ms"] = self._within
        if self._timeouts:
            spec["emit_timeouts"] = True
        compile_spec(spec)  # fail at build time, not when the trigger ships
        return spec
