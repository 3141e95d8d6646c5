"""MatMul, Gemm and Einsum -> MatMul with Raster transposes and Reduce."""

from __future__ import annotations

import math

import numpy as np

from walle_core import atomic as A
from walle_core.decompose import NodeContext, register
from walle_core.decompose.builder import Builder, DecomposeError
from walle_core.decompose.elementwise import req

Ins = list[A.Tensor | None]


@register("MatMul")
def matmul(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    return [b.matmul(req(ins[0]), req(ins[1]))]


@register("Gemm")
def gemm(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    a, w = req(ins[0]), req(ins[1])
    c = ins[2] if len(ins) > 2 else None
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    ta, tb = bool(ctx.attr("transA", 0)), bool(ctx.attr("transB", 0))
    if len(a.shape) != 2 or len(w.shape) != 2:
        raise DecomposeError("Gemm inputs must be 2-D")
    m, k = (a.shape[1], a.shape[0]) if ta else a.shape
    k2, n = (w.shape[1], w.shape[0]) if tb else w.shape
    if k != k2:
        raise DecomposeError(f"Gemm inner dims differ: {list(a.shape)} x {list(w.shape)}")
    if alpha != 1.0:
        a = b.binary("mul", a, b.scalar(alpha, a))
    bias: A.Tensor | None = None
    full = False
    if c is not None and beta != 0.0:
        if beta != 1.0:
            c = b.binary("mul", c, b.scalar(beta, c))
        if c.size == n and (len(c.shape) == 1 or c.shape[0] == 1):
            bias = b.reshape(c, (n,))
        else:
            bias, full = b.expand(c, (m, n)), True
    out = b.tensor((1, m, n), np.result_type(a.dtype, w.dtype))
    inputs = [a, w] + ([bias] if bias is not None else [])
    b.emit(A.MatMul(inputs, [out], batch=1, m=m, n=n, k=k, trans_a=ta, trans_b=tb, bias_full=full))
    return [b.reshape(out, (m, n))]


def _parse_einsum(eq: str, n_inputs: int) -> tuple[list[str], str]:
    eq = eq.replace(" ", "")
    if "->" in eq:
        lhs, out = eq.split("->")
    else:
        lhs = eq
        letters = lhs.replace(",", "").replace("...", "")
        out = "".join(sorted(ch for ch in set(letters) if letters.count(ch) == 1))
        if "..." in lhs:
            out = "..." + out
    terms = lhs.split(",")
    if len(terms) != n_inputs:
        raise DecomposeError(f"Einsum equation has {len(terms)} operands, got {n_inputs} inputs")
    return terms, out


def _expand_ellipsis(terms: list[str], out: str, ranks: list[int]) -> tuple[list[str], str]:
    ell_rank = 0
    for term, rank in zip(terms, ranks, strict=True):
        if "..." in term:
            ell_rank = max(ell_rank, rank - (len(term) - 3))
    fill = "".join(chr(ord("A") + i) for i in range(ell_rank))
    new_terms = []
    for term, rank in zip(terms, ranks, strict=True):
        if "..." in term:
            k = rank - (len(term) - 3)
            term = term.replace("...", fill[ell_rank - k :])
        if len(term) != rank:
            raise DecomposeError(f"Einsum term {term!r} does not match rank {rank}")
        new_terms.append(term)
    return new_terms, out.replace("...", fill)


def _diagonal(b: Builder, x: A.Tensor, term: str) -> tuple[A.Tensor, str]:
    """Collapse repeated letters in one operand (``ii->i``) to their diagonal via strides."""
    from walle_core.decompose.builder import contiguous

    while len(set(term)) < len(term):
        st = contiguous(x.shape)
        for i, ch in enumerate(term):
            j = term.find(ch, i + 1)
            if j > 0:
                break
        shape = [d for k, d in enumerate(x.shape) if k != j]
        strides = [s + (st[j] if k == i else 0) for k, s in enumerate(st) if k != j]
        x = b.strided(x, shape, strides)
        term = term[:j] + term[j + 1 :]
    return x, term


def _contract(b: Builder, x: A.Tensor, tx: str, y: A.Tensor, ty: str, keep: str) -> tuple[A.Tensor, str]:
    dims = dict(zip(tx, x.shape, strict=True)) | dict(zip(ty, y.shape, strict=True))
    batch = [c for c in tx if c in ty and c in keep]
    summed = [c for c in tx if c in ty and c not in keep]
    xo = [c for c in tx if c not in ty]
    yo = [c for c in ty if c not in tx]
    xt = b.transpose(x, [tx.index(c) for c in batch + xo + summed])
    yt = b.transpose(y, [ty.index(c) for c in batch + summed + yo])
    nb = math.prod(dims[c] for c in batch)
    m = math.prod(dims[c] for c in xo)
    k = math.prod(dims[c] for c in summed)
    n = math.prod(dims[c] for c in yo)
    r = b.matmul(b.reshape(xt, (nb, m, k)), b.reshape(yt, (nb, k, n)))
    term = "".join(batch + xo + yo)
    return b.reshape(r, [dims[c] for c in term]), term


@register("Einsum")
def einsum(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    xs = [req(x) for x in ins]
    terms, out = _parse_einsum(str(ctx.attr("equation")), len(xs))
    terms, out = _expand_ellipsis(terms, out, [len(x.shape) for x in xs])
    ops = []
    for x, t in zip(xs, terms, strict=True):
        x, t = _diagonal(b, x, t)
        ops.append((x, t))
    for i, (x, t) in enumerate(ops):
        later = out + "".join(tt for _, tt in ops[:i] + ops[i + 1 :])
        drop = [a for a, c in enumerate(t) if c not in later]
        if drop:
            x = b.reduce(x, drop, "sum", False)
            t = "".join(c for c in t if c in later)
        ops[i] = (x, t)
    x, t = ops[0]
    for i, (y, ty) in enumerate(ops[1:], start=1):
        keep = out + "".join(tt for _, tt in ops[i + 1 :])
        x, t = _contract(b, x, t, y, ty, keep)
    drop = [a for a, c in enumerate(t) if c not in out]
    if drop:
        x = b.reduce(x, drop, "sum", False)
        t = "".join(c for c in t if c in out)
    y = b.transpose(x, [t.index(c) for c in out])
    return [y if y is not xs[0] else b.unary("identity", y)]


@register("Det")
def det(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    """Leibniz expansion over a plan-time permutation table (small matrices only)."""
    import itertools

    from walle_core.decompose.index import take

    x = req(ins[0])
    if len(x.shape) < 2 or x.shape[-1] != x.shape[-2]:
        raise DecomposeError("Det needs (..., n, n) input")
    n = x.shape[-1]
    if n > 5:
        raise ctx.unsupported(f"Det of {n}x{n} matrices (only n <= 5)")
    lead = x.shape[:-2]
    batch = math.prod(lead)
    perms = list(itertools.permutations(range(n)))
    table = np.array([[i * n + p[i] for i in range(n)] for p in perms], np.int64)
    signs = np.array([np.linalg.det(np.eye(n)[list(p)]) for p in perms]).round().astype(x.dtype)
    flat = b.reshape(x, (batch, n * n))
    terms = b.reduce(take(b, flat, b.const(table), 1), [2], "prod", False)  # (batch, n!)
    total = b.reduce(b.binary("mul", terms, b.const(signs)), [1], "sum", False)
    return [b.reshape(total, lead)]
