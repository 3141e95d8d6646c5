"""The data library task scripts use (``walle.cv``): decode, resize, crop, colour, tensors, math.

Images are ``HxWxC`` uint8 arrays (``HxW`` for grey), like OpenCV's. Every function has a numpy
implementation; ``resize``, ``to_nchw`` and ``softmax`` also take ``backend=`` to run as a tiny
ONNX graph on the engine's kernels (the same backends as the task's model), cached per shape.
Resizing follows OpenCV's conventions (``INTER_LINEAR``: half-pixel centres, clamped edges, no
anti-aliasing; ``INTER_NEAREST``: ``floor(dst * scale)``) so pipelines ported from OpenCV match.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "center_crop",
    "crop",
    "cvt_color",
    "decode",
    "l2_normalize",
    "resize",
    "sigmoid",
    "softmax",
    "to_nchw",
    "topk",
]

# ITU-R BT.601 luma weights, as OpenCV's RGB2GRAY uses.
_GRAY = np.array([0.299, 0.587, 0.114], np.float32)


def decode(data: bytes, mode: str = "RGB") -> np.ndarray:
    """Decode PNG/JPEG/BMP/... bytes into ``HxWx3`` (RGB or BGR) or ``HxW`` (GRAY) uint8."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if mode == "GRAY":
            return np.asarray(img.convert("L"), np.uint8).copy()
        rgb = np.asarray(img.convert("RGB"), np.uint8)
    if mode == "RGB":
        return rgb.copy()
    if mode == "BGR":
        return np.ascontiguousarray(rgb[..., ::-1])
    raise ValueError(f"unknown mode {mode!r} (RGB, BGR or GRAY)")


def cvt_color(img: np.ndarray, code: str) -> np.ndarray:
    """``RGB2BGR``, ``BGR2RGB``, ``RGB2GRAY``, ``BGR2GRAY``, ``GRAY2RGB``, ``GRAY2BGR``."""
    if code in ("RGB2BGR", "BGR2RGB"):
        return np.ascontiguousarray(img[..., ::-1])
    if code in ("RGB2GRAY", "BGR2GRAY"):
        weights = _GRAY if code == "RGB2GRAY" else _GRAY[::-1]
        gray = img.astype(np.float32) @ weights
        return _round_like(gray, img.dtype)
    if code in ("GRAY2RGB", "GRAY2BGR"):
        return np.repeat((img[..., 0] if img.ndim == 3 else img)[..., None], 3, axis=2)
    raise ValueError(f"unknown colour conversion {code!r}")


def crop(img: np.ndarray, x: int, y: int, width: int, height: int) -> np.ndarray:
    """The ``width x height`` window at column ``x``, row ``y`` (a copy; must lie inside the image)."""
    h, w = img.shape[:2]
    if x < 0 or y < 0 or width <= 0 or height <= 0 or x + width > w or y + height > h:
        raise ValueError(f"crop ({x}, {y}, {width}, {height}) is outside the {w}x{h} image")
    return img[y:y + height, x:x + width].copy()


