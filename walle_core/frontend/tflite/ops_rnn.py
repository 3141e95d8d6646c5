"""TFLite's fused sequence LSTM -> ONNX LSTM (one direction), or, for the variants ONNX's LSTM
cannot express (coupled input and forget gates, a projection, layer-normalised gates, cell or
projection clipping), the recurrence unrolled over the (static) time steps in ONNX ops, as
TFLite's kernel computes it.

Its state tensors are TFLite *variables*: LiteRT carries them from one invocation to the next,
while a Walle run always starts from their initial contents (zeros unless the file holds values),
as a freshly created LiteRT interpreter does.
"""

from __future__ import annotations

import numpy as np

from walle_core.frontend.tflite.context import OpContext, maps

# TFLite's gate tensors (input, forget, cell, output) in ONNX's order (input, output, forget, cell).
IOFC = (0, 3, 1, 2)
INPUT_WEIGHTS, RECURRENT_WEIGHTS, PEEPHOLES, BIASES = 1, 5, 9, 12
PROJECTION_AND_NORMS = (16, 17, 20, 21, 22, 23)
OUTPUT_STATE, CELL_STATE = 18, 19
ACTIVATIONS = {4: ["Sigmoid", "Tanh", "Tanh"], 1: ["Sigmoid", "Relu", "Relu"]}


PROJECTION, PROJECTION_BIAS, NORMS = 16, 17, 20
INPUT, FORGET, CELL, OUTPUT = range(4)  # TFLite's gate order
PEEPHOLE = {INPUT: 9, FORGET: 10, OUTPUT: 11}


def _unrolled(c: OpContext, act: str, batch_first: bool) -> None:
    """The LSTM step by step: gates = x W + h R (+ peephole * c) -> layer norm * coefficient +
    bias (or + bias) -> sigmoid / activation; the input gate is 1 - forget with CIFG;
    c = f * c + i * g (clipped); h = o * act(c), projected (+ bias, clipped)."""
    shape = c.t(0).shape
    time_axis = 1 if batch_first else 0
    if len(shape) != 3 or time_axis in c.t(0).dynamic_axes():
        raise c.fail(f"an unrolled LSTM needs a 3-D input with a static time axis, got {list(shape)}")
    gates = [g for g in range(4) if g != INPUT or c.has(INPUT_WEIGHTS)]
    cells = c.t(INPUT_WEIGHTS + FORGET).shape[0]
    norm = c.has(NORMS + FORGET)
    if any(c.has(NORMS + g) != norm for g in gates):
        raise c.fail("layer-norm coefficients for some gates only")

    def stacked(first: int) -> str:  # (inputs, gates * cells): every gate's weights, transposed at load
        return c.one("Concat", [c.weight(first + g, (1, 0)) for g in gates], axis=1)

    xw = c.one("MatMul", [c.x(0), stacked(INPUT_WEIGHTS)])
    if not norm:  # the biases go in once for all steps; with layer norm they follow the norm
        xw = c.one("Add", [xw, c.one("Concat", [c.x(BIASES + g) for g in gates], axis=0)])
    recurrent = stacked(RECURRENT_WEIGHTS)
    h, cell = c.x(OUTPUT_STATE), c.x(CELL_STATE)
    cell_clip, proj_clip = float(c.opt("CellClip", 0.0)), float(c.opt("ProjClip", 0.0))
    steps = []
    for t in range(shape[time_axis]):
        xt = c.one("Squeeze", [c.one("Gather", [xw, c.ints_init([t])], axis=time_axis), c.ints_init([time_axis])])
        z = c.one("Add", [xt, c.one("MatMul", [h, recurrent])])
        parts = dict(zip(gates, c.node("Split", [z, c.ints_init([cells] * len(gates))], len(gates), axis=1),
                         strict=True))

        def gate(g: int, state: str | None, parts: dict[int, str] = parts) -> str:
            v = parts[g]
            if state is not None and g in PEEPHOLE and c.has(PEEPHOLE[g]):
                v = c.one("Add", [v, c.one("Mul", [c.x(PEEPHOLE[g]), state])])
            if norm:
                v = c.one("LayerNormalization", [v, c.x(NORMS + g), c.x(BIASES + g)], axis=-1, epsilon=1e-8)
            return v

        f = c.one("Sigmoid", [gate(FORGET, cell)])
        i = c.one("Sub", [c.scalar(1.0), f]) if INPUT not in gates else c.one("Sigmoid", [gate(INPUT, cell)])
        cell = c.one("Add", [c.one("Mul", [f, cell]), c.one("Mul", [i, c.one(act, [gate(CELL, None)])])])
        if cell_clip > 0:
            cell = c.one("Clip", [cell, c.scalar(-cell_clip), c.scalar(cell_clip)])
        o = c.one("Sigmoid", [gate(OUTPUT, cell)])
        h = c.one("Mul", [o, c.one(act, [cell])])
        if c.has(PROJECTION):
            h = c.one("MatMul", [h, c.weight(PROJECTION, (1, 0))])
            if c.has(PROJECTION_BIAS):
                h = c.one("Add", [h, c.x(PROJECTION_BIAS)])
            if proj_clip > 0:
                h = c.one("Clip", [h, c.scalar(-proj_clip), c.scalar(proj_clip)])
        steps.append(c.one("Unsqueeze", [h, c.ints_init([time_axis])]))
    c.out(c.one("Concat", steps, axis=time_axis) if len(steps) > 1 else steps[0])


