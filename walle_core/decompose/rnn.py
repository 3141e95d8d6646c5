"""Recurrent layers (LSTM, GRU, RNN), unrolled over the sequence into atomic ops.

The input projection of every time step is one MatMul over the whole sequence; each step then
adds the recurrent MatMul, splits the gates with Rasters and applies the gate activations as
Unary/Binary ops. ``sequence_lens`` that are not all full length are handled with masks
(``Select``): past its length a batch row keeps its state and emits zeros, which also gives the
per-row reversal the reverse direction needs.

A plain LSTM or GRU layer (default activations, no clip, peepholes or coupled gates, every
row at full length) is one ``lstm_sequence`` / ``gru_sequence`` composite over the whole
sequence and all its directions, whose expansion is the unrolled form: a backend may run it as
one kernel (the two directions of a bidirectional layer at once), with each direction's input
projection still one MatMul ahead of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from walle_core import atomic as A
from walle_core.decompose import NodeContext, register
from walle_core.decompose.builder import Builder, DecomposeError
from walle_core.decompose.elementwise import req

Ins = list[A.Tensor | None]
Act = Callable[[A.Tensor], A.Tensor]
LSTM_ACTIVATIONS = ("Sigmoid", "Tanh", "Tanh")
GRU_ACTIVATIONS = ("Sigmoid", "Tanh")

# Activation name -> (number of alpha/beta parameters it consumes, default values).
_ACT_PARAMS: dict[str, tuple[float, ...]] = {
    "relu": (), "tanh": (), "sigmoid": (), "softsign": (), "softplus": (),
    "affine": (1.0, 0.0), "leakyrelu": (0.01,), "thresholdedrelu": (1.0,),
    "scaledtanh": (1.0, 1.0), "hardsigmoid": (0.2, 0.5), "elu": (1.0,),
}


def _activation(b: Builder, name: str, params: tuple[float, ...]) -> Act:
    key = name.lower()
    if key in ("relu", "tanh", "sigmoid", "softsign", "softplus"):
        return lambda x: b.unary(key, x)
    if key == "affine":
        return lambda x: b.binary("add", b.binary("mul", x, b.scalar(params[0], x)),
                                  b.scalar(params[1], x))
    if key == "leakyrelu":
        return lambda x: b.unary("leaky_relu", x, params[0])
    if key == "thresholdedrelu":
        return lambda x: b.unary("thresholded_relu", x, params[0])
    if key == "scaledtanh":
        return lambda x: b.binary(
            "mul", b.unary("tanh", b.binary("mul", x, b.scalar(params[1], x))),
            b.scalar(params[0], x))
    if key == "hardsigmoid":
        return lambda x: b.unary("hardsigmoid", x, params[0], params[1])
    if key == "elu":
        return lambda x: b.unary("elu", x, params[0])
    raise DecomposeError(f"unknown recurrent activation {name!r}")


def activations(b: Builder, ctx: NodeContext, defaults: Sequence[str], dirs: int) -> list[list[Act]]:
    """Per-direction activation functions; alpha/beta lists are consumed in order by the
    functions that take parameters."""
    names: list[str] = list(ctx.attr("activations") or [])
    per = len(defaults)
    if not names:
        names = list(defaults) * dirs
    elif len(names) == per and dirs == 2:
        names = names * 2
    if len(names) != per * dirs:
        raise DecomposeError(f"expected {per * dirs} activations, got {len(names)}")
    alphas = list(ctx.attr("activation_alpha") or [])
    betas = list(ctx.attr("activation_beta") or [])
    out: list[list[Act]] = []
    for d in range(dirs):
        fns: list[Act] = []
        for name in names[d * per:(d + 1) * per]:
            key = name.lower()
            if key not in _ACT_PARAMS:
                raise ctx.unsupported(f"activation {name!r}")
            default = _ACT_PARAMS[key]
            params: list[float] = []
            if len(default) >= 1:
                params.append(float(alphas.pop(0)) if alphas else default[0])
            if len(default) >= 2:
                params.append(float(betas.pop(0)) if betas else default[1])
            fns.append(_activation(b, key, tuple(params)))
        out.append(fns)
    return out


@dataclass
class Recurrence:
    """Everything shared by the three cell kinds, normalised to layout 0."""

    x: A.Tensor  # (seq, batch, input)
    seq: int
    batch: int
    hidden: int
    dirs: int
    directions: list[bool]  # True: reverse
    mask: list[A.Tensor | None]  # per time step: (batch, 1) bool, None when all rows run
    clip: float | None


def prepare(b: Builder, ins: Ins, ctx: NodeContext, gates: int) -> Recurrence:
    x = req(ins[0])
    w = req(ins[1], "W")
    layout = int(ctx.attr("layout", 0))
    if len(x.shape) != 3:
        raise DecomposeError(f"X must be 3-D, got {list(x.shape)}")
    if layout == 1:
        x = b.transpose(x, (1, 0, 2))
    seq, batch, _ = x.shape
    direction = ctx.attr("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise DecomposeError(f"bad direction {direction!r}")
    dirs = 2 if direction == "bidirectional" else 1
    hidden = int(ctx.attr("hidden_size", w.shape[1] // gates))
    if w.shape[0] != dirs or w.shape[1] != gates * hidden:
        raise DecomposeError(f"W shape {list(w.shape)} does not fit {dirs} directions x "
                             f"{gates} gates x hidden {hidden}")
    directions = [False, True] if dirs == 2 else [direction == "reverse"]
    lens_t = ins[4] if len(ins) > 4 else None
    mask: list[A.Tensor | None] = [None] * seq
    if lens_t is not None:
        lens = b.maybe_value(lens_t)
        full = lens is not None and bool(np.all(np.asarray(lens).reshape(-1) >= seq))
        if not full:
            lens2 = b.reshape(b.cast(lens_t, np.int64), (batch, 1))
            mask = [b.binary("gt", lens2, b.const(np.array(t, np.int64))) for t in range(seq)]
    clip = ctx.attr("clip")
    return Recurrence(x, seq, batch, hidden, dirs, directions, mask,
                      None if clip is None else float(clip))


def initial_state(b: Builder, t: A.Tensor | None, r: Recurrence, layout: int) -> list[A.Tensor]:
    """Per-direction (batch, hidden) initial states (zeros when omitted)."""
    if t is None:
        z = b.const(np.zeros((r.batch, r.hidden), r.x.dtype))
        return [z] * r.dirs
    if layout == 1:
        t = b.transpose(t, (1, 0, 2))
    return [b.reshape(b.slice(t, [d, 0, 0], [1, r.batch, r.hidden], [1, 1, 1]),
                      (r.batch, r.hidden)) for d in range(r.dirs)]


def input_projection(b: Builder, r: Recurrence, w: A.Tensor, bias: A.Tensor | None,
                     d: int) -> A.Tensor:
    """``X @ W[d]^T + bias`` for all time steps: (seq, batch, gates*hidden)."""
    wd = b.reshape(b.slice(w, [d, 0, 0], [1, *w.shape[1:]], [1, 1, 1]), w.shape[1:])
    x2 = b.reshape(r.x, (r.seq * r.batch, r.x.shape[2]))
    y = b.matmul(x2, b.transpose(wd, (1, 0)))
    if bias is not None:
        y = b.binary("add", y, bias)
    return b.reshape(y, (r.seq, r.batch, w.shape[1]))


def bias_parts(b: Builder, bias: A.Tensor | None, d: int, gates: int, hidden: int
               ) -> tuple[A.Tensor | None, A.Tensor | None]:
    """(Wb, Rb) of direction ``d``, each (gates*hidden,)."""
    if bias is None:
        return None, None
    n = gates * hidden
    wb = b.reshape(b.slice(bias, [d, 0], [1, n], [1, 1]), (n,))
    rb = b.reshape(b.slice(bias, [d, n], [1, n], [1, 1]), (n,))
    return wb, rb


def recurrent_weight(b: Builder, rw: A.Tensor, d: int) -> A.Tensor:
    rd = b.reshape(b.slice(rw, [d, 0, 0], [1, *rw.shape[1:]], [1, 1, 1]), rw.shape[1:])
    return b.transpose(rd, (1, 0))  # (hidden, gates*hidden)


def step_slice(b: Builder, xw: A.Tensor, t: int) -> A.Tensor:
    _, batch, n = xw.shape
    return b.reshape(b.slice(xw, [t, 0, 0], [1, batch, n], [1, 1, 1]), (batch, n))


def gate(b: Builder, g: A.Tensor, i: int, hidden: int) -> A.Tensor:
    return b.slice(g, [0, i * hidden], [g.shape[0], hidden], [1, 1])


def clipped(b: Builder, x: A.Tensor, clip: float | None) -> A.Tensor:
    return x if clip is None else b.unary("clip", x, -clip, clip)


def finish(b: Builder, ctx: NodeContext, r: Recurrence, ys: list[A.Tensor],
           finals: list[list[A.Tensor]]) -> list[A.Tensor]:
    """Assemble Y (seq, dirs, batch, hidden) from each direction's (seq, batch, hidden) and the
    final states (dirs, batch, hidden)."""
    layout = int(ctx.attr("layout", 0))
    outs: list[A.Tensor] = []
    wanted = list(ctx.node.outputs)
    if wanted and wanted[0]:
        y = b.concat([b.reshape(yd, (r.seq, 1, r.batch, r.hidden)) for yd in ys], 1)
        if layout == 1:
            y = b.transpose(y, (2, 0, 1, 3))
        outs.append(y)
    else:
        outs.append(b.const(np.zeros((0,), r.x.dtype)))
    for k in range(len(finals[0])):
        if len(wanted) <= k + 1 or not wanted[k + 1]:
            outs.append(b.const(np.zeros((0,), r.x.dtype)))
            continue
        st = b.concat([b.reshape(finals[d][k], (1, r.batch, r.hidden)) for d in range(r.dirs)], 0)
        if layout == 1:
            st = b.transpose(st, (1, 0, 2))
        outs.append(st)
    return outs


def masked(b: Builder, mask: A.Tensor | None, new: A.Tensor, old: A.Tensor) -> A.Tensor:
    return new if mask is None else b.select(mask, new, old)


Cell = Callable[[int, list[A.Tensor]], list[A.Tensor]]


def run_direction(b: Builder, r: Recurrence, d: int, states: list[A.Tensor], cell: Cell
                  ) -> tuple[A.Tensor, list[A.Tensor]]:
    """Step ``cell(t, states) -> new states`` over the sequence; returns (Y (seq, batch,
    hidden), finals). ``states[0]`` is the hidden state, which is also the step's output."""
    order = range(r.seq - 1, -1, -1) if r.directions[d] else range(r.seq)
    ys: list[A.Tensor | None] = [None] * r.seq
    zero = b.const(np.zeros((r.batch, r.hidden), r.x.dtype))
    for t in order:
        new = cell(t, states)
        m = r.mask[t]
        states = [masked(b, m, n, o) for n, o in zip(new, states, strict=True)]
        ys[t] = masked(b, m, new[0], zero)
    if r.seq == 0:
        return b.const(np.zeros((0, r.batch, r.hidden), r.x.dtype)), states
    return b.concat([b.reshape(y, (1, r.batch, r.hidden)) for y in ys if y is not None], 0), states


