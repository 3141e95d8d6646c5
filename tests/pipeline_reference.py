"""A brute-force matcher written straight from the definitions in docs/pipeline.md.

It enumerates every labelled subsequence of a key's events and keeps those that satisfy the
declarative conditions. Exponential, so only for tests on short streams; it shares nothing with
the engine except the compiled spec, which is what makes it a useful oracle.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

from walle_core.pipeline.events import Event
from walle_core.pipeline.spec import ANY, RELAXED, STRICT, CompiledTrigger, Condition

# One match: (trigger id, key, positions in the key's own event sequence, stage index per event).
RefMatch = tuple[str, str, tuple[int, ...], tuple[int, ...]]


def _first_after(evs: Sequence[Event], a: int, cond: Condition) -> int | None:
    return next((q for q in range(a + 1, len(evs)) if cond(evs[q])), None)


def _ok_step(contiguity: int, evs: Sequence[Event], a: int, b: int, cond: Condition) -> bool:
    if contiguity == STRICT:
        return b == a + 1
    if contiguity == RELAXED:
        return b == _first_after(evs, a, cond)
    assert contiguity == ANY
    return True


def is_match(
    t: CompiledTrigger, evs: Sequence[Event], pos: Sequence[int], lab: Sequence[int], end_ms: float
) -> bool:
    """Whether the labelled positions form a match of ``t`` in ``evs`` (the events of one key);
    ``end_ms`` is where the clock stands when matches are collected."""
    st = t.stages
    if not pos:
        return False
    for k, stage in enumerate(st):
        n = lab.count(k)
        if n == 0 and stage.optional:
            continue
        if n < stage.min or (stage.max is not None and n > stage.max):
            return False
    if any(not st[k].cond(evs[p]) for p, k in zip(pos, lab, strict=True)):
        return False
    ts0 = evs[pos[0]].timestamp_ms
    w = t.within_ms
    if w is not None and evs[pos[-1]].timestamp_ms - ts0 >= w:
        return False
    for i in range(1, len(pos)):
        a, b, ka, kb = pos[i - 1], pos[i], lab[i - 1], lab[i]
        if ka == kb:
            if not _ok_step(st[ka].inner, evs, a, b, st[ka].cond):
                return False
            continue
        sk = st[kb]
        if not _ok_step(sk.contiguity, evs, a, b, sk.cond):
            return False
        if sk.neg_next is not None and sk.neg_next(evs[a + 1]):
            return False
        if sk.neg_follow is not None and any(sk.neg_follow(evs[q]) for q in range(a + 1, b)):
            return False
    a = pos[-1]
    if t.tail_neg_next is not None:
        if a + 1 >= len(evs) or t.tail_neg_next(evs[a + 1]):
            return False
        if w is not None and evs[a + 1].timestamp_ms - ts0 >= w:
            return False
    if t.tail_neg_follow is not None:
        assert w is not None
        if end_ms < ts0 + w:
            return False
        if any(t.tail_neg_follow(evs[q]) for q in range(a + 1, len(evs)) if evs[q].timestamp_ms < ts0 + w):
            return False
    return True


def _candidates(t: CompiledTrigger, evs: Sequence[Event]) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every increasing labelled subsequence whose stage order and counts can still fit."""
    st = t.stages
    w = t.within_ms

    def rec(pos: list[int], lab: list[int], count: int) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
        yield tuple(pos), tuple(lab)
        j = lab[-1]
        for p in range(pos[-1] + 1, len(evs)):
            if w is not None and evs[p].timestamp_ms - evs[pos[0]].timestamp_ms >= w:
                break
            for k in range(j, len(st)):
                hi = st[k].max
                if k == j and hi is not None and count >= hi:
                    continue
                if st[k].cond(evs[p]):
                    pos.append(p)
                    lab.append(k)
                    yield from rec(pos, lab, count + 1 if k == j else 1)
                    pos.pop()
                    lab.pop()

    for p in range(len(evs)):
        for k in range(len(st)):
            if st[k].cond(evs[p]):
                yield from rec([p], [k], 1)


def reference_matches(
    triggers: Sequence[CompiledTrigger], events: Sequence[Event], end_ms: float = float("inf")
) -> Counter[RefMatch]:
    """All matches of ``triggers`` over ``events`` (globally time-ordered), as a multiset."""
    by_key: dict[str, list[Event]] = {}
    for ev in events:
        by_key.setdefault(ev.key, []).append(ev)
    found: Counter[RefMatch] = Counter()
    for t in triggers:
        for key, evs in by_key.items():
            for pos, lab in _candidates(t, evs):
                if is_match(t, evs, pos, lab, end_ms):
                    found[(t.id, key, pos, lab)] += 1
    return found
