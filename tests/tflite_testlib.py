"""Shared by the TFLite tests and bench: build .tflite files through the schema's object API,
quantise them with LiteRT's own calibrator, run them on the LiteRT interpreter (the oracle), and
find the real models that MediaPipe's wheel ships.

Generated models are written with the flatbuffers object API that ``ai-edge-litert`` ships
(``schema_py_generated``), an independent code path from the ``tflite`` package Walle reads with.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

MEDIAPIPE_VERSION = "0.10.21"  # the last release whose wheel carries mediapipe/modules/*.tflite
VERSIONS = {"BROADCAST_TO": 2}  # builtin versions LiteRT needs above 1
TYPES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.int32): 2, np.dtype(np.uint8): 3,
         np.dtype(np.int64): 4, np.dtype(np.bool_): 6, np.dtype(np.int16): 7, np.dtype(np.int8): 9}


def schema() -> Any:
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


class ModelBuilder:
    """One subgraph, built tensor by tensor. Output shapes may be left out (``None``): ``build``
    asks the LiteRT interpreter for them and writes them in, as a converter would."""

    def __init__(self) -> None:
        S = schema()
        self.S = S
        self.buffers: list[Any] = [S.BufferT()]
        self.codes: list[tuple[int, str]] = []
        self.signatures: list[tuple[str, int, list[tuple[str, int]], list[tuple[str, int]]]] = []
        self.subgraphs: list[dict[str, list[Any]]] = []
        self.current = self.subgraph()

    def subgraph(self) -> int:
        """Start another subgraph (IF branches, WHILE bodies); tensors and ops go there until
        :meth:`use` picks another. Shapes in subgraphs other than 0 must be given."""
        self.subgraphs.append({"tensors": [], "operators": [], "inputs": [], "outputs": []})
        self.current = len(self.subgraphs) - 1
        return self.current

    def use(self, index: int) -> None:
        self.current = index

    @property
    def tensors(self) -> list[Any]:
        return self.subgraphs[self.current]["tensors"]

    @property
    def operators(self) -> list[Any]:
        return self.subgraphs[self.current]["operators"]

    @property
    def inputs(self) -> list[int]:
        return self.subgraphs[self.current]["inputs"]

    @property
    def outputs(self) -> list[int]:
        return self.subgraphs[self.current]["outputs"]

    def tensor(self, shape: Sequence[int] | None, dtype: Any = np.float32, name: str | None = None,
               data: np.ndarray | None = None, quant: tuple[Any, Any, int] | None = None,
               signature: Sequence[int] | None = None, variable: bool = False) -> int:
        S = self.S
        t = S.TensorT()
        t.isVariable = variable
        t.shape = list(shape) if shape is not None else []
        t.type = TYPES[np.dtype(dtype)]
        t.name = name or f"t{len(self.tensors)}"
        if signature is not None:
            t.shapeSignature = list(signature)
        t.buffer = 0
        if data is not None:
            buf = S.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        if quant is not None:
            q = S.QuantizationParametersT()
            q.scale = list(np.asarray(quant[0], np.float32).reshape(-1))
            q.zeroPoint = list(np.asarray(quant[1], np.int64).reshape(-1))
            q.quantizedDimension = quant[2]
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def input(self, shape: Sequence[int], dtype: Any = np.float32, name: str | None = None,
              signature: Sequence[int] | None = None, quant: tuple[Any, Any, int] | None = None) -> int:
        i = self.tensor(shape, dtype, name, quant=quant, signature=signature)
        self.inputs.append(i)
        return i

    def const(self, value: Any, dtype: Any = None, name: str | None = None,
              quant: tuple[Any, Any, int] | None = None) -> int:
        arr = np.asarray(value, dtype=dtype)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        return self.tensor(arr.shape, arr.dtype, name, data=arr, quant=quant)

    def op(self, name: str, inputs: Sequence[int], options: str | None = None, n_out: int = 1,
           out_dtype: Any = np.float32, out_shapes: Sequence[Sequence[int] | None] | None = None,
           out_quant: tuple[Any, Any, int] | None = None, **fields: Any) -> list[int]:
        """Add builtin op ``name`` (e.g. ``"CONV_2D"``) with ``options`` (e.g. ``"Conv2DOptions"``)
        whose fields are given in the schema's camelCase (``strideW=2``)."""
        S = self.S
        code = getattr(S.BuiltinOperator, name)
        if (code, name) not in self.codes:
            self.codes.append((code, name))
        op = S.OperatorT()
        op.opcodeIndex = self.codes.index((code, name))
        op.inputs = list(inputs)
        shapes = list(out_shapes) if out_shapes is not None else [None] * n_out
        outs = [self.tensor(shapes[k], out_dtype, quant=out_quant) for k in range(n_out)]
        op.outputs = outs
        if options is not None:
            opt = getattr(S, options + "T")()
            for k, v in fields.items():
                if not hasattr(opt, k):
                    raise AttributeError(f"{options} has no field {k}")
                setattr(opt, k, v)
            op.builtinOptionsType = getattr(S.BuiltinOptions, options)
            op.builtinOptions = opt
        self.operators.append(op)
        return outs

    def custom(self, code: str, inputs: Sequence[int], options: bytes,
               out_shapes: Sequence[Sequence[int]], out_dtype: Any = np.float32) -> list[int]:
        """Add custom op ``code`` (e.g. ``"TFLite_Detection_PostProcess"``) with raw custom
        options (a flexbuffer for TFLite's own custom ops)."""
        S = self.S
        key = (S.BuiltinOperator.CUSTOM, code)
        if key not in self.codes:
            self.codes.append(key)
        op = S.OperatorT()
        op.opcodeIndex = self.codes.index(key)
        op.inputs = list(inputs)
        op.outputs = [self.tensor(shape, out_dtype) for shape in out_shapes]
        op.customOptions = list(options)
        self.operators.append(op)
        return list(op.outputs)

    def output(self, *tensors: int) -> None:
        self.outputs.extend(tensors)

    def sign(self, key: str, inputs: Sequence[str], outputs: Sequence[str], subgraph: int = 0) -> None:
        """A signature naming a subgraph's inputs and outputs (in the order they were declared)."""
        parts = self.subgraphs[subgraph]
        self.signatures.append((key, subgraph, list(zip(inputs, parts["inputs"], strict=True)),
                                list(zip(outputs, parts["outputs"], strict=True))))

    def pack(self) -> bytes:
        import flatbuffers

        S = self.S
        subs = []
        for k, parts in enumerate(self.subgraphs):
            sub = S.SubGraphT()
            sub.tensors, sub.operators = parts["tensors"], parts["operators"]
            sub.inputs, sub.outputs, sub.name = parts["inputs"], parts["outputs"], "main" if k == 0 else f"sub{k}"
            subs.append(sub)
        model = S.ModelT()
        model.version = 3
        model.description = "walle test model"
        codes = []
        for code, name in self.codes:
            oc = S.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode = code, min(code, 127)
            oc.version = VERSIONS.get(name, 1)
            if code == S.BuiltinOperator.CUSTOM:
                oc.customCode = name
            codes.append(oc)
        model.operatorCodes, model.subgraphs, model.buffers = codes, subs, self.buffers
        def tmap(pairs: list[tuple[str, int]]) -> list[Any]:
            found = []
            for n, i in pairs:
                m = S.TensorMapT()
                m.name, m.tensorIndex = n, i
                found.append(m)
            return found

        model.signatureDefs = []
        for key, index, ins, outs in self.signatures:
            sd = S.SignatureDefT()
            sd.signatureKey, sd.subgraphIndex = key, index
            sd.inputs, sd.outputs = tmap(ins), tmap(outs)
            model.signatureDefs.append(sd)
        b = flatbuffers.Builder(1024)
        b.Finish(model.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())

    def build(self) -> bytes:
        """The model, with every shape the interpreter infers written into the file."""
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        # Without delegates: a delegate takes intermediate tensors out of the interpreter's view.
        it = Interpreter(model_content=self.pack(),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        it.allocate_tensors()
        main = self.subgraphs[0]["tensors"]
        for d in it.get_tensor_details():
            if d["index"] >= len(main):  # the interpreter's own scratch tensors
                continue
            t = main[d["index"]]
            if not t.shape and len(d["shape"]):
                t.shape = [int(v) for v in d["shape"]]
        return self.pack()


def interpreter(model: bytes, threads: int = 1) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model, num_threads=threads)
    it.allocate_tensors()
    return it


