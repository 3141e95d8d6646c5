"""Checking fed input shapes against a model's declared input types.

What is checked is what an input's declaration can promise: its rank (when declared) and every
fixed dim. An unknown dim (``None``: the front end maps ONNX's missing, ``-1`` and ``0`` dims to
it) accepts any size, and so does a symbolic dim (``str``).

One name is meant to be one size across the inputs of a run (``input_ids[batch,seq]`` and
``attention_mask[batch,seq]``), but exporters also write a placeholder name for every unknown dim
(PaddleOCR's classifier declares ``x`` as ``[-1,3,'?','?']`` and is fed 48x192), and onnxruntime
checks fixed dims only. So a name bound to two sizes is not refused here: it is reported, and the
caller adds it to the error of a model that then fails on those feeds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from walle_core.errors import InputError
from walle_core.ir.graph import TensorType


def bind_dims(declared: Iterable[tuple[str, TensorType]],
              shapes: Mapping[str, tuple[int, ...]]) -> tuple[dict[str, int], list[str]]:
    """Check ``shapes`` (input name -> fed shape) against the declared types. Returns the size
    each symbolic dim is first bound to, and a line for every symbolic dim fed two sizes.
    Inputs not in ``shapes`` (not fed) are skipped.

    Raises ``InputError`` naming the input, its shape and the declaration on a rank or fixed-dim
    mismatch."""
    bound: dict[str, tuple[int, str, TensorType, tuple[int, ...]]] = {}  # symbol -> first binding
    conflicts: list[str] = []
    for name, ttype in declared:
        if name not in shapes:
            continue
        shape = tuple(shapes[name])
        if not ttype.matches(shape):
            raise InputError(
                f"input {name!r} has shape {list(shape)}, the model expects {ttype.describe()}")
        for axis, (dim, size) in enumerate(zip(ttype.shape or (), shape, strict=False)):
            if not isinstance(dim, str):
                continue
            first = bound.setdefault(dim, (size, name, ttype, shape))
            if first[0] != size:
                conflicts.append(
                    f"input {name!r} has shape {list(shape)}, whose dim {axis} {dim!r} is {size}, but "
                    f"input {first[1]!r} {first[2].describe()} fed {list(first[3])} bound {dim!r} "
                    f"to {first[0]}")
    return {sym: first[0] for sym, first in bound.items()}, conflicts