def center_crop(img: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = img.shape[:2]
    return crop(img, (w - width) // 2, (h - height) // 2, width, height)


def _round_like(values: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left index, right index and right weight of each output position (half-pixel centres)."""
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    pos = np.clip(pos, 0, None)  # OpenCV clamps the left edge instead of extrapolating
    left = np.minimum(np.floor(pos).astype(np.int64), src - 1)
    right = np.minimum(left + 1, src - 1)
    return left, right, (pos - left).astype(np.float32)


def _nearest_taps(src: int, dst: int) -> np.ndarray:
    return np.minimum(np.floor(np.arange(dst) * (src / dst)).astype(np.int64), src - 1)


def resize(img: np.ndarray, size: tuple[int, int], interpolation: str = "bilinear",
           backend: str | None = None) -> np.ndarray:
    """Resize to ``size = (width, height)`` with ``bilinear`` or ``nearest`` interpolation."""
    width, height = size
    if width <= 0 or height <= 0:
        raise ValueError(f"bad size {size}")
    if interpolation not in ("bilinear", "nearest"):
        raise ValueError(f"unknown interpolation {interpolation!r}")
    h, w = img.shape[:2]
    if backend is not None:
        return _engine_resize(img, width, height, interpolation, backend)
    if interpolation == "nearest":
        return img[_nearest_taps(h, height)][:, _nearest_taps(w, width)]
    top, bottom, wy = _linear_taps(h, height)
    left, right, wx = _linear_taps(w, width)
    src = img.astype(np.float32)
    wy = wy.reshape((-1,) + (1,) * (img.ndim - 1))
    rows = src[top] * (1 - wy) + src[bottom] * wy  # vertical pass, then horizontal
    wx = wx.reshape((1, -1) + (1,) * (img.ndim - 2))
    out = rows[:, left] * (1 - wx) + rows[:, right] * wx
    return _round_like(out, img.dtype)


def to_nchw(img: np.ndarray, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
            scale: float = 1 / 255, backend: str | None = None) -> np.ndarray:
    """``HxWxC`` (or ``HxW``) image -> ``1xCxHxW`` float32: ``(img * scale - mean) / std``."""
    hwc = img[..., None] if img.ndim == 2 else img
    channels = hwc.shape[2]
    m = np.broadcast_to(np.asarray(mean if mean is not None else 0.0, np.float32), (channels,))
    s = np.broadcast_to(np.asarray(std if std is not None else 1.0, np.float32), (channels,))
    if backend is not None:
        return _engine_normalize(hwc, m, s, scale, backend)
    out = (hwc.astype(np.float32) * np.float32(scale) - m) / s
    return np.ascontiguousarray(out.transpose(2, 0, 1))[None]


def softmax(x: np.ndarray, axis: int = -1, backend: str | None = None) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if backend is not None:
        return _engine_softmax(x, axis, backend)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return 1 / (1 + np.exp(-x))


def topk(x: np.ndarray, k: int, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest values along ``axis`` and their indices, largest first (stable on ties)."""
    order = np.argsort(-np.asarray(x), axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis)
    return np.take_along_axis(np.asarray(x), idx, axis=axis), idx


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


# ---------------------------------------------------------------------------------- engine path

_CACHE: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 64


def _engine_model(key: tuple[Any, ...], backend: str, build: Any) -> Any:
    """A loaded engine model for ``key``, built once (small LRU: shapes repeat in a pipeline)."""
    import walle_core

    with _CACHE_LOCK:
        model = _CACHE.get(key)
        if model is not None:
            _CACHE.move_to_end(key)
            return model
    model = walle_core.load(build().SerializeToString(), backend=backend, threads=1)
    with _CACHE_LOCK:
        _CACHE[key] = model
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return model


def _graph(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any]) -> Any:
    from onnx import helper

    graph = helper.make_graph(nodes, "walle_cv", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _engine_resize(img: np.ndarray, width: int, height: int, interpolation: str, backend: str) -> np.ndarray:
    from onnx import TensorProto, helper, numpy_helper

    src = img.astype(np.float32)
    shape = src.shape
    sizes = np.array([height, width, *shape[2:]], np.int64)
    key = ("resize", shape, width, height, interpolation, backend)

    def build() -> Any:
        linear = interpolation == "bilinear"
        node = helper.make_node(
            "Resize", ["x", "", "", "sizes"], ["y"], mode="linear" if linear else "nearest",
            coordinate_transformation_mode="half_pixel" if linear else "asymmetric", nearest_mode="floor",
        )
        return _graph([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                      [numpy_helper.from_array(sizes, "sizes")])

    out = _engine_model(key, backend, build).run({"x": src})["y"]
    return _round_like(out, img.dtype)


def _engine_normalize(hwc: np.ndarray, mean: np.ndarray, std: np.ndarray, scale: float, backend: str) -> np.ndarray:
    from onnx import TensorProto, helper, numpy_helper

    key = ("normalize", hwc.shape, hwc.dtype.str, tuple(mean), tuple(std), scale, backend)
    elem = helper.np_dtype_to_tensor_dtype(hwc.dtype)

    def build() -> Any:
        nodes = [
            helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["f", "scale"], ["scaled"]),
            helper.make_node("Sub", ["scaled", "mean"], ["centred"]),
            helper.make_node("Div", ["centred", "std"], ["norm"]),
            helper.make_node("Transpose", ["norm"], ["chw"], perm=[2, 0, 1]),
            helper.make_node("Unsqueeze", ["chw", "axes"], ["y"]),
        ]
        inits = [numpy_helper.from_array(np.array(scale, np.float32), "scale"),
                 numpy_helper.from_array(mean.copy(), "mean"), numpy_helper.from_array(std.copy(), "std"),
                 numpy_helper.from_array(np.array([0], np.int64), "axes")]
        return _graph(nodes, [helper.make_tensor_value_info("x", elem, list(hwc.shape))],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)

    out: np.ndarray = _engine_model(key, backend, build).run({"x": np.ascontiguousarray(hwc)})["y"]
    return out


def _engine_softmax(x: np.ndarray, axis: int, backend: str) -> np.ndarray:
    from onnx import TensorProto, helper

    key = ("softmax", x.shape, axis, backend)

    def build() -> Any:
        return _graph([helper.make_node("Softmax", ["x"], ["y"], axis=axis)],
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [])

    out: np.ndarray = _engine_model(key, backend, build).run({"x": x})["y"]
    return out
