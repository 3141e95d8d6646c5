"""Export and calibration helpers shared by the model builders."""

from __future__ import annotations

import hashlib
import inspect
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from walle_core import flags

CACHE_VERSION = "1"


def cache_dir() -> Path:
    path = flags.cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def calibrate_bn(model: Any, make_input: Any, passes: int = 3) -> None:
    """Set BatchNorm running statistics from random data (cumulative average over a few
    train-mode passes), so that activations keep a sane scale in eval mode."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(passes):
            model(*make_input())
    model.eval()


def export(module: ModuleType, opset: int = 17) -> tuple[Path, dict[str, np.ndarray]]:
    """Export ``module.build()`` to ONNX (cached) and return its path and example inputs."""
    import torch

    src = inspect.getsource(module) + inspect.getsource(calibrate_bn)
    key = hashlib.sha256(
        f"{CACHE_VERSION}|{torch.__version__}|{opset}|{src}".encode()
    ).hexdigest()[:16]
    name = module.__name__.rsplit(".", 1)[-1]
    path = cache_dir() / f"{name}-{key}.onnx"
    feeds_path = path.with_suffix(".npz")
    if path.is_file() and feeds_path.is_file():
        with np.load(feeds_path) as data:
            return path, {k: data[k] for k in data.files}
    torch.manual_seed(0)
    model, feeds = module.build()
    model.eval()
    names = list(feeds)
    args = tuple(torch.from_numpy(feeds[n]) for n in names)
    dynamic = {n: dict(axes) for n, axes in getattr(module, "DYNAMIC", {}).items()}
    outputs = list(getattr(module, "OUTPUTS", ["output"]))
    for out in outputs:
        if dynamic:
            dynamic[out] = {0: "batch"} if getattr(module, "OUTPUT_BATCH_AXIS", 0) == 0 else {
                int(getattr(module, "OUTPUT_BATCH_AXIS", 0)): "batch"}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # concurrent exporters (pytest -n) never share it
    kwargs: dict[str, Any] = dict(
        input_names=names, output_names=outputs, opset_version=opset,
        dynamic_axes=dynamic or None, do_constant_folding=True,
    )
    try:
        torch.onnx.export(model, args, str(tmp), dynamo=False, **kwargs)
    except TypeError:  # older torch without the ``dynamo`` switch
        torch.onnx.export(model, args, str(tmp), **kwargs)
    # the feeds first: a reader that finds the model finds its feeds complete too
    feeds_tmp = path.parent / f"{path.stem}.{os.getpid()}.npz.tmp"
    with open(feeds_tmp, "wb") as f:
        np.savez(f, **feeds)
    os.replace(feeds_tmp, feeds_path)
    os.replace(tmp, path)
    return path, feeds