def litert_run(model: bytes, feeds: Sequence[np.ndarray], threads: int = 1) -> list[np.ndarray]:
    """Run on the LiteRT interpreter; ``feeds`` in input order (shapes may differ from the
    file's: the inputs are resized, as for a dynamic batch)."""
    it = interpreter(model, threads)
    details = it.get_input_details()
    if any(tuple(d["shape"]) != f.shape for d, f in zip(details, feeds, strict=True)):
        for d, f in zip(details, feeds, strict=True):
            it.resize_tensor_input(d["index"], list(f.shape))
        it.allocate_tensors()
    for d, f in zip(details, feeds, strict=True):
        it.set_tensor(d["index"], f)
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]


def litert_kernel_sets(model: bytes, feeds: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
    """The outputs of LiteRT's three kernel sets (XNNPACK, builtin, reference), one list each."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    results = []
    for kind in (OpResolverType.AUTO, OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES, OpResolverType.BUILTIN_REF):
        it = Interpreter(model_content=model, experimental_op_resolver_type=kind)
        it.allocate_tensors()
        for d, f in zip(it.get_input_details(), feeds, strict=True):
            it.set_tensor(d["index"], f)
        it.invoke()
        results.append([it.get_tensor(d["index"]) for d in it.get_output_details()])
    return results


def litert_kernel_spread(model: bytes, feeds: Sequence[np.ndarray]) -> list[float]:
    """Per output, the largest max |difference| between LiteRT's kernel sets relative to the
    output's scale: how much float rounding alone moves it."""
    results = litert_kernel_sets(model, feeds)
    return [max(rel_error(a[k], b[k]) for a in results for b in results) for k in range(len(results[0]))]


def random_feeds(model: bytes, seed: int = 0, lo: float = -1.0, hi: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = []
    for d in interpreter(model).get_input_details():
        dt = np.dtype(d["dtype"])
        if dt.kind == "f":
            feeds.append(rng.uniform(lo, hi, d["shape"]).astype(dt))
        elif dt.kind in "iu":
            info = np.iinfo(dt)
            feeds.append(rng.integers(max(info.min, -100), min(info.max, 100), d["shape"], endpoint=True).astype(dt))
        else:
            feeds.append(rng.integers(0, 2, d["shape"]).astype(dt))
    return feeds


def quantize(model: bytes, io: str = "int8", samples: int = 8, seed: int = 0,
             make: Callable[[np.random.Generator, Any], np.ndarray] | None = None,
             activations: str = "int8") -> bytes:
    """Full-integer model from a float one by LiteRT's calibrator (per-channel int8 weights,
    ``activations`` int8 or int16). ``io``: the inputs' and outputs' type — ``"int8"``,
    ``"uint8"`` (QUANTIZE to and from the int8 inside) or ``"float"`` (QUANTIZE / DEQUANTIZE
    at the edges)."""
    from ai_edge_litert import _pywrap_tensorflow_lite_calibration_wrapper as cal

    rng = np.random.default_rng(seed)
    details = interpreter(model).get_input_details()
    wrapper = cal.CalibrationWrapper(model, [], [])
    wrapper.Prepare()
    for _ in range(samples):
        wrapper.FeedTensor([make(rng, d) if make else rng.uniform(-1, 1, d["shape"]).astype(np.float32)
                            for d in details])
    io_type = np.dtype({"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "float": np.float32}[io]).num
    act = np.dtype({"int8": np.int8, "int16": np.int16}[activations])
    bias = np.dtype(np.int64 if act == np.int16 else np.int32)
    # (input type, output type, allow float, activations, bias, per-channel off?, dense per-channel off?)
    return bytes(wrapper.QuantizeModel(io_type, io_type, False, act.num, bias.num, False, False))


def fold_fp16_weights(model: bytes) -> bytes:
    """The same model with DEQUANTIZE-of-fp16 weights replaced by float32 weights (LiteRT's
    calibrator quantises float32 weights only)."""

    S = schema()
    m = S.ModelT.InitFromPackedBuf(model, 0)
    for sub in m.subgraphs:
        kept = []
        for op in sub.operators:
            code = max(m.operatorCodes[op.opcodeIndex].builtinCode, m.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode)
            src = sub.tensors[op.inputs[0]] if op.inputs is not None and len(op.inputs) else None
            if code == S.BuiltinOperator.DEQUANTIZE and src is not None and src.type == 1 \
                    and m.buffers[src.buffer].data is not None and len(m.buffers[src.buffer].data):
                out = sub.tensors[op.outputs[0]]
                half = np.frombuffer(np.asarray(m.buffers[src.buffer].data, np.uint8).tobytes(), np.float16)
                buf = S.BufferT()
                buf.data = np.frombuffer(half.astype(np.float32).tobytes(), np.uint8)
                m.buffers.append(buf)
                out.buffer = len(m.buffers) - 1
                continue
            kept.append(op)
        sub.operators = kept
    used = sorted({op.opcodeIndex for sub in m.subgraphs for op in sub.operators})
    for sub in m.subgraphs:
        for op in sub.operators:
            op.opcodeIndex = used.index(op.opcodeIndex)
    m.operatorCodes = [m.operatorCodes[i] for i in used]
    return _repack(m)


def _repack(m: Any) -> bytes:
    import flatbuffers

    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def builtin_transpose_conv(model: bytes) -> bytes:
    """The same model with MediaPipe's custom ``Convolution2DTransposeBias`` replaced by the
    builtin TRANSPOSE_CONV (output shape, weights, input, bias), which LiteRT runs."""
    S = schema()
    m = S.ModelT.InitFromPackedBuf(model, 0)
    custom = [i for i, oc in enumerate(m.operatorCodes) if oc.customCode in (b"Convolution2DTransposeBias",
                                                                              "Convolution2DTransposeBias")]
    oc = S.OperatorCodeT()
    oc.builtinCode = oc.deprecatedBuiltinCode = S.BuiltinOperator.TRANSPOSE_CONV
    oc.version = 3
    m.operatorCodes.append(oc)
    for sub in m.subgraphs:
        for op in sub.operators:
            if op.opcodeIndex not in custom:
                continue
            padding, stride_w, stride_h = (int(v) for v in np.frombuffer(bytes(op.customOptions[:12]), "<i4"))
            shape = S.TensorT()
            shape.shape, shape.type, shape.name = [4], 2, f"output_shape_{op.outputs[0]}"
            buf = S.BufferT()
            buf.data = np.frombuffer(np.asarray(sub.tensors[op.outputs[0]].shape, np.int32).tobytes(), np.uint8)
            m.buffers.append(buf)
            shape.buffer = len(m.buffers) - 1
            sub.tensors.append(shape)
            opt = S.TransposeConvOptionsT()
            opt.padding = 0 if padding == 1 else 1
            opt.strideW, opt.strideH = stride_w, stride_h
            x, w, bias = op.inputs
            op.opcodeIndex = len(m.operatorCodes) - 1
            op.inputs = [len(sub.tensors) - 1, w, x, bias]
            op.customOptions = None
            op.builtinOptionsType = S.BuiltinOptions.TransposeConvOptions
            op.builtinOptions = opt
    return _repack(m)


def mediapipe_models() -> Path | None:
    """The folder of ``.tflite`` files MediaPipe's wheel ships (``mediapipe/modules``): an
    installed ``mediapipe`` that carries them, else the copy ``scripts/setup.sh`` unpacked into
    the venv (tests never reach the network). None when neither is there."""
    try:
        import mediapipe  # type: ignore[import-not-found]

        modules = Path(mediapipe.__file__).parent / "modules"
        if any(modules.rglob("*.tflite")):
            return modules
    except ImportError:
        pass
    root = Path(sys.prefix) / "share" / "walle" / f"mediapipe-{MEDIAPIPE_VERSION}"
    return root if (root / ".complete").is_file() else None


def rel_error(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| relative to the reference's scale."""
    assert got.shape == ref.shape, f"shape {got.shape} != {ref.shape}"
    err = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)), initial=0.0))
    return err / max(float(np.max(np.abs(ref.astype(np.float64)), initial=0.0)), 1e-6)


def lsb_error(got: np.ndarray, ref: np.ndarray) -> int:
    """Largest difference of two quantised outputs, in steps of the stored type."""
    assert got.shape == ref.shape and got.dtype == ref.dtype, f"{got.dtype}{got.shape} != {ref.dtype}{ref.shape}"
    return int(np.max(np.abs(got.astype(np.int64) - ref.astype(np.int64)), initial=0))


def buffers_after_flatbuffer(model: bytes, align: int = 16) -> bytes:
    """The same model in the layout of models over 2 GB: every constant's bytes appended after
    the flatbuffer, its Buffer holding only their file offset and size."""
    S = schema()
    m = S.ModelT.InitFromPackedBuf(model, 0)
    payloads = {i: bytes(np.asarray(b.data, np.uint8)) for i, b in enumerate(m.buffers)
                if b.data is not None and len(b.data)}
    for i in payloads:
        m.buffers[i].data = None
        m.buffers[i].offset, m.buffers[i].size = 2**40, 1  # placeholders: fixed-size fields
    head = _repack(m)
    blob, offsets = b"", {}
    start = -(-len(head) // align) * align
    for i, data in payloads.items():
        offsets[i] = start + len(blob)
        blob += data + b"\0" * (-len(data) % align)
    for i, data in payloads.items():
        m.buffers[i].offset, m.buffers[i].size = offsets[i], len(data)
    head = _repack(m)
    assert len(head) <= start, "repacking with the real offsets changed the flatbuffer's size"
    return head + b"\0" * (start - len(head)) + blob
