"""TFLite's detection post-processing custom op and BITCAST.

``TFLite_Detection_PostProcess`` (SSD heads: box encodings ``[1, N, >=4]``, class scores
``[1, N, classes (+1 background)]``, anchors ``[N, 4]``) becomes ONNX ops:

* decode: ``yc = y / y_scale * ah + ay``, ``half_h = 0.5 * exp(h / h_scale) * ah`` (x, w alike),
  boxes ``(yc - half_h, xc - half_w, yc + half_h, xc + half_w)``, in TFLite's order of float ops;
* per anchor its ``K = min(max_classes_per_detection, classes)`` best classes (``TopK``), the
  background column skipped; the anchor's score is its best class's;
* the fast (class-agnostic) greedy NMS over the candidates in decreasing score (a stable
  ``TopK``: ties keep the lower anchor first, as TFLite's stable sort does) whose score is
  ``>= nms_score_threshold``: the first candidate not yet selected or suppressed is selected and
  suppresses every box whose IoU with it exceeds ``nms_iou_threshold`` (IoU 0 where either area
  is <= 0). An ONNX ``Loop`` runs one iteration per selected box (the first open candidate is an
  ``ArgMax``), at most ``max_detections``, so suppressed candidates cost no iteration and the
  N x N IoU matrix is never built;
* outputs: ``max_classes_per_detection`` slots per selected box, its K best classes in the
  first K: ``[1, M*max_classes_per_detection, 4]`` boxes, ``[1, M*max_classes_per_detection]``
  classes (float, background excluded) and scores, ``[1]`` the number of selected boxes. Slots
  without a detection are zero (LiteRT leaves them as its buffers held them).

With ``use_regular_nms`` the NMS runs per class instead (each class's candidates greedily, at
most ``detections_per_class`` each, all classes as rows of the same Loop), and the
``max_detections`` best selections by score are the detections, one class each.

``BITCAST`` of a constant is folded at load (the bytes reinterpreted, as TFLite does: a smaller
output element adds a trailing axis, a larger one removes it); of a run-time tensor it is refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from walle_core.frontend.tflite.context import OpContext, maps
from walle_core.frontend.tflite.convert import OPSET, Const
from walle_core.ir.graph import Graph, Node, TensorType, ValueInfo

_F32 = np.dtype(np.float32)


def _options(c: OpContext) -> dict[str, Any]:
    from flatbuffers import flexbuffers  # type: ignore[import-untyped]

    try:
        opts = flexbuffers.Loads(c.op.custom_options)
    except Exception as exc:  # any decoding failure is a bad model
        raise c.fail(f"custom options are not a flexbuffer map ({type(exc).__name__})") from exc
    if not isinstance(opts, dict):
        raise c.fail("custom options are not a flexbuffer map")
    return opts


class _Body:
    """Nodes and initializers of the NMS loop's body graph (names from the model's name set)."""

    def __init__(self, c: OpContext) -> None:
        self.c = c
        self.nodes: list[Node] = []
        self.inits: dict[str, np.ndarray] = {}

    def fresh(self, base: str) -> str:
        return self.c.em.fresh(f"{self.c.hint}:nms:{base}")

    def one(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        out = self.fresh(op_type.lower())
        self.nodes.append(Node(op_type, inputs, [out], attrs, out))
        return out

    def const(self, value: Any, dtype: Any) -> str:
        name = self.fresh("const")
        self.inits[name] = np.asarray(value, dtype)
        return name


def _iou_row(b: _Body, box: list[str], cols: list[str], area: str) -> str:
    """IoU of one box (four scalars and its area, ``box``) with every sorted box (``cols``,
    ``area``), as TFLite computes it: intersection / (area_i + area_j - intersection), 0 where
    either area is <= 0."""
    y0, x0, y1, x1 = cols
    by0, bx0, by1, bx1, barea = box
    zero = b.const(0.0, _F32)
    ih = b.one("Max", [b.one("Sub", [b.one("Min", [by1, y1]), b.one("Max", [by0, y0])]), zero])
    iw = b.one("Max", [b.one("Sub", [b.one("Min", [bx1, x1]), b.one("Max", [bx0, x0])]), zero])
    inter = b.one("Mul", [ih, iw])
    union = b.one("Sub", [b.one("Add", [barea, area]), inter])
    pos = b.one("And", [b.one("Greater", [barea, zero]), b.one("Greater", [area, zero])])
    safe = b.one("Where", [pos, union, b.const(1.0, _F32)])
    return b.one("Where", [pos, b.one("Div", [inter, safe]), zero])


def _greedy(c: OpContext, cols: list[str], areas: str, valid: str, r: int, n: int, rounds: int,
            iou_thr: float) -> tuple[str, str]:
    """Greedy NMS on r rows of n score-sorted candidates at once (``cols``: ymin, xmin, ymax, xmax,
    each (r, n); ``valid``: above the score threshold): a Loop whose iteration selects, in every
    row with an open candidate (valid, neither selected nor suppressed), the first one, and closes
    the boxes it overlaps by more than ``iou_thr``; at most ``rounds`` iterations, ending when no
    row has an open candidate. Returns the selected positions (r, rounds) and counts (r,)."""
    body = _Body(c)
    i, cond_in = body.fresh("i"), body.fresh("cond")
    open_, sel, cnt = body.fresh("open"), body.fresh("selected"), body.fresh("count")
    flags = body.one("Cast", [open_], to=6)
    live = body.one("Greater", [body.one("ReduceMax", [flags, body.const([1], np.int64)], keepdims=0),
                                body.const(0, np.int32)])  # (r,)
    first = body.one("ArgMax", [flags], axis=1, keepdims=1)  # (r, 1) sorted positions
    box = [body.one("GatherElements", [v, first], axis=1) for v in (*cols, areas)]
    iou = _iou_row(body, box, cols, areas)
    closed = body.one("Or", [body.one("Greater", [iou, body.const(iou_thr, _F32)]),
                             body.one("Equal", [body.const(np.arange(n), np.int64), first])])
    still = body.one("And", [open_, body.one("Not", [closed])])
    more = body.one("Greater", [body.one("ReduceMax", [body.one("Cast", [still], to=6)], keepdims=0),
                                body.const(0, np.int32)])
    slot = body.one("And", [body.one("Equal", [body.const(np.arange(rounds), np.int64), i]),
                            body.one("Unsqueeze", [live, body.const([1], np.int64)])])
    outs = [body.one("And", [more, body.one("Less", [body.one("Add", [i, body.const(1, np.int64)]),
                                                     body.const(rounds, np.int64)])]),
            still, body.one("Where", [slot, first, sel]), body.one("Add", [cnt, body.one("Cast", [live], to=7)])]
    final = [body.one("Identity", [o]) for o in outs]
    scalar_i64, scalar_b = TensorType(np.dtype(np.int64), ()), TensorType(np.dtype(np.bool_), ())
    state = [TensorType(np.dtype(np.bool_), (r, n)), TensorType(np.dtype(np.int64), (r, rounds)),
             TensorType(np.dtype(np.int64), (r,))]
    graph = Graph(body.nodes, [ValueInfo(i, scalar_i64), ValueInfo(cond_in, scalar_b),
                               *(ValueInfo(v, t) for v, t in zip((open_, sel, cnt), state, strict=True))],
                  [ValueInfo(o, t) for o, t in zip(final, [scalar_b, *state], strict=True)],
                  body.inits, OPSET, c.hint + ":nms")
    init = [valid, c.em.init(np.zeros((r, rounds), np.int64), c.hint + ":selected0"),
            c.em.init(np.zeros(r, np.int64), c.hint + ":count0")]
    go = c.one("Greater", [c.one("ReduceMax", [c.one("Cast", [valid], to=6)], keepdims=0),
                           c.em.init(np.asarray(0, np.int32), c.hint + ":none")])
    _, picked, count = c.node("Loop", [c.em.init(np.asarray(rounds, np.int64), c.hint + ":max"), go, *init], 3,
                              body=graph)
    return picked, count


@maps("CUSTOM:TFLite_Detection_PostProcess")
def detection_postprocess(c: OpContext) -> None:
    opts = _options(c)
    regular = bool(opts.get("use_regular_nms", False))
    try:
        per_class = int(opts.get("detections_per_class", 100))
        m = int(opts["max_detections"])
        k_max = int(opts.get("max_classes_per_detection", 1))
        classes = int(opts["num_classes"])
        score_thr = float(np.float32(opts["nms_score_threshold"]))
        iou_thr = float(np.float32(opts["nms_iou_threshold"]))
        scales = [np.float32(opts[f"{a}_scale"]) for a in "yxhw"]
    except (KeyError, TypeError, ValueError) as exc:
        raise c.fail(f"custom option missing or not a number: {exc}") from exc
    if len(c.op.inputs) != 3 or len(c.op.outputs) != 4:
        raise c.fail(f"{len(c.op.inputs)} inputs and {len(c.op.outputs)} outputs, expected 3 and 4")
    enc_t, score_t, anchor_t = c.t(0), c.t(1), c.t(2)
    if len(enc_t.shape) != 3 or enc_t.shape[0] != 1 or enc_t.shape[2] < 4 or len(score_t.shape) != 3 \
            or tuple(score_t.shape[:2]) != tuple(enc_t.shape[:2]) or tuple(anchor_t.shape) != (enc_t.shape[1], 4):
        raise c.fail(f"box encodings {list(enc_t.shape)}, class scores {list(score_t.shape)}, "
                     f"anchors {list(anchor_t.shape)}: expected [1,N,>=4], [1,N,classes(+1)], [N,4]")
    n, with_bg = int(enc_t.shape[1]), int(score_t.shape[2])
    offset = with_bg - classes
    k = min(k_max, classes)
    if classes < 1 or offset < 0 or m < 1 or k < 1 or n < 1:
        raise c.fail(f"{classes} classes for {with_bg} score columns, max_detections {m}, "
                     f"max_classes_per_detection {k_max}, {n} anchors")
    size = m * k_max  # LiteRT's output size; detections are packed K (<= k_max) per box
    for j, shape in enumerate(([1, size, 4], [1, size], [1, size], [1])):
        if list(c.out_t(j).shape) != shape:
            raise c.fail(f"output {j} has shape {list(c.out_t(j).shape)}, expected {shape}")

    one = c.one
    ints = c.ints_init

    def col(src: str, i: int) -> str:  # column i of an (N, E) tensor, as (N,)
        return one("Squeeze", [one("Slice", [src, ints([i]), ints([i + 1]), ints([1])]), ints([1])])

    enc = one("Reshape", [c.x(0), ints([n, int(enc_t.shape[2])])])
    anchors = c.x(2)
    ay, ax, ah, aw = (col(anchors, i) for i in range(4))
    ey, ex, eh, ew = (col(enc, i) for i in range(4))
    sy, sx, sh, sw = (c.scalar(float(s)) for s in scales)
    half = c.scalar(0.5)
    yc = one("Add", [one("Mul", [one("Div", [ey, sy]), ah]), ay])
    xc = one("Add", [one("Mul", [one("Div", [ex, sx]), aw]), ax])
    hh = one("Mul", [one("Mul", [half, one("Exp", [one("Div", [eh, sh])])]), ah])
    hw = one("Mul", [one("Mul", [half, one("Exp", [one("Div", [ew, sw])])]), aw])
    corners = [one("Sub", [yc, hh]), one("Sub", [xc, hw]), one("Add", [yc, hh]), one("Add", [xc, hw])]
    boxes = one("Concat", [one("Unsqueeze", [v, ints([1])]) for v in corners], axis=1)  # (N, 4)

    scores = one("Reshape", [c.x(1), ints([n, with_bg])])
    if offset:
        scores = one("Slice", [scores, ints([offset]), ints([with_bg]), ints([1])])
    if regular:
        _regular(c, scores, boxes, corners, n, classes, min(per_class, m), m, size, score_thr, iou_thr)
        return
    if k == 1:  # a max and its index, without sorting every anchor's classes
        top_v = one("ReduceMax", [scores, ints([1])], keepdims=1)
        top_i = one("ArgMax", [scores], axis=1, keepdims=1)
    else:
        top_v, top_i = c.node("TopK", [scores, ints([k])], 2, axis=1, largest=1, sorted=1)  # (N, K)
    best = one("Reshape", [col(top_v, 0), ints([1, n])])
    sorted_s, order = c.node("TopK", [best, ints([n])], 2, axis=1, largest=1, sorted=1)  # (1, N)
    valid = one("GreaterOrEqual", [sorted_s, c.scalar(score_thr)])
    sorted_cols = [one("Gather", [v, order], axis=0) for v in corners]  # (1, N) each
    areas = one("Mul", [one("Sub", [sorted_cols[2], sorted_cols[0]]), one("Sub", [sorted_cols[3], sorted_cols[1]])])
    picked, count = _greedy(c, sorted_cols, areas, valid, 1, n, m, iou_thr)
    picked, count = one("Reshape", [picked, ints([m])]), one("Reshape", [count, ints([])])
    order = one("Reshape", [order, ints([n])])

    anchor_of = one("Gather", [order, picked], axis=0)  # (M,) anchors of the selected boxes
    live = one("Less", [c.em.init(np.arange(m, dtype=np.int64), c.hint + ":rows"), count])  # (M,)
    fzero = c.scalar(0.0)
    rows = one("Unsqueeze", [live, ints([1])])  # (M, 1)
    sel_boxes = one("Where", [rows, one("Gather", [boxes, anchor_of], axis=0), fzero])  # (M, 4)
    sel_boxes = one("Expand", [one("Unsqueeze", [sel_boxes, ints([1])]), ints([m, k, 4])])
    sel_cls = one("Where", [rows, one("Cast", [one("Gather", [top_i, anchor_of], axis=0)], to=1), fzero])
    sel_scores = one("Where", [rows, one("Gather", [top_v, anchor_of], axis=0), fzero])
    for j, (v, last) in enumerate(((sel_boxes, [4]), (sel_cls, []), (sel_scores, []))):
        if k < k_max:  # each box keeps k_max slots, K of them filled
            v = one("Pad", [v, ints([0, 0, *([0] * len(last)), 0, k_max - k, *([0] * len(last))])])
        c.out(one("Reshape", [v, ints([1, size, *last])]), j=j)
    c.out(one("Reshape", [one("Cast", [count], to=1), ints([1])]), j=3)


def _regular(c: OpContext, scores: str, boxes: str, corners: list[str], n: int, classes: int, per_class: int,
             m: int, size: int, score_thr: float, iou_thr: float) -> None:
    """The per-class NMS: every class's candidates (score >= threshold, decreasing) greedily, at
    most ``per_class`` each, all classes in one Loop; then the ``m`` best of all selections by
    score, one class per detection."""
    one, ints = c.one, c.ints_init
    rows = one("Transpose", [scores], perm=[1, 0])  # (classes, N)
    sorted_s, order = c.node("TopK", [rows, ints([n])], 2, axis=1, largest=1, sorted=1)
    valid = one("GreaterOrEqual", [sorted_s, c.scalar(score_thr)])
    cols = [one("Gather", [v, order], axis=0) for v in corners]  # (classes, N) each
    areas = one("Mul", [one("Sub", [cols[2], cols[0]]), one("Sub", [cols[3], cols[1]])])
    picked, count = _greedy(c, cols, areas, valid, classes, n, per_class, iou_thr)
    ok = one("Less", [c.em.init(np.arange(per_class, dtype=np.int64), c.hint + ":slots"),
                      one("Unsqueeze", [count, ints([1])])])  # (classes, per_class)
    score = one("Where", [ok, one("GatherElements", [sorted_s, picked], axis=1), c.scalar(-np.inf)])
    anchor = one("Reshape", [one("GatherElements", [order, picked], axis=1), ints([classes * per_class])])
    kk = min(m, classes * per_class)
    best, where = c.node("TopK", [one("Reshape", [score, ints([classes * per_class])]), ints([kk])], 2,
                         axis=0, largest=1, sorted=1)
    total = one("Min", [one("ReduceSum", [count, ints([0])], keepdims=0), c.em.init(np.asarray(m, np.int64), c.hint + ":m")])
    live = one("Unsqueeze", [one("Less", [c.em.init(np.arange(kk, dtype=np.int64), c.hint + ":rows"), total]), ints([1])])
    fzero = c.scalar(0.0)
    cls = one("Cast", [one("Div", [where, c.em.init(np.asarray(per_class, np.int64), c.hint + ":per")])], to=1)
    outs = [one("Where", [live, one("Gather", [boxes, one("Gather", [anchor, where], axis=0)], axis=0), fzero]),
            one("Where", [live, one("Unsqueeze", [cls, ints([1])]), fzero]),
            one("Where", [live, one("Unsqueeze", [best, ints([1])]), fzero])]  # (kk, 4), (kk, 1), (kk, 1)
    for j, (v, last) in enumerate(((outs[0], [4]), (outs[1], []), (outs[2], []))):
        if kk < size:
            v = one("Pad", [v, ints([0, 0, size - kk, 0])])
        c.out(one("Reshape", [v, ints([1, size, *last])]), j=j)
    c.out(one("Reshape", [one("Cast", [total], to=1), ints([1])]), j=3)


@maps("BITCAST")
def bitcast(c: OpContext) -> None:
    src, out = c.t(0), c.out_t()
    value = c.em.consts.get(src.index) if c.is_const(0) else None
    if value is None or value.quant is not None or out.dtype is None:
        raise c.fail("BITCAST of a tensor computed at run time (only constants are reinterpreted, at load)")
    raw = np.ascontiguousarray(value.raw)
    a, b = raw.dtype.itemsize, np.dtype(out.dtype).itemsize
    if a > b:
        shape = (*raw.shape, a // b)
    elif a < b:
        if not raw.shape or raw.shape[-1] != b // a:
            raise c.fail(f"BITCAST of {raw.dtype}{list(raw.shape)} to {out.dtype}: the last axis must be {b // a}")
        shape = raw.shape[:-1]
    else:
        shape = raw.shape
    c.em.consts[out.index] = Const(raw.view(out.dtype).reshape(shape), None)
