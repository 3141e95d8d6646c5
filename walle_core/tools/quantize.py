"""Post-training static quantization to a QDQ model (``walle quantize``), without onnxruntime.

1. The float model runs on Walle over the calibration inputs with every tensor to quantize made
   a graph output; a :class:`~walle_core.tools.calibration.RangeObserver` turns what it sees into
   ranges (min/max, percentile or entropy).
2. Activations get uint8 ``QuantizeLinear -> DequantizeLinear`` pairs (asymmetric), constant
   weights of Conv / MatMul / Gemm become int8 initializers (symmetric, per tensor or per output
   channel) behind a DequantizeLinear, biases int32 with scale ``x_scale * w_scale``. Ops that
   only move values (pooling by max, reshapes, nearest resize) keep their input's parameters, so
   Walle's QDQ rewrite runs them on the int8 tensor directly; a Conv / MatMul / Gemm followed by
   its only reader Relu / Clip is quantized after the activation (fused into the requantisation).
3. :func:`accuracy` compares the quantized model with the float one on the calibration inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from walle_core.errors import InputError
from walle_core.runtime.model import load
from walle_core.tools.calibration import RangeObserver, int8_weight_scales, uint8_params

Feeds = dict[str, np.ndarray]
Progress = Callable[[str, int, int], None]  # (phase, done, total)

# ops whose float inputs and outputs are quantized
COMPUTE = frozenset("""Conv MatMul Gemm Add Mul Concat AveragePool GlobalAveragePool Sigmoid
    HardSwish HardSigmoid LeakyRelu Tanh Relu Clip Softmax""".split())
# ops that only move or select values: the output keeps the input's parameters
MOVE = frozenset("MaxPool GlobalMaxPool Reshape Flatten Transpose Squeeze Unsqueeze Resize Slice".split())
WEIGHTED = {"Conv": 1, "MatMul": 1, "Gemm": 1}
FUSED_ACT = ("Relu", "Clip")


@dataclass
class QuantizeOptions:
    method: str = "minmax"
    per_channel: bool = False


@dataclass
class QuantizeResult:
    model: onnx.ModelProto
    activations: int  # tensors with a Q/DQ pair
    weights: int  # quantized weight initializers
    skipped: list[str] = field(default_factory=list)  # why some tensors stayed float


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    found = {v.name for v in (*g.value_info, *g.input, *g.output)
             if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    return found - {i.name for i in g.initializer}


def _plan(model: onnx.ModelProto) -> tuple[list[str], dict[str, str]]:
    """Activation tensors to quantize, and tensors that share another's parameters (a move op's
    output -> its input)."""
    g = model.graph
    floats = _float_tensors(model)
    inits = {i.name for i in g.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    wanted: list[str] = []
    shared: dict[str, str] = {}
    outputs = {o.name for o in g.output}
    # a Conv / MatMul / Gemm output whose only reader is a Relu / Clip: quantized after it
    fused = {n.output[0] for n in g.node if n.op_type in WEIGHTED
             and len(readers.get(n.output[0], [])) == 1
             and readers[n.output[0]][0].op_type in FUSED_ACT and n.output[0] not in outputs}

    def want(name: str) -> None:
        if name and name in floats and name not in inits and name not in wanted and name not in fused:
            wanted.append(name)

    for n in g.node:
        if n.domain not in ("", "ai.onnx"):
            continue
        if n.op_type in COMPUTE:
            for i in n.input[: 2 if n.op_type in WEIGHTED else len(n.input)]:
                if i not in inits:
                    want(i)
            want(n.output[0])
        elif n.op_type in MOVE and n.input[0] in floats:
            want(n.input[0])
            if n.output[0] in floats:
                shared[n.output[0]] = n.input[0]
                want(n.output[0])
    return wanted, shared


def _feeds_of(batches: Iterable[Feeds]) -> list[Feeds]:
    feeds = list(batches)
    if not feeds:
        raise InputError("calibration needs at least one input batch")
    return feeds


def calibrate(model: onnx.ModelProto, names: Sequence[str], batches: Sequence[Feeds], method: str,
              backend: str = "auto", progress: Progress | None = None) -> RangeObserver:
    """Run the float model on ``batches`` and observe ``names``."""
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    present = {o.name for o in aug.graph.output}
    for name in names:
        if name not in present:
            aug.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    runner = load(aug.SerializeToString(), backend=backend)
    obs = RangeObserver(method)
    passes = 2 if obs.needs_histograms else 1
    for p in range(passes):
        if p == 1:
            obs.start_histograms()
        for i, feeds in enumerate(batches):
            outs = runner.run(feeds)
            for name in names:
                obs.observe(name, outs[name])
            if progress:
                progress("calibrating" if p == 0 else "histograms", i + 1, len(batches))
    return obs


def _weight_axis(node: onnx.NodeProto, ndim: int) -> int:
    """The output-channel axis of a weight: Conv's 0, MatMul's last, Gemm's by transB."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        return 0 if trans_b else 1
    return ndim - 1