def default_activations(ctx: NodeContext, defaults: Sequence[str]) -> bool:
    names = [a.lower() for a in (ctx.attr("activations") or [])]
    plain = [a.lower() for a in defaults]
    return names in ([], plain, plain * 2)


def whole_sequence(r: Recurrence, ctx: NodeContext, defaults: Sequence[str]) -> bool:
    """A direction is one sequence composite when its cell is the plain one (default
    activations, no clip, float32) and every batch row runs the full length."""
    return (r.seq > 0 and r.clip is None and r.x.dtype == np.float32
            and all(m is None for m in r.mask) and default_activations(ctx, defaults))


Part = tuple[list[A.Tensor], list[A.Tensor], Cell]  # (composite inputs, initial states, cell)


def sequences(b: Builder, r: Recurrence, composite: str, parts: list[Part], first: int = 0,
              **attrs: object) -> tuple[list[A.Tensor], list[list[A.Tensor]]]:
    """Directions ``first``.. of a layer (one, or both of a bidirectional one) as one
    whole-sequence composite of every direction's inputs in turn -> every direction's (Y,
    final states) in turn; their unrolled steps are its expansion. The directions of a
    bidirectional layer share nothing, so a backend may run them at once (``directions``: 2;
    ``reverse`` is the first one's, the second runs the other way)."""

    def expand() -> list[A.Tensor]:
        outs: list[A.Tensor] = []
        for i, (_, states, cell) in enumerate(parts):
            y, fin = run_direction(b, r, first + i, states, cell)
            outs += [y, *fin]
        return outs

    outs = b.composite(composite, [t for ins, _, _ in parts for t in ins], expand, hidden=r.hidden,
                       reverse=int(r.directions[first]), directions=len(parts), **attrs)
    per = len(outs) // len(parts)
    return ([outs[i * per] for i in range(len(parts))],
            [outs[i * per + 1:(i + 1) * per] for i in range(len(parts))])


