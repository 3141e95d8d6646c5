"""Control flow: If, Loop and Scan are inlined at plan time; conditions and trip counts that
depend on data become sync points (see ``walle_core.plan.lower``).

``Loop`` is unrolled: each iteration lowers the body again with the iteration number as a
plan-time constant, so index arithmetic on it folds away. A loop condition computed from data
is read with ``Builder.value`` after each iteration (one sync per data-dependent iteration).
"""

from __future__ import annotations

import numpy as np

from walle_core import atomic as A
from walle_core.decompose import NodeContext, register
from walle_core.decompose.builder import Builder, DecomposeError, normalize_axis
from walle_core.decompose.elementwise import req
from walle_core.ir.graph import Graph, ValueInfo

Ins = list[A.Tensor | None]

# A guard against unrolling a runaway loop into an unbounded program.
MAX_UNROLL = 100_000


def _truth(b: Builder, t: A.Tensor) -> bool:
    v = np.asarray(b.value(t)).reshape(-1)
    if v.size != 1:
        raise DecomposeError(f"a condition must hold one value, got shape {list(t.shape)}")
    return bool(v[0])


def _scalar_like(b: Builder, value: int | bool, vi: ValueInfo | None, dtype: type) -> A.Tensor:
    """A scalar constant shaped as the body declares it ([] or [1])."""
    shape: tuple[int, ...] = ()
    if vi is not None and vi.type.shape is not None and len(vi.type.shape) == 1:
        shape = (1,)
    return b.const(np.full(shape, value, dtype))


