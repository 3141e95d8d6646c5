"""Pure targeting rules: attribute filters, version ranges, seeded-hash buckets and stages.

A device's *bucket* for a deployment is ``sha256(seed ":" device_id)`` read as a number in
[0, 10000); it is inside a percentage ``p`` when ``bucket < p * 100``. The bucket does not depend
on ``p``, so widening from 10% to 50% keeps every device that was in at 10% (and the same seed
picks the same devices across deployments). Stages use an independent bucket
(``seed ":stage:" device_id``) over [0, 100): a device belongs to the first stage whose cumulative
percentage is above its stage bucket (:func:`stage_of`). Staged rollouts fill stages by quota
instead: a stage at ``p``% holds ``ceil(p% of the matched devices)``, taken in stage-bucket order
(:func:`stage_rank`, :func:`stage_quota`), so a stage is never empty while a device matches.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

FILTER_KEYS = ("os", "app_version", "model", "region", "groups", "backends")
_CMP = re.compile(r"^\s*(>=|<=|==|!=|>|<|~=)?\s*(\d+(?:\.\d+){0,2})\s*$")


def version_key(version: str) -> tuple[int, int, int]:
    match = re.match(r"^\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?", version)
    if not match:
        raise ValueError(f"bad version {version!r}")
    a, b, c = (int(g) if g else 0 for g in match.groups())
    return a, b, c


def check_version_range(spec: str) -> None:
    """Raise ValueError unless ``spec`` is like ``>=1.2,<2`` (comma-separated comparisons)."""
    parts = [p for p in spec.split(",") if p.strip()]
    if not parts:
        raise ValueError("empty version range")
    for part in parts:
        if not _CMP.match(part):
            raise ValueError(f"bad version comparison {part.strip()!r} (use >=, <=, >, <, ==, != or ~=)")


def in_version_range(version: str, spec: str) -> bool:
    try:
        have = version_key(version)
    except ValueError:
        return False
    for part in (p for p in spec.split(",") if p.strip()):
        match = _CMP.match(part)
        if match is None:
            return False
        op, raw = match.group(1) or "==", match.group(2)
        want = version_key(raw)
        ok = {
            ">=": have >= want, "<=": have <= want, ">": have > want, "<": have < want,
            "==": have == want, "!=": have != want,
            # ~=1.4 means >=1.4,<2 ; ~=1.4.2 means >=1.4.2,<1.5
            "~=": have >= want and have[: max(1, raw.count("."))] == want[: max(1, raw.count("."))],
        }[op]
        if not ok:
            return False
    return True


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return [str(value)]


def matches_filters(attrs: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    """All given filters must hold. ``os``/``model``/``region``: the device's value is one of the
    listed; ``groups``: the device is in at least one listed group; ``backends``: the device has
    every listed backend; ``app_version``: a range such as ``>=1.2,<2``."""
    for key in ("os", "model", "region"):
        allowed = filters.get(key)
        if allowed and str(attrs.get(key, "")) not in _as_list(allowed):
            return False
    groups = filters.get("groups")
    if groups and not set(_as_list(groups)) & set(_as_list(attrs.get("groups"))):
        return False
    needed = filters.get("backends")
    if needed and not set(_as_list(needed)) <= set(_as_list(attrs.get("backends"))):
        return False
    spec = filters.get("app_version")
    return not (spec and not in_version_range(str(attrs.get("app_version", "")), str(spec)))


def bucket(seed: str, device_id: str, salt: str = "") -> int:
    """The device's stable position in [0, 10000) for ``seed``."""
    digest = hashlib.sha256(f"{seed}:{salt}{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000


def in_percentage(seed: str, device_id: str, percentage: float) -> bool:
    if percentage >= 100:  # every bucket is below 10,000: no hash needed
        return True
    return bucket(seed, device_id) < round(percentage * 100)


def stage_of(seed: str, device_id: str, stages: Sequence[float]) -> int:
    """Index of the (cumulative-percentage) stage the device belongs to."""
    b = bucket(seed, device_id, "stage:")
    for i, pct in enumerate(stages):
        if b < round(pct * 100):
            return i
    return len(stages) - 1


def stage_rank(seed: str, device_id: str) -> tuple[int, str]:
    """The order in which a staged rollout takes devices: lowest stage bucket first."""
    return bucket(seed, device_id, "stage:"), device_id


def stage_quota(percentage: float, population: int) -> int:
    """How many of ``population`` devices a stage at ``percentage`` (cumulative) holds: at least
    one as soon as there is a device, all of them at 100%."""
    return min(population, math.ceil(round(percentage * population, 6) / 100))


def targeted(device_id: str, attrs: Mapping[str, Any], device_ids: Collection[str] | None,
             filters: Mapping[str, Any], seed: str, percentage: float) -> bool:
    """Whether a deployment's population includes the device (before stages)."""
    if device_ids is not None and device_id not in device_ids:
        return False
    if not matches_filters(attrs, filters):
        return False
    return in_percentage(seed, device_id, percentage)
