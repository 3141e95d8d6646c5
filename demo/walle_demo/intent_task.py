"""Purchase intent for one item-page visit: the feature script of the demo's task bundle.

This file ships *as is* inside the signed bundle (entry ``main.py``) and runs in the task VM on
every device when the ``item_view`` trigger fires: ``walle.events()`` is the visit (page enter,
in-page actions, page leave). The demo also imports it on the host to compute the training
features, so the model is trained on exactly the features the devices compute.
Only VM-allowed modules are used (math here; numpy and walle inside ``main``).
"""

import math
from typing import Any

# Local prices are converted to USD before the model sees them.
USD_RATE = {"USD": 1.0, "EUR": 0.92, "CNY": 7.2, "JPY": 150.0, "BRL": 5.0, "INR": 83.0}

FEATURES = (
    "log_dwell_s", "scrolls", "max_depth", "image_swipes", "review_clicks", "similar_exposures",
    "favorite", "add_to_cart", "log_price_usd", "discount", "rating", "views_7d",
)


def features(events: list[dict[str, Any]]) -> list[float]:
    """The model's input row for one visit (a list of floats in ``FEATURES`` order)."""
    enter, leave = events[0], events[-1]
    args = enter.get("args", {})
    counts: dict[str, int] = {}
    depth = 0.0
    for ev in events[1:-1]:
        counts[ev["event_id"]] = counts.get(ev["event_id"], 0) + 1
        if ev["event_id"] == "scroll":
            depth = max(depth, float(ev.get("args", {}).get("depth", 0.0)))
    dwell_s = max(0.0, (leave["timestamp_ms"] - enter["timestamp_ms"]) / 1000.0)
    price_usd = float(args.get("price", 0.0)) / USD_RATE[args.get("currency", "USD")]
    return [
        math.log1p(dwell_s),
        float(counts.get("scroll", 0)),
        depth,
        float(counts.get("image_swipe", 0)),
        float(counts.get("review_click", 0)),
        float(counts.get("exposure", 0)),
        float(counts.get("favorite", 0) > 0),
        float(counts.get("add_to_cart", 0) > 0),
        math.log(max(price_usd, 0.01)),
        float(args.get("discount", 0.0)),
        float(args.get("rating", 0.0)),
        float(min(args.get("views_7d", 0), 10)),
    ]


def main() -> None:
    import numpy as np
    import walle  # type: ignore[import-not-found]  # the VM's facade

    events = walle.events()
    row = features(events)
    intent = walle.infer({"x": np.asarray([row], dtype=np.float32)})["intent"]
    walle.output("item_id", events[0].get("args", {}).get("item_id", ""))
    walle.output("features", row)
    walle.output("intent", float(intent[0, 0]))
    walle.output("visit_ms", events[-1]["timestamp_ms"] - events[0]["timestamp_ms"])
