"""Text features: TfIdfVectorizer over integer token ids.

The n-gram occurrences a sequence can contain are fixed by its length and the attributes, so
they are enumerated at plan time: for each gram length n and skip count s, every start position
gives one tuple of token positions. The tokens at those positions are gathered at run time and
compared with every pool n-gram (``Binary eq``, a ``Reduce min`` over the n tokens = all match);
summing over the occurrences gives per-pool-entry counts, and one ``MatMul`` with a plan-time
(pool entry -> output coordinate, weight) matrix scatters and weights them.
"""

from __future__ import annotations

import numpy as np

from walle_core import atomic as A
from walle_core.decompose import NodeContext, register
from walle_core.decompose.builder import Builder, DecomposeError
from walle_core.decompose.elementwise import req

Ins = list[A.Tensor | None]


def _levels(pool: list[int], starts: list[int]) -> list[tuple[int, np.ndarray]]:
    """Pool n-grams per gram length: [(n, array (count, n))], in pool order."""
    out = []
    for i, begin in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(pool)
        n = i + 1
        if (end - begin) % n:
            raise DecomposeError(f"pool segment for {n}-grams has {end - begin} items")
        out.append((n, np.array(pool[begin:end], np.int64).reshape(-1, n)))
    return out


def _occurrences(length: int, n: int, max_skip: int) -> np.ndarray:
    """Distinct position tuples (count, n) of n-grams with 0..max_skip skips."""
    seen: dict[tuple[int, ...], None] = {}
    for skip in range(max_skip + 1 if n > 1 else 1):
        step = skip + 1
        for start in range(length - (n - 1) * step):
            seen[tuple(start + j * step for j in range(n))] = None
    return np.array(list(seen), np.int64).reshape(-1, n)


@register("TfIdfVectorizer")
def tfidf_vectorizer(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0], "X")
    if ctx.attr("pool_strings") is not None:
        raise ctx.unsupported("string pools")
    pool = [int(v) for v in ctx.attr("pool_int64s", [])]
    starts = [int(v) for v in ctx.attr("ngram_counts", [])]
    indexes = [int(v) for v in ctx.attr("ngram_indexes", [])]
    mode = str(ctx.attr("mode", "TF"))
    if mode not in ("TF", "IDF", "TFIDF"):
        raise ctx.unsupported(f"mode {mode!r}")
    min_n, max_n = int(ctx.attr("min_gram_length", 1)), int(ctx.attr("max_gram_length", 1))
    max_skip = int(ctx.attr("max_skip_count", 0))
    levels = _levels(pool, starts)
    total = sum(g.shape[0] for _, g in levels)
    if len(indexes) != total:
        raise DecomposeError(f"ngram_indexes has {len(indexes)} entries for {total} pool n-grams")
    weights = [float(w) for w in ctx.attr("weights", [1.0] * total)]
    out_dim = max(indexes) + 1 if indexes else 0
    if len(x.shape) not in (1, 2):
        raise DecomposeError("TfIdfVectorizer takes a 1-D or 2-D input")
    rows = 1 if len(x.shape) == 1 else x.shape[0]
    length = x.shape[-1]
    out_shape = (out_dim,) if len(x.shape) == 1 else (rows, out_dim)
    tokens = b.transpose(b.reshape(b.cast(x, np.int64), (rows, length)), (1, 0))  # (L, rows)

    counts: list[tuple[slice, A.Tensor | None]] = []  # (pool entries, (P_n, rows) counts)
    first = 0
    for n, grams in levels:
        entry = slice(first, first + grams.shape[0])
        first += grams.shape[0]
        if grams.shape[0] == 0:
            continue
        occ = _occurrences(length, n, max_skip)
        if not min_n <= n <= max_n or occ.shape[0] == 0 or rows == 0:
            counts.append((entry, None))
            continue
        got = b.reshape(b.gather_rows(tokens, b.const(occ.reshape(-1)), length, rows),
                        (occ.shape[0], 1, n, rows))
        eq = b.binary("eq", got, b.const(grams.reshape(1, grams.shape[0], n, 1)))
        hit = b.reduce_axis(b.cast(eq, np.float32), 2, "min")  # (occ, P_n, 1, rows)
        c = b.reduce(hit, [0, 2], "sum", False)  # (P_n, rows)
        counts.append((entry, c))
    mat = np.zeros((total, out_dim), np.float32)
    for i, (o, w) in enumerate(zip(indexes, weights, strict=True)):
        mat[i, o] = 1.0 if mode == "TF" else w
    parts = []
    for entry, found in counts:
        if found is None:
            continue
        c = found
        if mode == "IDF":
            c = b.binary("min", c, b.const(np.array(1.0, np.float32)))
        parts.append(b.matmul(b.transpose(c, (1, 0)), b.const(mat[entry])))  # (rows, out)
    if not parts:
        return [b.const(np.zeros(out_shape, np.float32))]
    y = parts[0]
    for p in parts[1:]:
        y = b.binary("add", y, p)
    return [b.reshape(y, out_shape)]
