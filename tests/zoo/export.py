"""Exporting a zoo model to ONNX, cached outside the repository under a hash of its source.

``export(name)`` gives the ONNX file's path; ``inputs(name)`` the example inputs at ``SIZES`` and
``inputs(name, alt=True)`` those at ``ALT`` (the second shape on the dynamic axes). BatchNorm
statistics are calibrated on random inputs before export, so activations keep a sane scale.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from tests.models.common import cache_dir, calibrate_bn
from tests.zoo import blocks

CACHE_VERSION = "1"


def module(name: str) -> ModuleType:
    return importlib.import_module(f"tests.zoo.{name}")


def inputs(name: str, alt: bool = False) -> dict[str, np.ndarray]:
    mod = module(name)
    sizes = {**mod.SIZES, **(mod.ALT if alt else {})}
    return dict(mod.inputs(np.random.default_rng(11 if alt else 0), sizes))


def calibration_batch(mod: ModuleType) -> tuple[Any, ...]:
    """Eight fresh example inputs in one batch: BatchNorm statistics of one example on small
    late feature maps make near-constant channels amplify rounding noise."""
    import torch

    sizes = {**mod.SIZES, "batch": 8}
    return tuple(torch.from_numpy(v) for v in mod.inputs(np.random.default_rng(5), sizes).values())


def _key(mod: ModuleType, opset: int) -> str:
    import torch

    src = "".join(inspect.getsource(m) for m in (mod, blocks)) + inspect.getsource(calibrate_bn)
    src += inspect.getsource(export)
    return hashlib.sha256(f"{CACHE_VERSION}|{torch.__version__}|{opset}|{src}".encode()).hexdigest()[:16]


def export(name: str, dynamo: bool = False) -> Path:
    """Export ``name`` (once; later calls find the cached file), by default with torch's
    TorchScript exporter; ``dynamo``: with the exporter ``torch.onnx.export`` uses by default
    since torch 2.9 (torch.export and onnxscript: other op spellings, opset 18 and up), at the
    example sizes only."""
    import torch

    mod = module(name)
    opset = int(getattr(mod, "OPSET", 17))
    if dynamo:
        opset = max(opset, 18)
    path = cache_dir() / "zoo" / f"{name}-{'dynamo-' if dynamo else ''}{_key(mod, opset)}.onnx"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    feeds = inputs(name)
    torch.manual_seed(0)
    net = mod.model()
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        calibrate_bn(net, lambda: calibration_batch(mod))
    net.eval()
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    kwargs: dict[str, Any] = dict(
        input_names=list(feeds), output_names=list(mod.OUTPUTS), opset_version=opset,
        dynamic_axes={**mod.DYNAMIC, **mod.OUTPUTS}, do_constant_folding=True,
    )
    with torch.no_grad():
        if dynamo:  # static: torch 2.13 cannot export crnn's LSTM or gpt2's cache with dynamic axes
            del kwargs["do_constant_folding"], kwargs["dynamic_axes"]
        torch.onnx.export(net, args, str(tmp), dynamo=dynamo, **kwargs)
    os.replace(tmp, path)
    return path