@maps("UNIDIRECTIONAL_SEQUENCE_LSTM")
def unidirectional_sequence_lstm(c: OpContext) -> None:
    act = int(c.opt("FusedActivationFunction", 4))
    if act not in ACTIVATIONS:
        raise c.fail(f"fused activation {act} (only TANH and RELU)")
    batch_first = not c.opt("TimeMajor", False)
    if not c.has(INPUT_WEIGHTS) or any(c.has(i) for i in PROJECTION_AND_NORMS) or \
            float(c.opt("CellClip", 0.0)) or float(c.opt("ProjClip", 0.0)):
        _unrolled(c, ACTIVATIONS[act][1], batch_first)  # beyond what ONNX's LSTM expresses
        return
    y = _onnx_lstm(c, [(INPUT_WEIGHTS, RECURRENT_WEIGHTS, PEEPHOLES, BIASES, OUTPUT_STATE, CELL_STATE)],
                   ACTIVATIONS[act], batch_first)
    # Y is (batch, seq, 1, hidden) batch-first, else (seq, 1, batch, hidden): drop the direction
    c.out(c.one("Squeeze", [y, c.ints_init([2 if batch_first else 1])]))


def _onnx_lstm(c: OpContext, directions: list[tuple[int, int, int, int, int, int]], activations: list[str],
               batch_first: bool) -> str:
    """ONNX LSTM over TFLite's per-gate tensors; ``directions``: per direction the first input
    index of its input weights, recurrent weights, peepholes, biases, and its two states."""
    hidden = c.t(directions[0][0] + 1).shape[0]

    def per_direction(tensors: list[str]) -> str:
        """One tensor per direction stacked under the leading direction axis."""
        return c.one("Concat", [c.one("Unsqueeze", [t, c.ints_init([0])]) for t in tensors], axis=0)

    def gates(first: int, order: tuple[int, ...] = IOFC) -> str:
        return c.one("Concat", [c.x(first + k) for k in order], axis=0)

    recurrent_bias = c.em.init(np.zeros(4 * hidden, np.float32), c.hint + ":recurrent_bias")  # TFLite has one bias
    ins = [c.x(0), per_direction([gates(d[0]) for d in directions]), per_direction([gates(d[1]) for d in directions]),
           per_direction([c.one("Concat", [gates(d[3]), recurrent_bias], axis=0) for d in directions]),
           "",  # sequence_lens: every sequence runs its full length
           per_direction([c.x(d[4]) for d in directions]), per_direction([c.x(d[5]) for d in directions])]
    peepholes = [c.has(d[2]) for d in directions]
    if any(peepholes):
        if not all(peepholes):
            raise c.fail("peepholes in one direction only")
        ins.append(per_direction([gates(d[2], (0, 2, 1)) for d in directions]))  # ONNX: input, output, forget
    (y,) = c.node("LSTM", ins, 1, hidden_size=hidden, layout=int(batch_first), activations=activations * len(directions),
                  direction="bidirectional" if len(directions) == 2 else "forward")
    return y