def quantize(model: onnx.ModelProto, batches: Iterable[Feeds], options: QuantizeOptions | None = None,
             backend: str = "auto", progress: Progress | None = None) -> QuantizeResult:
    """The QDQ model of ``model`` calibrated on ``batches``."""
    options = options or QuantizeOptions()
    feeds = _feeds_of(batches)
    wanted, shared = _plan(model)
    obs = calibrate(model, wanted, feeds, options.method, backend, progress)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 13)
    per_channel = options.per_channel and opset >= 13
    result = QuantizeResult(out, 0, 0)
    if options.per_channel and not per_channel:
        result.skipped.append(f"per-channel weights need opset 13 (the model has {opset}): per tensor")
    params: dict[str, tuple[np.float32, np.uint8]] = {}
    for name in wanted:
        base = shared.get(name)
        while base in shared and base not in params:
            base = shared[base]
        params[name] = params[base] if base in params else uint8_params(*obs.range(name))
    inits = {i.name: i for i in g.initializer}
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        new_inits.append(numpy_helper.from_array(value, name))
        return name

    # weights and biases of Conv / MatMul / Gemm whose input is quantized
    for node in g.node:
        if node.op_type not in WEIGHTED or len(node.input) < 2 or node.input[1] not in inits:
            continue
        x = node.input[0]
        if x not in params:
            result.skipped.append(f"{node.name or node.op_type}: input {x!r} not quantized")
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        if node.op_type != "Conv" and w.ndim != 2:
            continue
        axis = _weight_axis(node, w.ndim) if per_channel else None
        ws = int8_weight_scales(w, axis)
        shape = [-1 if i == axis else 1 for i in range(w.ndim)] if axis is not None else []
        wq = np.clip(np.rint(w / ws.reshape(shape) if shape else w / ws), -127, 127).astype(np.int8)
        wname = node.input[1]
        new_nodes.append(_dequantize(
            [const(f"{wname}_q", wq), const(f"{wname}_wscale", ws),
             const(f"{wname}_wzero", np.zeros(ws.shape, np.int8))], f"{wname}_dq", axis))
        node.input[1] = f"{wname}_dq"
        result.weights += 1
        if len(node.input) > 2 and node.input[2] in inits:
            b = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
            bs = (params[x][0] * ws).astype(np.float32).reshape(-1)
            bq = np.rint(b / (bs if bs.size > 1 else bs[0])).astype(np.int32)
            bname = node.input[2]
            per = bs.size > 1
            new_nodes.append(_dequantize(
                [const(f"{bname}_q", bq), const(f"{bname}_bscale", bs if per else bs.reshape(())),
                 const(f"{bname}_bzero", np.zeros(bs.shape if per else (), np.int32))],
                f"{bname}_dq", 0 if per else None))
            node.input[2] = f"{bname}_dq"
    # activations: Q -> DQ on each; a produced tensor's producer now writes NAME_f and the DQ
    # writes NAME, a graph input is read by the Q and its readers read NAME_dq
    graph_inputs = {i.name for i in g.input}
    for name, (scale, zero) in params.items():
        s = const(f"{name}_scale", np.array(scale, np.float32))
        z = const(f"{name}_zero", np.array(zero, np.uint8))
        if name in graph_inputs:
            src, dst = name, f"{name}_dq"
            for node in g.node:
                for k, i in enumerate(node.input):
                    if i == name:
                        node.input[k] = dst
        else:
            src, dst = f"{name}_f", name
            for node in g.node:
                for k, o in enumerate(node.output):
                    if o == name:
                        node.output[k] = src
        new_nodes.append(helper.make_node("QuantizeLinear", [src, s, z], [f"{name}_q"], name=f"{name}_Q"))
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", s, z], [dst], name=f"{name}_DQ"))
        result.activations += 1
    used = {i for n in [*g.node, *new_nodes] for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend([*keep, *new_inits])
    nodes = [*new_nodes, *g.node]
    del g.node[:]
    g.node.extend(_topological(nodes, {i.name for i in g.input} | {i.name for i in g.initializer}))
    if opset < 13 and per_channel:
        raise AssertionError("unreachable: per-channel needs opset 13")
    onnx.checker.check_model(out)
    return result


def _dequantize(inputs: list[str], output: str, axis: int | None) -> onnx.NodeProto:
    node = helper.make_node("DequantizeLinear", inputs, [output])
    if axis is not None:
        node.attribute.append(helper.make_attribute("axis", axis))
    return node


def _topological(nodes: Sequence[onnx.NodeProto], known: set[str]) -> list[onnx.NodeProto]:
    """Nodes in an order where every input is produced before it is read."""
    ready = set(known) | {""}
    pending = list(nodes)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise InputError(f"the quantized graph has a cycle or unknown inputs at {rest[0].name!r}")
        pending = rest
    return ordered


@dataclass
class Accuracy:
    """Quantized vs float outputs over the calibration inputs."""

    relative_error: dict[str, float]  # output -> ||q - f|| / ||f||
    top1: dict[str, float]  # classifier outputs (N, classes) -> agreement of argmax


def accuracy(float_model: bytes | Path, quant_model: bytes | Path, batches: Sequence[Feeds],
             backend: str = "auto", progress: Progress | None = None) -> Accuracy:
    f = load(float_model, backend=backend)
    q = load(quant_model, backend=backend)
    num: dict[str, float] = {}
    den: dict[str, float] = {}
    agree: dict[str, list[int]] = {}
    for i, feeds in enumerate(batches):
        yf, yq = f.run(feeds), q.run(feeds)
        for name in f.output_names:
            a, b = np.asarray(yf[name], np.float64), np.asarray(yq[name], np.float64)
            num[name] = num.get(name, 0.0) + float(np.sum((a - b) ** 2))
            den[name] = den.get(name, 0.0) + float(np.sum(a ** 2))
            if a.ndim == 2 and a.shape[1] > 1:
                hits = agree.setdefault(name, [0, 0])
                hits[0] += int(np.sum(a.argmax(1) == b.argmax(1)))
                hits[1] += a.shape[0]
        if progress:
            progress("comparing", i + 1, len(batches))
    return Accuracy({n: float(np.sqrt(num[n] / max(den[n], 1e-30))) for n in num},
                    {n: h[0] / max(h[1], 1) for n, h in agree.items()})


def random_batches(model: onnx.ModelProto, n: int, seed: int = 0) -> list[Feeds]:
    """``n`` standard-normal batches for the model's float inputs (symbolic dims as 1)."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    specs: list[tuple[str, list[int]]] = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if tt.elem_type != TensorProto.FLOAT:
            raise InputError(f"--random makes float inputs only; {vi.name!r} is not float")
        specs.append((vi.name, [d.dim_value if d.dim_value > 0 else 1 for d in tt.shape.dim]))
    return [{name: rng.standard_normal(shape).astype(np.float32) for name, shape in specs}
            for _ in range(n)]


def load_batches(folder: Path, input_names: Sequence[str]) -> list[Feeds]:
    """Calibration inputs from ``folder``: ``.npz`` files (arrays named by input) or, for a
    one-input model, ``.npy`` files; sorted by file name."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".npz", ".npy"))
    if not files:
        raise InputError(f"no .npz or .npy calibration files in {folder}")
    batches: list[Feeds] = []
    for p in files:
        data = np.load(p, allow_pickle=False)
        if isinstance(data, np.ndarray):
            if len(input_names) != 1:
                raise InputError(f"{p.name}: a .npy file feeds a one-input model; use .npz with "
                                 f"arrays named {list(input_names)}")
            batches.append({input_names[0]: data})
        else:
            missing = [n for n in input_names if n not in data.files]
            if missing:
                raise InputError(f"{p.name} lacks inputs {missing}")
            batches.append({n: data[n] for n in input_names})
    return batches


def model_inputs(model: onnx.ModelProto) -> list[str]:
    inits = {i.name for i in model.graph.initializer}
    return [vi.name for vi in model.graph.input if vi.name not in inits]


def as_feeds(batches: Iterable[Mapping[str, np.ndarray]]) -> list[Feeds]:
    return [dict(b) for b in batches]
