"""ai.onnx.ml ops on numeric tensors: Binarizer, ArrayFeatureExtractor, TreeEnsemble.

TreeEnsemble: the tree structure is an attribute, so every root-to-leaf path is enumerated at
plan time. Each interior node's test becomes one run-time boolean column (a comparison of one
feature with its split, or an ``or`` of equalities for set membership); a path is reached when
all of its tests come out its way (an ``and`` over the path). Sums and averages over the reached
leaves are one ``MatMul`` with a plan-time (path, target) weight matrix; minima and maxima are a
``Select`` + ``Reduce`` over the paths. String-valued ops (LabelEncoder on strings) are not here:
Walle has no string tensors.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from walle_core import atomic as A
from walle_core.decompose import NodeContext, register
from walle_core.decompose.builder import Builder, DecomposeError
from walle_core.decompose.elementwise import req
from walle_core.decompose.index import take

Ins = list[A.Tensor | None]
ML = "ai.onnx.ml"


@register("Binarizer", domain=ML)
def binarizer(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0], "X")
    hit = b.binary("gt", x, b.const(np.array(float(ctx.attr("threshold", 0.0)), x.dtype)))
    return [b.cast(hit, x.dtype)]


@register("ArrayFeatureExtractor", domain=ML)
def array_feature_extractor(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x, idx = req(ins[0], "X"), req(ins[1], "Y")
    flat = b.reshape(idx, (idx.size,))
    if len(x.shape) == 1:  # a single row: the output keeps a leading batch axis of 1
        return [b.reshape(take(b, x, flat, 0), (1, idx.size))]
    return [take(b, x, flat, len(x.shape) - 1)]


def _arr(v: Any, dtype: type) -> np.ndarray:
    return np.asarray(v if v is not None else [], dtype=dtype).reshape(-1)


_MODES = {0: "le", 1: "lt", 2: "ge", 3: "gt", 4: "eq", 5: "ne", 6: "member"}


@register("TreeEnsemble", domain=ML)
def tree_ensemble(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    x = req(ins[0], "X")
    if len(x.shape) != 2:
        raise DecomposeError("TreeEnsemble takes a 2-D input (N, F)")
    n = x.shape[0]
    feats = _arr(ctx.attr("nodes_featureids"), np.int64)
    splits = _arr(ctx.attr("nodes_splits"), np.float64)
    modes = _arr(ctx.attr("nodes_modes"), np.int64)
    true_ids = _arr(ctx.attr("nodes_truenodeids"), np.int64)
    false_ids = _arr(ctx.attr("nodes_falsenodeids"), np.int64)
    true_leaf = _arr(ctx.attr("nodes_trueleafs"), np.int64)
    false_leaf = _arr(ctx.attr("nodes_falseleafs"), np.int64)
    nan_true = _arr(ctx.attr("nodes_missing_value_tracks_true"), np.int64)
    members = _arr(ctx.attr("membership_values"), np.float64)
    leaf_targets = _arr(ctx.attr("leaf_targetids"), np.int64)
    leaf_weights = _arr(ctx.attr("leaf_weights"), np.float64)
    roots = _arr(ctx.attr("tree_roots"), np.int64)
    n_targets = int(ctx.attr("n_targets", 1))
    agg = int(ctx.attr("aggregate_function", 1))
    post = int(ctx.attr("post_transform", 0))
    if post not in (0, 1, 2, 3):
        raise ctx.unsupported("post_transform PROBIT needs an inverse error function")
    if agg not in (0, 1, 2, 3):
        raise DecomposeError(f"unknown aggregate_function {agg}")
    count = len(feats)
    if not len(modes):
        modes = np.zeros(count, np.int64)
    if any(len(a) != count for a in (splits, modes, true_ids, false_ids, true_leaf, false_leaf)):
        raise DecomposeError("TreeEnsemble nodes_* attributes differ in length")
    if len(leaf_targets) != len(leaf_weights):
        raise DecomposeError("TreeEnsemble leaf_* attributes differ in length")

    # Member sets, in the order of the BRANCH_MEMBER nodes, delimited by NaN.
    sets: list[list[float]] = [[]]
    for v in members:
        if math.isnan(v):
            sets.append([])
        else:
            sets[-1].append(float(v))
    member_of: dict[int, list[float]] = {}
    for i in np.nonzero(modes == 6)[0]:
        if not sets:
            raise DecomposeError("membership_values lists fewer sets than BRANCH_MEMBER nodes")
        member_of[int(i)] = sets.pop(0)

    ct = np.dtype(np.float32) if x.dtype == np.float16 else x.dtype
    xf = b.cast(x, ct)
    tests: dict[int, A.Tensor] = {}

    def test(i: int) -> A.Tensor:
        if i not in tests:
            f = int(feats[i])
            col = b.reshape(b.slice(xf, [0, f], [n, 1], [1, 1]), (n, 1))
            mode = _MODES.get(int(modes[i]))
            if mode is None:
                raise DecomposeError(f"unknown node mode {int(modes[i])}")
            if mode == "member":
                vals = member_of[i]
                if vals:
                    eq = b.binary("eq", col, b.const(np.array(vals, ct).reshape(1, -1)))
                    hit = b.cast(b.reduce(b.cast(eq, np.int64), [1], "max", True), np.bool_)
                else:
                    hit = b.const(np.zeros((n, 1), bool))
            else:
                hit = b.binary(mode, col, b.const(np.array(splits[i], ct)))
            if len(nan_true) and nan_true[i]:
                hit = b.binary("or", hit, b.unary("isnan", col))
            tests[i] = hit
        return tests[i]

    # Root-to-leaf paths: (leaf index, [(node, branch taken)]).
    paths: list[tuple[int, list[tuple[int, bool]]]] = []
    for root in roots:
        stack: list[tuple[int, list[tuple[int, bool]]]] = [(int(root), [])]
        while stack:
            node, path = stack.pop()
            if len(path) > count:
                raise DecomposeError("TreeEnsemble nodes form a cycle")
            for branch, ids, leafs in ((True, true_ids, true_leaf), (False, false_ids, false_leaf)):
                nxt = int(ids[node])
                if leafs[node]:
                    paths.append((nxt, [*path, (node, branch)]))
                else:
                    stack.append((nxt, [*path, (node, branch)]))
    if any(not 0 <= leaf < len(leaf_targets) for leaf, _ in paths):
        raise DecomposeError("TreeEnsemble refers to a leaf out of range")

    cols = []
    for _, path in paths:
        reach: A.Tensor | None = None
        for node, branch in path:
            t = test(node) if branch else b.unary("not", test(node))
            reach = t if reach is None else b.binary("and", reach, t)
        assert reach is not None
        cols.append(reach)
    if not cols:
        out: A.Tensor = b.const(np.zeros((n, n_targets), ct))
    else:
        reached = b.concat(cols, 1) if len(cols) > 1 else cols[0]  # (N, P)
        onehot = np.zeros((len(paths), n_targets), bool)
        wmat = np.zeros((len(paths), n_targets), ct)
        for p, (leaf, _) in enumerate(paths):
            onehot[p, leaf_targets[leaf]] = True
            wmat[p, leaf_targets[leaf]] += leaf_weights[leaf]
        if agg in (0, 1):
            out = b.matmul(b.cast(reached, ct), b.const(wmat))
            if agg == 0:
                out = b.binary("div", out, b.const(np.array(float(len(roots)), ct)))
        else:
            fn = "min" if agg == 2 else "max"
            far = np.inf if agg == 2 else -np.inf
            hit = b.binary("and", b.reshape(reached, (n, len(paths), 1)), b.const(onehot[None]))
            vals = b.select(hit, b.const(wmat[None]), b.const(np.array(far, ct)))
            out = b.reduce(vals, [1], fn, False)
            out = b.select(b.unary("isinf", out), b.const(np.array(0, ct)), out)
    if post == 2:
        out = b.unary("sigmoid", out)
    elif post in (1, 3):
        out = _softmax(b, out, zero_aware=post == 3)
    return [b.cast(out, x.dtype)]


def _softmax(b: Builder, x: A.Tensor, zero_aware: bool) -> A.Tensor:
    """Softmax over the last axis; SOFTMAX_ZERO leaves zero scores at zero."""
    m = b.reduce_axis(x, 1, "max")
    e = b.unary("exp", b.binary("sub", x, m))
    zero = b.const(np.array(0, x.dtype))
    if zero_aware:
        e = b.select(b.binary("eq", x, zero), zero, e)
    s = b.reduce_axis(e, 1, "sum")
    s = b.select(b.binary("eq", s, zero), b.const(np.array(1, x.dtype)), s)
    return b.binary("div", e, s)
