"""An ``onnx.backend.base.Backend`` adapter: run ONNX models through Walle.

This is what ONNX's own conformance tooling expects (``prepare`` -> ``BackendRep.run``), so the
node test cases shipped in the ``onnx`` wheel can be pointed at Walle::

    from walle_core.frontend.onnx_backend import WalleBackend
    rep = WalleBackend.prepare(model_proto, "CPU")
    outputs = rep.run([x, y])          # tuple, in graph-output order
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from onnx.backend.base import Backend, BackendRep

from walle_core.errors import InputError
from walle_core.runtime.model import Model, load

DEFAULT_BACKEND = "reference"


class WalleBackendRep(BackendRep):
    """A prepared model; ``run`` takes inputs positionally (graph-input order) or by name."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        feeds = self._feeds(inputs)
        out = self.model.run(feeds)
        return tuple(out[name] for name in self.model.output_names)

    def _feeds(self, inputs: Any) -> dict[str, np.ndarray]:
        if isinstance(inputs, Mapping):
            return {str(k): np.asarray(v) for k, v in inputs.items()}
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        values = list(inputs) if isinstance(inputs, Sequence) else [inputs]
        names = self.model.input_names
        if len(values) > len(names):
            raise InputError(f"got {len(values)} inputs, the model takes {len(names)}: {names}")
        feeds: dict[str, np.ndarray] = {}
        for name, value in zip(names, values, strict=False):
            if isinstance(value, list | tuple) or value is None:
                raise InputError(f"input {name!r}: sequence and optional values are not supported")
            feeds[name] = np.asarray(value)
        return feeds


class WalleBackend(Backend):
    """Walle behind the ONNX backend API; ``backend=`` picks the Walle backend (default
    ``reference``)."""

    @classmethod
    def prepare(cls, model: Any, device: str = "CPU", **kwargs: Any) -> WalleBackendRep:
        if not cls.supports_device(device):
            raise ValueError(f"Walle's ONNX adapter runs on CPU, not {device!r}")
        backend = str(kwargs.get("backend", DEFAULT_BACKEND))
        data = model if isinstance(model, bytes | bytearray) else model.SerializeToString()
        return WalleBackendRep(load(bytes(data), backend=backend))

    @classmethod
    def run_model(
        cls, model: Any, inputs: Any, device: str = "CPU", **kwargs: Any
    ) -> tuple[np.ndarray, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(
        cls, node: Any, inputs: Any, device: str = "CPU", outputs_info: Any = None, **kwargs: Any
    ) -> tuple[np.ndarray, ...]:
        """Run a single NodeProto on positional numpy inputs (one-node model, latest opset)."""
        from onnx import helper

        arrays = [np.asarray(x) for x in inputs]
        names = [n for n in node.input if n]
        graph_inputs = [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for n, a in zip(names, arrays, strict=False)
        ]
        graph_outputs = [helper.make_empty_tensor_value_info(n) for n in node.output if n]
        graph = helper.make_graph([node], "run_node", graph_inputs, graph_outputs)
        opset = int(kwargs.pop("opset_version", 0)) or None
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", opset)] if opset else None
        )
        return cls.prepare(model, device, **kwargs).run(arrays)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper().split(":")[0] == "CPU"


prepare = WalleBackend.prepare
run_model = WalleBackend.run_model
run_node = WalleBackend.run_node
supports_device = WalleBackend.supports_device