@register("LSTM")
def lstm(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    r = prepare(b, ins, ctx, 4)
    w, rw = req(ins[1], "W"), req(ins[2], "R")
    bias = ins[3] if len(ins) > 3 else None
    layout = int(ctx.attr("layout", 0))
    h0 = initial_state(b, ins[5] if len(ins) > 5 else None, r, layout)
    c0 = initial_state(b, ins[6] if len(ins) > 6 else None, r, layout)
    peep = ins[7] if len(ins) > 7 else None
    acts = activations(b, ctx, LSTM_ACTIVATIONS, r.dirs)
    couple = bool(ctx.attr("input_forget", 0))
    hs = r.hidden
    # the plain cell (default activations, no peepholes, clip or coupling) is a composite a
    # backend may run as one kernel: over the whole sequence when every row runs its full
    # length, else per step
    plain = peep is None and not couple
    whole = plain and whole_sequence(r, ctx, LSTM_ACTIVATIONS)
    plain_cell = (plain and not whole and r.clip is None and r.x.dtype == np.float32
                  and default_activations(ctx, LSTM_ACTIVATIONS))
    ys: list[A.Tensor] = []
    finals: list[list[A.Tensor]] = []
    parts: list[Part] = []
    for d in range(r.dirs):
        wb, rb = bias_parts(b, bias, d, 4, hs)
        full_bias = None if wb is None or rb is None else b.binary("add", wb, rb)
        xw = input_projection(b, r, w, full_bias, d)
        rt = recurrent_weight(b, rw, d)
        p = None
        if peep is not None:
            p = [b.slice(peep, [d, k * hs], [1, hs], [1, 1]) for k in range(3)]  # i, o, f
        f, g, h = acts[d]

        def cell(t: int, st: list[A.Tensor], xw: A.Tensor = xw, rt: A.Tensor = rt,
                 p: list[A.Tensor] | None = p, f: Act = f, g: Act = g, h: Act = h) -> list[A.Tensor]:
            hp, cp = st
            gates = b.binary("add", step_slice(b, xw, t), b.matmul(hp, rt))

            def tail() -> list[A.Tensor]:
                gi, go, gf, gc = (gate(b, gates, k, hs) for k in range(4))
                if p is not None:
                    gi = b.binary("add", gi, b.binary("mul", p[0], cp))
                    gf = b.binary("add", gf, b.binary("mul", p[2], cp))
                i = f(clipped(b, gi, r.clip))
                if couple:
                    fg = b.binary("sub", b.scalar(1.0, i), i)
                else:
                    fg = f(clipped(b, gf, r.clip))
                c_in = g(clipped(b, gc, r.clip))
                c = b.binary("add", b.binary("mul", fg, cp), b.binary("mul", i, c_in))
                go_ = go if p is None else b.binary("add", go, b.binary("mul", p[1], c))
                o = f(clipped(b, go_, r.clip))
                return [b.binary("mul", o, h(c)), c]

            if plain_cell:  # (gates iofc, c) -> (h, c)
                return b.composite("lstm_cell", [gates, cp], tail, hidden=hs)
            return tail()

        if whole:  # every direction goes into one composite, below
            parts.append(([xw, rt, h0[d], c0[d]], [h0[d], c0[d]], cell))
            continue
        y, fin = run_direction(b, r, d, [h0[d], c0[d]], cell)
        ys.append(y)
        finals.append(fin)
    if whole:
        ys, finals = sequences(b, r, "lstm_sequence", parts)
    return finish(b, ctx, r, ys, finals)


@register("GRU")
def gru(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    r = prepare(b, ins, ctx, 3)
    w, rw = req(ins[1], "W"), req(ins[2], "R")
    bias = ins[3] if len(ins) > 3 else None
    layout = int(ctx.attr("layout", 0))
    h0 = initial_state(b, ins[5] if len(ins) > 5 else None, r, layout)
    acts = activations(b, ctx, GRU_ACTIVATIONS, r.dirs)
    lbr = bool(ctx.attr("linear_before_reset", 0))
    hs = r.hidden
    whole = whole_sequence(r, ctx, GRU_ACTIVATIONS)
    ys: list[A.Tensor] = []
    finals: list[list[A.Tensor]] = []
    parts: list[Part] = []
    for d in range(r.dirs):
        wb, rb = bias_parts(b, bias, d, 3, hs)
        # z and r take both biases up front; h keeps Rb_h apart (it sits inside the reset).
        pre_bias = wb
        rbh: A.Tensor | None = None
        if wb is not None and rb is not None:
            rb_zr = b.concat([b.slice(rb, [0], [2 * hs], [1]),
                              b.const(np.zeros((hs,), rb.dtype))], 0)
            pre_bias = b.binary("add", wb, rb_zr)
            rbh = b.slice(rb, [2 * hs], [hs], [1])
        xw = input_projection(b, r, w, pre_bias, d)
        rt = recurrent_weight(b, rw, d)  # (hidden, 3*hidden)
        rt_zr = b.slice(rt, [0, 0], [hs, 2 * hs], [1, 1])
        rt_h = b.slice(rt, [0, 2 * hs], [hs, hs], [1, 1])
        f, g = acts[d]

        def cell(t: int, st: list[A.Tensor], xw: A.Tensor = xw, rt_zr: A.Tensor = rt_zr,
                 rt_h: A.Tensor = rt_h, rbh: A.Tensor | None = rbh, f: Act = f,
                 g: Act = g) -> list[A.Tensor]:
            (hp,) = st
            xt = step_slice(b, xw, t)
            zr = b.binary("add", b.slice(xt, [0, 0], [r.batch, 2 * hs], [1, 1]), b.matmul(hp, rt_zr))
            z = f(clipped(b, gate(b, zr, 0, hs), r.clip))
            rg = f(clipped(b, gate(b, zr, 1, hs), r.clip))
            xh = gate(b, xt, 2, hs)
            if lbr:
                hr = b.matmul(hp, rt_h)
                if rbh is not None:
                    hr = b.binary("add", hr, rbh)
                pre = b.binary("add", xh, b.binary("mul", rg, hr))
            else:
                hr = b.matmul(b.binary("mul", rg, hp), rt_h)
                if rbh is not None:
                    hr = b.binary("add", hr, rbh)
                pre = b.binary("add", xh, hr)
            hh = g(clipped(b, pre, r.clip))
            # H = (1 - z) * hh + z * H_prev = hh + z * (H_prev - hh)
            return [b.binary("add", hh, b.binary("mul", z, b.binary("sub", hp, hh)))]

        if whole:  # every direction goes into one composite, below
            extra = [] if rbh is None else [rbh]  # Rb of the h gate, kept apart from xw
            parts.append(([xw, rt, h0[d], *extra], [h0[d]], cell))
            continue
        y, fin = run_direction(b, r, d, [h0[d]], cell)
        ys.append(y)
        finals.append(fin)
    if whole:
        ys, finals = sequences(b, r, "gru_sequence", parts, linear_before_reset=int(lbr))
    return finish(b, ctx, r, ys, finals)


@register("RNN")
def rnn(b: Builder, ins: Ins, ctx: NodeContext) -> list[A.Tensor]:
    r = prepare(b, ins, ctx, 1)
    w, rw = req(ins[1], "W"), req(ins[2], "R")
    bias = ins[3] if len(ins) > 3 else None
    layout = int(ctx.attr("layout", 0))
    h0 = initial_state(b, ins[5] if len(ins) > 5 else None, r, layout)
    acts = activations(b, ctx, ("Tanh",), r.dirs)
    ys: list[A.Tensor] = []
    finals: list[list[A.Tensor]] = []
    for d in range(r.dirs):
        wb, rb = bias_parts(b, bias, d, 1, r.hidden)
        full_bias = None if wb is None or rb is None else b.binary("add", wb, rb)
        xw = input_projection(b, r, w, full_bias, d)
        rt = recurrent_weight(b, rw, d)
        (f,) = acts[d]

        def cell(t: int, st: list[A.Tensor], xw: A.Tensor = xw, rt: A.Tensor = rt,
                 f: Act = f) -> list[A.Tensor]:
            pre = b.binary("add", step_slice(b, xw, t), b.matmul(st[0], rt))
            return [f(clipped(b, pre, r.clip))]

        y, fin = run_direction(b, r, d, [h0[d]], cell)
        ys.append(y)
        finals.append(fin)
    return finish(b, ctx, r, ys, finals)
