"""Simulated shoppers: device profiles and realistic user-behaviour streams for an e-commerce app.

A shopper's stream is a series of *sessions* separated by idle gaps. A session starts on the home
or search page, where item cards are exposed and the list is scrolled; clicking a card opens an
item page (``page_enter``/``page_leave``) with scrolls, image swipes, review clicks and perhaps an
add-to-cart. Sessions may end in the cart and a checkout that buys some of the carted items.

Behaviour on an item page is driven by a hidden *purchase intent* that depends on the shopper
(engagement, price sensitivity) and the item (price, discount, rating, how often it was viewed):
interested shoppers stay longer, scroll deeper, read reviews and add to cart, and carted items
of high intent are bought. The intent is never written into the stream, so a model trained on
these streams has to infer it from behaviour, as on real traffic. Everything is reproducible from
a seed: the same shopper seed yields the same events, so a restarted device re-sends identical
events (which its pipeline recognises as duplicates).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

OS_CHOICES = (("android", 0.62), ("ios", 0.33), ("harmony", 0.05))
MODELS = {
    "android": ("Pixel 8", "Galaxy S23", "Galaxy A54", "Redmi Note 12", "OnePlus 11"),
    "ios": ("iPhone 15", "iPhone 14", "iPhone 13", "iPhone SE"),
    "harmony": ("Mate 60", "P60"),
}
REGIONS = (("us", 0.3), ("eu", 0.25), ("cn", 0.2), ("jp", 0.1), ("br", 0.08), ("in", 0.07))
CURRENCY = {"us": "USD", "eu": "EUR", "cn": "CNY", "jp": "JPY", "br": "BRL", "in": "INR"}
USD_RATE = {"USD": 1.0, "EUR": 0.92, "CNY": 7.2, "JPY": 150.0, "BRL": 5.0, "INR": 83.0}
APP_VERSIONS = (("3.2.0", 0.45), ("3.1.4", 0.25), ("3.0.1", 0.15), ("2.9.7", 0.1), ("2.8.0", 0.05))
CATEGORIES = ("shoes", "phones", "books", "kitchen", "toys", "beauty", "sports", "fashion")
ITEM_PAGE_ACTIONS = ("scroll", "image_swipe", "review_click", "exposure", "add_to_cart", "favorite")


def _pick(rng: np.random.Generator, weighted: tuple[tuple[str, float], ...]) -> str:
    names, weights = zip(*weighted, strict=True)
    p = np.asarray(weights, float)
    return str(names[int(rng.choice(len(names), p=p / p.sum()))])


def seed_of(*parts: object) -> int:
    """A stable 64-bit seed from any labels (Python's hash() is salted per process)."""
    raw = ":".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")


@dataclass(frozen=True)
class DeviceProfile:
    """The attributes a device registers with (what deployment policies filter on)."""

    device_id: str
    os: str
    app_version: str
    model: str
    region: str
    groups: tuple[str, ...] = ()

    def attributes(self) -> dict[str, Any]:
        return {"os": self.os, "app_version": self.app_version, "model": self.model, "region": self.region,
                "groups": list(self.groups)}

    @classmethod
    def generate(cls, device_id: str, seed: int) -> DeviceProfile:
        rng = np.random.default_rng(seed_of(seed, device_id, "profile"))
        os_name = _pick(rng, OS_CHOICES)
        model = str(rng.choice(MODELS[os_name]))
        groups = ("beta",) if rng.random() < 0.1 else ()
        return cls(device_id, os_name, _pick(rng, APP_VERSIONS), model, _pick(rng, REGIONS), groups)


@dataclass(frozen=True)
class Item:
    item_id: str
    category: str
    price_usd: float
    discount: float  # 0..0.6
    rating: float  # 1..5


@dataclass
class Catalogue:
    items: list[Item]

    @classmethod
    def generate(cls, seed: int, n: int = 400) -> Catalogue:
        rng = np.random.default_rng(seed_of(seed, "catalogue"))
        items = []
        for i in range(n):
            cat = CATEGORIES[i % len(CATEGORIES)]
            price = float(np.round(np.exp(rng.normal(3.4, 0.9)), 2))
            discount = float(np.round(rng.choice([0, 0, 0, 0.1, 0.2, 0.3, 0.5]) * rng.uniform(0.8, 1.2), 2))
            rating = float(np.round(np.clip(rng.normal(4.1, 0.55), 1.0, 5.0), 1))
            items.append(Item(f"sku-{i:05d}", cat, price, min(discount, 0.6), rating))
        return cls(items)


@dataclass
class ItemView:
    """Ground truth for one item-page visit (what a trained model should predict)."""

    key: str
    item_id: str
    enter_ms: int
    intent: float
    carted: bool
    purchased: bool = False


@dataclass
class Shopper:
    """One user of the app on one device: generates sessions of events, deterministically."""

    key: str
    region: str
    seed: int
    catalogue: Catalogue
    start_ms: int = 1_717_000_000_000
    clock_ms: int = field(init=False)
    views: list[ItemView] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(seed_of(self.seed, self.key, "shopper"))
        self.engagement = float(self.rng.normal(0.0, 1.0))
        self.price_sensitivity = float(self.rng.uniform(0.2, 1.5))
        self.favourite = str(self.rng.choice(CATEGORIES))
        self.currency = CURRENCY.get(self.region, "USD")
        self.seen: dict[str, int] = {}
        self.clock_ms = self.start_ms

    # ------------------------------------------------------------------ helpers

    def _tick(self, lo_s: float, hi_s: float) -> int:
        self.clock_ms += int(self.rng.uniform(lo_s, hi_s) * 1000) + 1
        return self.clock_ms

    def _ev(self, event_id: str, page: str, **args: Any) -> dict[str, Any]:
        return {"event_id": event_id, "page": page, "timestamp_ms": self.clock_ms, "args": args, "key": self.key}

    def _intent(self, item: Item) -> float:
        price_rel = math.log(item.price_usd / 30.0)
        z = (0.8 * self.engagement - 0.9 * self.price_sensitivity * price_rel + 3.0 * item.discount
             + 0.9 * (item.rating - 4.0) + 0.6 * min(self.seen.get(item.item_id, 0), 3)
             + (0.7 if item.category == self.favourite else 0.0) - 1.2 + self.rng.normal(0, 0.6))
        return 1.0 / (1.0 + math.exp(-z))

    # ------------------------------------------------------------------ pages

    def _list_page(self, page: str) -> list[dict[str, Any]]:
        out = [self._ev("page_enter", page)]
        pool = self.catalogue.items
        for _ in range(int(self.rng.integers(1, 4))):
            self._tick(0.5, 3.0)
            for it in self.rng.choice(len(pool), size=4, replace=False):
                out.append(self._ev("exposure", page, item_id=pool[int(it)].item_id, slot=len(out)))
            self._tick(0.3, 2.0)
            out.append(self._ev("scroll", page, depth=round(float(self.rng.uniform(0.1, 1.0)), 2)))
        self._tick(0.5, 2.0)
        out.append(self._ev("click", page, target="item_card"))
        self._tick(0.1, 0.4)
        out.append(self._ev("page_leave", page))
        return out

    def _item_page(self, item: Item) -> tuple[list[dict[str, Any]], ItemView]:
        intent = self._intent(item)
        price_local = round(item.price_usd * USD_RATE[self.currency], 2)
        self._tick(0.2, 0.6)
        enter = self._ev("page_enter", "item", item_id=item.item_id, category=item.category, price=price_local,
                         currency=self.currency, discount=item.discount, rating=item.rating,
                         views_7d=self.seen.get(item.item_id, 0))
        out = [enter]
        view = ItemView(self.key, item.item_id, self.clock_ms, intent, False)
        dwell_s = float(np.exp(self.rng.normal(math.log(6.0 + 50.0 * intent), 0.5)))
        n_actions = int(self.rng.poisson(1.0 + 7.0 * intent))
        depth = 0.0
        for _ in range(n_actions):
            self._tick(0.2, max(0.5, dwell_s / (n_actions + 1)))
            r = self.rng.random()
            if r < 0.45:
                depth = min(1.0, depth + float(self.rng.uniform(0.05, 0.35)))
                out.append(self._ev("scroll", "item", depth=round(depth, 2)))
            elif r < 0.65:
                out.append(self._ev("image_swipe", "item", index=int(self.rng.integers(1, 8))))
            elif r < 0.65 + 0.25 * intent:
                out.append(self._ev("review_click", "item", stars=int(self.rng.integers(1, 6))))
            else:
                sim = self.catalogue.items[int(self.rng.integers(len(self.catalogue.items)))]
                out.append(self._ev("exposure", "item", item_id=sim.item_id, slot="similar"))
        if self.rng.random() < 0.03 + 0.25 * intent:
            self._tick(0.3, 2.0)
            out.append(self._ev("favorite", "item", item_id=item.item_id))
        if self.rng.random() < 0.02 + 0.75 * intent**2:
            self._tick(0.5, 3.0)
            out.append(self._ev("add_to_cart", "item", item_id=item.item_id, price=price_local))
            view.carted = True
        self._tick(0.5, 3.0)
        out.append(self._ev("page_leave", "item", item_id=item.item_id))
        self.seen[item.item_id] = self.seen.get(item.item_id, 0) + 1
        return out, view

    def session(self) -> list[dict[str, Any]]:
        """One app session (idle gap before it included); also appends its item views to ``views``."""
        self._tick(600.0, 4 * 3600.0)
        events: list[dict[str, Any]] = [self._ev("app_open", "launch")]
        carted: list[ItemView] = []
        page = "home"
        for _ in range(int(self.rng.integers(1, 5))):
            events += self._list_page(page)
            pool = self.catalogue.items
            if self.rng.random() < 0.5:  # favourite category first
                fav = [it for it in pool if it.category == self.favourite]
                item = fav[int(self.rng.integers(len(fav)))]
            else:
                item = pool[int(self.rng.integers(len(pool)))]
            item_events, view = self._item_page(item)
            events += item_events
            self.views.append(view)
            if view.carted:
                carted.append(view)
            page = "search" if self.rng.random() < 0.5 else "home"
        if carted:
            self._tick(1.0, 5.0)
            events.append(self._ev("page_enter", "cart", items=len(carted)))
            bought = [v for v in carted if self.rng.random() < 0.25 + 0.7 * v.intent]
            self._tick(2.0, 20.0)
            events.append(self._ev("page_leave", "cart"))
            if bought:
                self._tick(1.0, 4.0)
                events.append(self._ev("page_enter", "checkout"))
                self._tick(5.0, 40.0)
                events.append(self._ev("purchase", "checkout", items=[v.item_id for v in bought]))
                for v in bought:
                    v.purchased = True
                events.append(self._ev("page_leave", "checkout"))
        self._tick(1.0, 10.0)
        events.append(self._ev("app_background", "launch"))
        return events

    def sessions(self) -> Iterator[list[dict[str, Any]]]:
        while True:
            yield self.session()


def item_view_trigger(trigger_id: str = "item_view", within_ms: int = 30 * 60_000) -> dict[str, Any]:
    """The trigger that fires once per completed item-page visit: enter, in-page actions, leave."""
    in_page = {"field": "page", "op": "==", "value": "item"}
    return {
        "id": trigger_id,
        "description": "an item page was left: hand the whole visit to the task",
        "within_ms": within_ms,
        "pattern": [
            {"name": "enter", "event": "page_enter", "where": [in_page]},
            {"name": "actions", "contiguity": "next", "event": list(ITEM_PAGE_ACTIONS), "one_or_more": True,
             "optional": True, "inner": "consecutive"},
            {"name": "leave", "contiguity": "next", "event": "page_leave", "where": [in_page]},
        ],
    }
