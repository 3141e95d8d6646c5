"""TFLite's fused sequence LSTM -> ONNX LSTM (one direction).

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


@maps("UNIDIRECTIONAL_SEQUENCE_LSTM")
def unidirectional_sequence_lstm(c: OpContext) -> None:
    if not c.has(INPUT_WEIGHTS):
        raise c.fail("coupled input and forget gates (CIFG) are not supported")
    if any(c.has(i) for i in PROJECTION_AND_NORMS):
        raise c.fail("projection and layer-normalised LSTMs are not supported")
    if float(c.opt("CellClip", 0.0)) or float(c.opt("ProjClip", 0.0)):
        raise c.fail("cell and projection clipping are not supported")
    act = int(c.opt("FusedActivationFunction", 4))
    if act not in ACTIVATIONS:
        raise c.fail(f"fused activation {act} (only TANH and RELU)")
    hidden = c.t(INPUT_WEIGHTS + 1).shape[0]

    def stacked(first: int, gates: tuple[int, ...] = IOFC) -> str:
        """Gate tensors ``first + k`` stacked in ONNX order under a leading direction axis."""
        return c.one("Unsqueeze", [c.one("Concat", [c.x(first + k) for k in gates], axis=0), c.ints_init([0])])

    ins = [c.x(0), stacked(INPUT_WEIGHTS), stacked(RECURRENT_WEIGHTS)]
    recurrent_bias = c.em.init(np.zeros(4 * hidden, np.float32), c.hint + ":recurrent_bias")  # TFLite has one bias
    bias = c.one("Concat", [c.x(BIASES + k) for k in IOFC] + [recurrent_bias], axis=0)
    ins.append(c.one("Unsqueeze", [bias, c.ints_init([0])]))
    ins.append("")  # sequence_lens: every sequence runs its full length
    ins += [c.one("Unsqueeze", [c.x(i), c.ints_init([0])]) for i in (OUTPUT_STATE, CELL_STATE)]
    if c.has(PEEPHOLES):
        ins.append(stacked(PEEPHOLES, (0, 2, 1)))  # ONNX peepholes: input, output, forget
    batch_first = not c.opt("TimeMajor", False)
    (y,) = c.node("LSTM", ins, 1, hidden_size=hidden, layout=int(batch_first),
                  activations=ACTIVATIONS[act])
    # Y is (batch, seq, 1, hidden) batch-first, else (seq, 1, batch, hidden): drop the direction
    c.out(c.one("Squeeze", [y, c.ints_init([2 if batch_first else 1])]))