# BIDIRECTIONAL_SEQUENCE_LSTM's inputs: (input weights, recurrent weights, peepholes, biases,
# projection weights, projection bias) of the forward, then the backward direction; the four
# states; an auxiliary input with its weights (not supported).
FW, BW = (1, 5, 9, 12, 35, 36), (18, 22, 26, 29, 37, 38)
BIDI_PROJECTIONS, AUX = (16, 17, 33, 34), range(39, 48)


@maps("BIDIRECTIONAL_SEQUENCE_LSTM")
def bidirectional_sequence_lstm(c: OpContext) -> None:
    """Both directions as one bidirectional ONNX LSTM; merged outputs are the two directions'
    hidden states side by side (forward first), else one output per direction."""
    act = int(c.opt("FusedActivationFunction", 4))
    if act not in ACTIVATIONS:
        raise c.fail(f"fused activation {act} (only TANH and RELU)")
    if not c.has(FW[0]) or not c.has(BW[0]):
        raise c.fail("coupled input and forget gates (CIFG) are not supported in bidirectional LSTMs")
    if any(c.has(i) for i in (*BIDI_PROJECTIONS, *AUX)):
        raise c.fail("projections and auxiliary inputs are not supported in bidirectional LSTMs")
    if float(c.opt("CellClip", 0.0)) or float(c.opt("ProjClip", 0.0)):
        raise c.fail("cell and projection clipping are not supported in bidirectional LSTMs")
    batch_first = not c.opt("TimeMajor", False)
    y = _onnx_lstm(c, [FW, BW], ACTIVATIONS[act], batch_first)
    # Y: (batch, seq, 2, hidden) batch-first, else (seq, 2, batch, hidden)
    hidden = c.t(FW[0] + 1).shape[0]
    if c.opt("MergeOutputs", False):
        if not batch_first:
            y = c.one("Transpose", [y], perm=[0, 2, 1, 3])
        c.out(c.one("Reshape", [y, c.ints_init([0, 0, 2 * hidden])]))
        return
    axis = 2 if batch_first else 1
    for j, half in enumerate(c.node("Split", [y, c.ints_init([1, 1])], 2, axis=axis)):
        c.out(c.one("Squeeze", [half, c.ints_init([axis])]), j=j)


RNN_ACTIVATIONS = {1: "Relu", 4: "Tanh", 6: "Sigmoid"}  # TFLite's fused activation codes


@maps("UNIDIRECTIONAL_SEQUENCE_RNN")
def unidirectional_sequence_rnn(c: OpContext) -> None:
    """h_t = act(x_t W^T + h_(t-1) R^T + b) -> ONNX RNN (one direction; TFLite has one bias)."""
    act = int(c.opt("FusedActivationFunction", 4))
    if act not in RNN_ACTIVATIONS:
        raise c.fail(f"fused activation {act} (only RELU, TANH and SIGMOID)")
    units = c.t(1).shape[0]
    batch_first = not c.opt("TimeMajor", False)
    zero_bias = c.em.init(np.zeros(units, np.float32), c.hint + ":recurrent_bias")
    ins = [c.x(0), c.one("Unsqueeze", [c.x(1), c.ints_init([0])]), c.one("Unsqueeze", [c.x(2), c.ints_init([0])]),
           c.one("Unsqueeze", [c.one("Concat", [c.x(3), zero_bias], axis=0), c.ints_init([0])]), "",
           c.one("Unsqueeze", [c.x(4), c.ints_init([0])])]
    (y,) = c.node("RNN", ins, 1, hidden_size=units, layout=int(batch_first), activations=[RNN_ACTIVATIONS[act]])
    c.out(c.one("Squeeze", [y, c.ints_init([2 if batch_first else 1])]))