@register("If")
def if_(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    cond = _truth(b, req(ins[0], "cond"))
    branch = ctx.attr("then_branch" if cond else "else_branch")
    return ctx.run_subgraph(branch, [])


@register("Loop")
def loop(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    body: Graph = ctx.attr("body")
    m_t = ins[0] if ins else None
    cond_t = ins[1] if len(ins) > 1 else None
    carried: list[A.Tensor] = [req(t, "loop-carried value") for t in ins[2:]]
    n_carried = len(carried)
    n_scan = len(body.outputs) - 1 - n_carried
    if n_scan < 0 or len(body.inputs) != 2 + n_carried:
        raise DecomposeError(f"Loop body takes {len(body.inputs)} inputs and gives "
                             f"{len(body.outputs)} outputs for {n_carried} carried values")
    trip = None if m_t is None else int(np.asarray(b.value(m_t)).reshape(-1)[0])
    cond = True if cond_t is None else _truth(b, cond_t)
    cond_vi = body.inputs[1]
    cond_in = _scalar_like(b, cond, cond_vi, np.bool_)
    if cond_t is not None and cond_t.shape == cond_in.shape:
        cond_in = cond_t
    scans: list[list[A.Tensor]] = [[] for _ in range(n_scan)]
    i = 0
    while (trip is None or i < trip) and cond:
        if i >= MAX_UNROLL:
            raise ctx.unsupported(f"Loop runs more than {MAX_UNROLL} iterations")
        it = _scalar_like(b, i, body.inputs[0], np.int64)
        outs = ctx.run_subgraph(body, [it, cond_in, *carried])
        cond_out, carried, new_scans = outs[0], outs[1:1 + n_carried], outs[1 + n_carried:]
        for k, s in enumerate(new_scans):
            scans[k].append(s)
        i += 1
        # The spec calls the body's condition "ignored" without a cond input, but onnxruntime
        # and the ONNX reference both stop on it; follow them.
        cond = _truth(b, cond_out)
        cond_in = cond_out
    results = list(carried)
    for k in range(n_scan):
        if scans[k]:
            parts = [b.reshape(s, (1, *s.shape)) for s in scans[k]]
            results.append(b.concat(parts, 0))
        else:
            vi = body.outputs[1 + n_carried + k]
            shape = vi.type.shape or ()
            dims = [d if isinstance(d, int) else 0 for d in shape]
            results.append(b.const(np.zeros((0, *dims), vi.type.dtype)))
    return results


@register("Scan")
def scan(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    if ctx.opset < 9:
        return scan8(b, ins, ctx)
    body: Graph = ctx.attr("body")
    m = int(ctx.attr("num_scan_inputs"))
    tensors = [req(t) for t in ins]
    n_state = len(tensors) - m
    states, xs = tensors[:n_state], tensors[n_state:]
    n_out = len(body.outputs) - n_state
    in_axes = list(ctx.attr("scan_input_axes") or [0] * m)
    in_dirs = list(ctx.attr("scan_input_directions") or [0] * m)
    out_axes = list(ctx.attr("scan_output_axes") or [0] * n_out)
    out_dirs = list(ctx.attr("scan_output_directions") or [0] * n_out)
    if len(in_axes) != m or len(in_dirs) != m or len(out_axes) != n_out or len(out_dirs) != n_out:
        raise DecomposeError("Scan axis/direction lists do not match the inputs and outputs")
    in_axes = [normalize_axis(a, len(x.shape)) for a, x in zip(in_axes, xs, strict=True)]
    lengths = {x.shape[a] for x, a in zip(xs, in_axes, strict=True)}
    if len(lengths) > 1:
        raise DecomposeError(f"Scan inputs differ in sequence length: {sorted(lengths)}")
    seq = lengths.pop() if lengths else 0
    outs_per_step: list[list[A.Tensor]] = [[] for _ in range(n_out)]
    for t in range(seq):
        slices = []
        for x, a, rev in zip(xs, in_axes, in_dirs, strict=True):
            pos = seq - 1 - t if rev else t
            starts = [0] * len(x.shape)
            starts[a] = pos
            sizes = list(x.shape)
            sizes[a] = 1
            s = b.slice(x, starts, sizes, [1] * len(x.shape))
            slices.append(b.reshape(s, [d for i, d in enumerate(x.shape) if i != a]))
        outs = ctx.run_subgraph(body, [*states, *slices])
        states = outs[:n_state]
        for k, y in enumerate(outs[n_state:]):
            outs_per_step[k].append(y)
    results = list(states)
    for k in range(n_out):
        steps = outs_per_step[k]
        if out_dirs[k]:
            steps = steps[::-1]
        if not steps:
            vi = body.outputs[n_state + k]
            dims = [d if isinstance(d, int) else 0 for d in (vi.type.shape or ())]
            results.append(b.const(np.zeros((0, *dims), vi.type.dtype)))
            continue
        rank = len(steps[0].shape) + 1
        axis = normalize_axis(out_axes[k], rank)
        parts = [b.reshape(s, (*s.shape[:axis], 1, *s.shape[axis:])) for s in steps]
        results.append(b.concat(parts, axis))
    return results


def scan8(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    """Scan-8: axis 0 of every input and output is a batch; scan inputs are (batch, seq, ...)
    with optional per-row ``sequence_lens`` (steps past a row's length are not run and its
    scan outputs are zero there)."""
    body: Graph = ctx.attr("body")
    m = int(ctx.attr("num_scan_inputs"))
    lens_t = ins[0] if ins else None
    tensors = [req(t) for t in ins[1:]]
    n_state = len(tensors) - m
    states, xs = tensors[:n_state], tensors[n_state:]
    n_out = len(body.outputs) - n_state
    dirs = list(ctx.attr("directions") or [0] * m)
    batch = (states + xs)[0].shape[0]
    seq = xs[0].shape[1] if xs else 0
    lens = [seq] * batch
    if lens_t is not None:
        lens = [int(v) for v in np.asarray(b.value(lens_t)).reshape(-1)]
    finals: list[list[A.Tensor]] = []
    outs_b: list[list[A.Tensor]] = []

    def row(t: A.Tensor, i: int) -> A.Tensor:
        starts = [i] + [0] * (len(t.shape) - 1)
        return b.reshape(b.slice(t, starts, [1, *t.shape[1:]], [1] * len(t.shape)), t.shape[1:])

    for i in range(batch):
        st = [row(s, i) for s in states]
        xr = [row(x, i) for x in xs]
        steps: list[list[A.Tensor]] = [[] for _ in range(n_out)]
        for t in range(lens[i]):
            sl = [row(x, lens[i] - 1 - t if rev else t) for x, rev in zip(xr, dirs, strict=True)]
            outs = ctx.run_subgraph(body, [*st, *sl])
            st = outs[:n_state]
            for k, y in enumerate(outs[n_state:]):
                steps[k].append(y)
        finals.append(st)
        stacked = []
        for k in range(n_out):
            if not steps[k]:
                raise ctx.unsupported("Scan-8 with a zero sequence length")
            ys = [b.reshape(y, (1, *y.shape)) for y in steps[k]]
            if lens[i] < seq:
                shape = steps[k][0].shape
                ys.append(b.const(np.zeros((seq - lens[i], *shape), steps[k][0].dtype)))
            stacked.append(b.concat(ys, 0))
        outs_b.append(stacked)
    results = [b.concat([b.reshape(finals[i][k], (1, *finals[i][k].shape)) for i in range(batch)], 0)
               for k in range(n_state)]
    for k in range(n_out):
        results.append(b.concat([b.reshape(outs_b[i][k], (1, *outs_b[i][k].shape))
                                 for i in range(batch)], 0))
    return results
