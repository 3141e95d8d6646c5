"""ONNX front end: ModelProto -> Walle's high-level IR (``walle_core.ir.graph``).

Only parsing happens here; every op's meaning lives in ``walle_core.decompose``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from walle_core import dtypes
from walle_core.errors import ModelLoadError, UnsupportedOpError, WalleError
from walle_core.ir.graph import Dim, Graph, Node, TensorType, ValueInfo, remove_dead_nodes

MIN_OPSET = 7


def _onnx() -> Any:
    import onnx

    return onnx


def max_opset() -> int:
    """The newest default-domain opset the installed ``onnx`` package defines."""
    return int(_onnx().defs.onnx_opset_version())


def read_model_proto(model: str | Path | bytes | Any) -> Any:
    onnx = _onnx()
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        if isinstance(model, bytes | bytearray):
            proto = onnx.load_from_string(bytes(model))
        else:
            path = Path(model)
            if not path.is_file():
                raise ModelLoadError(f"model file not found: {path}")
            proto = onnx.load(str(path), load_external_data=False)
            if any(_uses_external(t) for t in _all_initializers(proto.graph)):
                onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except WalleError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    if not proto.graph.node and not proto.graph.output:
        raise ModelLoadError("not an ONNX model: the graph is empty (corrupt or not ONNX?)")
    return proto


def _all_initializers(graph: Any) -> list[Any]:
    found = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                found += _all_initializers(attr.g)
            for g in attr.graphs:
                found += _all_initializers(g)
    return found


def _uses_external(tensor: Any) -> bool:
    return bool(tensor.data_location == 1)  # TensorProto.EXTERNAL


def tensor_to_array(tensor: Any) -> np.ndarray:
    from onnx import numpy_helper

    try:
        arr = numpy_helper.to_array(tensor)
    except Exception as exc:
        raise ModelLoadError(f"cannot decode tensor {tensor.name!r}: {exc}") from None
    if arr.dtype not in dtypes.SUPPORTED and arr.dtype.kind not in "OUS":
        raise ModelLoadError(f"tensor {tensor.name!r} has unsupported dtype {arr.dtype}")
    return np.asarray(arr, order="C")  # keeps 0-d tensors 0-d (ascontiguousarray would not)


def _type_of(vi: Any) -> TensorType | None:
    t = vi.type
    if not t.HasField("tensor_type"):
        return None
    tt = t.tensor_type
    dtype = dtypes.from_onnx(tt.elem_type) if tt.elem_type else np.dtype(np.float32)
    if not tt.HasField("shape"):
        return TensorType(dtype, None)
    return TensorType(dtype, tuple(_dim(d) for d in tt.shape.dim))


def _dim(d: Any) -> Dim:
    """One declared dim: a size, a symbol, or unknown. Exporters write ``-1`` (PaddlePaddle,
    some TensorFlow converters) or ``0`` for a dynamic dim, and an empty ``dim_param`` or no
    field at all for an unknown one; all of them mean "any size" here."""
    if d.HasField("dim_value"):
        return int(d.dim_value) if d.dim_value > 0 else None
    if d.HasField("dim_param") and d.dim_param:
        return str(d.dim_param)
    return None


def _attr_value(attr: Any, opset: int) -> Any:
    onnx = _onnx()
    A = onnx.AttributeProto
    kind = attr.type
    if kind == A.FLOAT:
        return float(attr.f)
    if kind == A.INT:
        return int(attr.i)
    if kind == A.STRING:
        return attr.s.decode("utf-8", "replace")
    if kind == A.TENSOR:
        return tensor_to_array(attr.t)
    if kind == A.GRAPH:
        return convert_graph(attr.g, opset)
    if kind == A.FLOATS:
        return [float(v) for v in attr.floats]
    if kind == A.INTS:
        return [int(v) for v in attr.ints]
    if kind == A.STRINGS:
        return [s.decode("utf-8", "replace") for s in attr.strings]
    if kind == A.TENSORS:
        return [tensor_to_array(t) for t in attr.tensors]
    if kind == A.GRAPHS:
        return [convert_graph(g, opset) for g in attr.graphs]
    if kind == A.SPARSE_TENSOR:
        from onnx import numpy_helper

        return numpy_helper.to_array(attr.sparse_tensor.values)
    raise ModelLoadError(f"attribute {attr.name!r} has unsupported type {kind}")


def _value_infos(items: Any) -> list[ValueInfo]:
    out = []
    for vi in items:
        t = _type_of(vi)
        out.append(ValueInfo(vi.name, t if t is not None else TensorType(np.dtype(np.float32), None)))
    return out


def convert_graph(g: Any, opset: int) -> Graph:
    initializers = {t.name: tensor_to_array(t) for t in g.initializer}
    for sparse in g.sparse_initializer:
        from onnx import numpy_helper

        dense = numpy_helper.to_array(sparse.values)
        shape = tuple(sparse.dims)
        full = np.zeros(shape, dense.dtype).reshape(-1)
        idx = numpy_helper.to_array(sparse.indices)
        flat = idx if idx.ndim == 1 else np.ravel_multi_index(idx.T, shape)
        full[flat] = dense
        initializers[sparse.values.name] = full.reshape(shape)
    nodes = []
    for i, n in enumerate(g.node):
        attrs: dict[str, Any] = {}
        for a in n.attribute:
            if a.ref_attr_name:
                raise UnsupportedOpError(n.op_type, n.name or f"#{i}", opset,
                                         "attribute references (functions) are not supported")
            attrs[a.name] = _attr_value(a, opset)
        nodes.append(Node(n.op_type, list(n.input), list(n.output), attrs, n.name, n.domain))
    return Graph(nodes, _value_infos(g.input), _value_infos(g.output), initializers, opset, g.name)


def import_model(model: str | Path | bytes | Any) -> Graph:
    proto = read_model_proto(model)
    newest = max_opset()
    opset = newest
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = int(imp.version)
    if opset > newest or opset < MIN_OPSET:
        raise UnsupportedOpError("<model>", proto.graph.name, opset,
                                 f"opset {opset} is outside the supported range {MIN_OPSET}-{newest}")
    graph = convert_graph(proto.graph, opset)
    init_names = set(graph.initializers)
    # Inputs listed with an initializer are optional overrides (IR < 4 convention).
    graph.inputs = [vi for vi in graph.inputs if vi.name not in init_names] + [
        vi for vi in graph.inputs if vi.name in init_names
    ]
    remove_dead_nodes(graph)
    # An override nothing reads lost its initializer above; it must not become a required input
    # (onnxruntime drops it too, and rejects it as a feed).
    graph.inputs = [vi for vi in graph.inputs if vi.name not in init_names or vi.name in graph.initializers]
    return graph
