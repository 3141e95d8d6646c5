"""The ONNX backend *node* test cases, generated in-process from the ``onnx`` wheel.

The wheel ships the case definitions (``onnx.backend.test.case.node``) but not the generated
``.pb`` data, so we build the ``TestCase`` objects (model + inputs + expected outputs) by
importing the definitions, exactly as ``onnx.backend.test.cmd_tools generate-data`` does, and
compare like ONNX's runner (shape, dtype, ``assert_allclose`` with the case's rtol/atol).

Used by ``tests/test_onnx_node.py`` and ``tests/onnx_node/report.py``.
"""

from __future__ import annotations

import functools
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SUPPORTED_ELEM_TYPES = frozenset(
    {"FLOAT", "UINT8", "INT8", "UINT16", "INT16", "INT32", "INT64", "BOOL", "FLOAT16", "DOUBLE",
     "UINT32", "UINT64"}
)


@dataclass
class NodeCase:
    name: str
    model: Any  # onnx.ModelProto
    inputs: list[Any]
    outputs: list[Any]
    rtol: float
    atol: float

    @property
    def op_types(self) -> list[str]:
        return sorted({n.op_type for n in self.model.graph.node})

    @property
    def opset(self) -> int:
        for imp in self.model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                return int(imp.version)
        return 0


@dataclass
class Outcome:
    status: str  # "pass" | "fail" | "skip"
    reason: str = ""
    detail: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _normalize(value: Any) -> Any:
    import onnx
    from onnx import numpy_helper

    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list | tuple):
        return [_normalize(v) for v in value]
    if value is None:
        return None
    return np.asarray(value)


@functools.cache
def load_cases() -> tuple[NodeCase, ...]:
    """All node test cases of the installed ``onnx`` (1,884 for onnx 1.23)."""
    from onnx.backend.test.case import node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = np.random.get_state()
        try:
            raw = node.collect_testcases()
        finally:
            np.random.set_state(state)
    cases = []
    for tc in raw:
        assert tc.model is not None and tc.data_sets
        ins, outs = tc.data_sets[0]
        cases.append(NodeCase(tc.name, tc.model, [_normalize(x) for x in ins],
                              [_normalize(x) for x in outs], tc.rtol, tc.atol))
    cases.sort(key=lambda c: c.name)
    return tuple(cases)


def _type_reason(type_proto: Any) -> str | None:
    import onnx

    kind = type_proto.WhichOneof("value")
    if kind != "tensor_type":
        return f"unsupported type: {kind}"
    name = onnx.TensorProto.DataType.Name(type_proto.tensor_type.elem_type)
    if name not in SUPPORTED_ELEM_TYPES:
        return f"unsupported dtype: {name.lower()}"
    return None


def precheck(case: NodeCase) -> str | None:
    """A skip reason when the case's graph inputs/outputs use types Walle does not support."""
    for vi in [*case.model.graph.input, *case.model.graph.output]:
        reason = _type_reason(vi.type)
        if reason:
            return reason
    return None


def compare(outputs: Sequence[Any], expected: Sequence[Any], rtol: float, atol: float) -> None:
    """ONNX runner semantics: same count, shape, dtype; ``assert_allclose``."""
    np.testing.assert_equal(len(outputs), len(expected))
    for i, (out, ref) in enumerate(zip(outputs, expected, strict=True)):
        if isinstance(ref, list):
            assert isinstance(out, list | tuple), f"output {i}: expected a sequence"
            compare(out, ref, rtol, atol)
            continue
        np.testing.assert_array_equal(out.shape, ref.shape, err_msg=f"Output {i} has incorrect shape")
        if ref.dtype == object:
            np.testing.assert_array_equal(out, ref)
        else:
            np.testing.assert_equal(out.dtype, ref.dtype)
            np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol)


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def run_walle(case: NodeCase, backend: str = "reference") -> list[Any]:
    from walle_core.frontend.onnx_backend import WalleBackend

    rep = WalleBackend.prepare(case.model, "CPU", backend=backend)
    return list(rep.run(case.inputs))


def run_onnxruntime(case: NodeCase) -> list[Any]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(case.model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return list(sess.run(None, dict(zip(names, case.inputs, strict=False))))


def evaluate(case: NodeCase, runner: Callable[[NodeCase], list[Any]] | None = None) -> Outcome:
    """Run one case; 'skip' only for unsupported types or an explicit UnsupportedOpError."""
    from walle_core.errors import UnsupportedOpError

    t0 = time.perf_counter()
    reason = precheck(case)
    if reason:
        return Outcome("skip", reason)
    try:
        outs = (runner or run_walle)(case)
    except UnsupportedOpError as exc:
        return Outcome("skip", f"unsupported op: {exc.op_type}", str(exc), time.perf_counter() - t0)
    except Exception as exc:
        return Outcome("fail", _short(exc), traceback.format_exc(limit=-3),
                       time.perf_counter() - t0)
    try:
        compare(outs, case.outputs, case.rtol, case.atol)
    except AssertionError as exc:
        msg = " ".join(str(exc).split())[:300]
        return Outcome("fail", "mismatch", msg, time.perf_counter() - t0)
    return Outcome("pass", seconds=time.perf_counter() - t0)
