"""Layout-sensitive TFLite operators: convolutions, pools, fully connected, batch matmul,
resize, depth/space moves, softmax and L2 normalisation."""

from __future__ import annotations

import numpy as np

from walle_core.frontend.tflite.context import OpContext, maps
from walle_core.frontend.tflite.convert import NATIVE, NCHW


def _conv_input(c: OpContext) -> tuple[str, dict[str, object]]:
    """The conv's NCHW input and padding attributes: a zero PAD folded at load (``fold.py``)
    becomes the conv's own pads over the PAD's input."""
    attrs: dict[str, object] = {
        "strides": [int(c.opt("StrideH", 1)), int(c.opt("StrideW", 1))],
        "dilations": [int(c.opt("DilationHFactor", 1)), int(c.opt("DilationWFactor", 1))],
    }
    folded = c.em.folded_pads.get(c.t(0).index)
    if folded is None:
        return c.x(0, NCHW), {**attrs, "auto_pad": c.padding()}
    src, pads = folded
    return c.em.value(src, NCHW), {**attrs, "pads": pads}


@maps("CONV_2D")
def conv_2d(c: OpContext) -> None:
    w = c.t(1)  # [O, KH, KW, I / groups]
    if len(w.shape) != 4 or c.rank(0) != 4:
        raise c.fail(f"needs a 4-D input and weights, got {list(c.t(0).shape)} and {list(w.shape)}")
    cin = c.t(0).shape[3]
    if w.shape[3] == 0 or cin % w.shape[3]:
        raise c.fail(f"{cin} input channels do not split into groups of {w.shape[3]}")
    x, attrs = _conv_input(c)
    ins = [x, c.weight(1, (0, 3, 1, 2))] + ([c.x(2)] if c.has(2) else [])
    y = c.one("Conv", ins, group=cin // w.shape[3], kernel_shape=[w.shape[1], w.shape[2]], **attrs)
    c.out(c.activation(y), NCHW)


@maps("DEPTHWISE_CONV_2D")
def depthwise_conv_2d(c: OpContext) -> None:
    w = c.t(1)  # [1, KH, KW, C * multiplier]
    cin = c.t(0).shape[3]
    if len(w.shape) != 4 or c.rank(0) != 4 or w.shape[0] != 1 or cin == 0 or w.shape[3] % cin:
        raise c.fail(f"weights {list(w.shape)} do not fit a depthwise conv over {cin} channels")
    x, attrs = _conv_input(c)
    ins = [x, c.weight(1, (3, 0, 1, 2))] + ([c.x(2)] if c.has(2) else [])
    y = c.one("Conv", ins, group=cin, kernel_shape=[w.shape[1], w.shape[2]], **attrs)
    c.out(c.activation(y), NCHW)


def _transpose_conv(c: OpContext, x: int, w: int, bias: int | None, target: list[int], padding: str,
                    strides: list[int]) -> None:
    """Transposed convolution to the NHWC size ``target`` (H, W); weights [O, KH, KW, I]."""
    xt, wt = c.t(x), c.t(w)
    if len(wt.shape) != 4 or len(xt.shape) != 4 or len(target) != 2:
        raise c.fail(f"needs 4-D input and weights, got {list(xt.shape)} and {list(wt.shape)}")
    ins = [c.x(x, NCHW), c.weight(w, (3, 0, 1, 2))] + ([c.x(bias)] if bias is not None and c.has(bias) else [])
    attrs: dict[str, object] = {"strides": strides, "kernel_shape": [wt.shape[1], wt.shape[2]]}
    natural = [(xt.shape[1 + i] - 1) * strides[i] + wt.shape[1 + i] for i in range(2)]
    if padding == "VALID" and any(t < n for t, n in zip(target, natural, strict=True)):
        # VALID keeps the first outputs: the surplus is cropped at the end only.
        attrs["pads"] = [0, 0, natural[0] - target[0], natural[1] - target[1]]
    else:
        attrs["output_shape"] = target
        attrs["auto_pad"] = "SAME_UPPER"
    y = c.one("ConvTranspose", ins, **attrs)
    c.out(c.activation(y), NCHW)


@maps("TRANSPOSE_CONV")
def transpose_conv(c: OpContext) -> None:
    # Only the spatial size matters; a computed output_shape (dynamic batch) has it in the
    # output tensor's static shape.
    out_shape = c.ints(0, "output_shape") if c.is_const(0) else list(c.out_t().shape)
    if not c.is_const(0) and {1, 2} & set(c.out_t().dynamic_axes()):
        raise c.fail("a computed output_shape with a dynamic height or width is not supported")
    if len(out_shape) != 4:
        raise c.fail(f"output_shape must have 4 values, got {out_shape}")
    _transpose_conv(c, 2, 1, 3, out_shape[1:3], c.padding(),
                    [int(c.opt("StrideH", 1)), int(c.opt("StrideW", 1))])


@maps("CUSTOM:Convolution2DTransposeBias")
def mediapipe_transpose_conv_bias(c: OpContext) -> None:
    """MediaPipe's transposed conv + bias (segmentation heads). Its custom options are the raw
    ``TfLiteTransposeConvParams``: padding (1 SAME, 2 VALID), stride width, stride height."""
    raw = c.op.custom_options
    if len(raw) < 12:
        raise c.fail(f"custom options of {len(raw)} bytes, expected at least 12")
    padding, stride_w, stride_h = (int(v) for v in np.frombuffer(raw[:12], "<i4"))
    if padding not in (1, 2) or stride_w < 1 or stride_h < 1:
        raise c.fail(f"padding {padding}, strides {stride_w}x{stride_h}")
    _transpose_conv(c, 0, 1, 2, list(c.out_t().shape[1:3]), "SAME_UPPER" if padding == 1 else "VALID",
                    [stride_h, stride_w])


def _pool(c: OpContext, op_type: str, **extra: object) -> None:
    kernel = [int(c.opt("FilterHeight", 1)), int(c.opt("FilterWidth", 1))]
    y = c.one(op_type, [c.x(0, NCHW)], kernel_shape=kernel, auto_pad=c.padding(),
              strides=[int(c.opt("StrideH", 1)), int(c.opt("StrideW", 1))], **extra)
    c.out(c.activation(y), NCHW)


@maps("AVERAGE_POOL_2D")
def average_pool_2d(c: OpContext) -> None:
    _pool(c, "AveragePool", count_include_pad=0)  # TFLite averages over the valid taps only


@maps("MAX_POOL_2D")
def max_pool_2d(c: OpContext) -> None:
    _pool(c, "MaxPool")


@maps("L2_POOL_2D")
def l2_pool_2d(c: OpContext) -> None:
    sq = c.one("Mul", [c.x(0, NCHW), c.x(0, NCHW)])
    kernel = [int(c.opt("FilterHeight", 1)), int(c.opt("FilterWidth", 1))]
    mean = c.one("AveragePool", [sq], kernel_shape=kernel, auto_pad=c.padding(), count_include_pad=0,
                 strides=[int(c.opt("StrideH", 1)), int(c.opt("StrideW", 1))])
    c.out(c.activation(c.one("Sqrt", [mean])), NCHW)


@maps("FULLY_CONNECTED")
def fully_connected(c: OpContext) -> None:
    if int(c.opt("WeightsFormat", 0)) != 0:
        raise c.fail("shuffled weights format is not supported")
    w = c.t(1)  # [units, inputs]
    if len(w.shape) != 2:
        raise c.fail(f"weights must be 2-D, got {list(w.shape)}")
    bias = [c.x(2)] if c.has(2) else []
    if c.opt("KeepNumDims", False):
        y = c.one("MatMul", [c.x(0), c.weight(1, (1, 0))])
        if bias:
            y = c.one("Add", [y, bias[0]])
    else:
        x = c.x(0)
        if c.rank(0) != 2:
            x = c.one("Reshape", [x, c.ints_init([-1, w.shape[1]])])
        y = c.one("Gemm", [x, c.x(1), *bias], transB=1)
    c.out(c.activation(y))


@maps("BATCH_MATMUL")
def batch_matmul(c: OpContext) -> None:
    ins = []
    for i, flag in ((0, "AdjX"), (1, "AdjY")):
        v = c.x(i)
        if c.opt(flag, False):
            r = c.rank(i)
            v = c.one("Transpose", [v], perm=[*range(r - 2), r - 1, r - 2])
        ins.append(v)
    c.out(c.one("MatMul", ins))


def _resize(c: OpContext, mode: str) -> None:
    if c.rank(0) != 4:
        raise c.fail(f"needs a 4-D input, got {list(c.t(0).shape)}")
    layout = NCHW if c.has_nchw(0) else NATIVE
    sizes = c.const(1)
    if sizes is not None:
        size_name = c.ints_init([int(v) for v in sizes.reshape(-1)])
    else:
        size_name = c.one("Cast", [c.x(1)], to=7)
    align, half = bool(c.opt("AlignCorners", False)), bool(c.opt("HalfPixelCenters", False))
    coord = "align_corners" if align else "half_pixel" if half else "asymmetric"
    attrs: dict[str, object] = {"mode": mode, "coordinate_transformation_mode": coord,
                                "axes": [2, 3] if layout == NCHW else [1, 2]}
    if mode == "nearest":
        # TFLite rounds align_corners half away from zero and floors (x + 0.5) * scale with
        # half-pixel centres: both are ONNX's round_prefer_ceil over these coordinates.
        attrs["nearest_mode"] = "round_prefer_ceil" if (align or half) else "floor"
    c.out(c.one("Resize", [c.x(0, layout), "", "", size_name], **attrs), layout)


@maps("RESIZE_BILINEAR")
def resize_bilinear(c: OpContext) -> None:
    _resize(c, "linear")


@maps("RESIZE_NEAREST_NEIGHBOR")
def resize_nearest(c: OpContext) -> None:
    _resize(c, "nearest")


@maps("DEPTH_TO_SPACE", "SPACE_TO_DEPTH")
def depth_space(c: OpContext) -> None:
    # TFLite's NHWC channel order (block row, block column, channel) is ONNX's DCR in NCHW.
    op = "DepthToSpace" if c.op.name == "DEPTH_TO_SPACE" else "SpaceToDepth"
    extra = {"mode": "DCR"} if op == "DepthToSpace" else {}
    stored = c.same_quant(0)
    c.out(c.one(op, [c.data(0, NCHW, stored)], blocksize=int(c.opt("BlockSize", 1)), **extra), NCHW,
          stored=stored)


def _last_axis_layout(c: OpContext) -> tuple[str, int]:
    layout = c.pick_layout([0])
    return layout, c.nchw_axis(-1, c.rank(0), layout)


@maps("SOFTMAX")
def softmax(c: OpContext) -> None:
    layout, axis = _last_axis_layout(c)
    x = c.x(0, layout)
    beta = float(c.opt("Beta", 1.0))
    if beta != 1.0:
        x = c.one("Mul", [x, c.scalar(beta)])
    c.out(c.one("Softmax", [x], axis=axis), layout)


@maps("LOG_SOFTMAX")
def log_softmax(c: OpContext) -> None:
    layout, axis = _last_axis_layout(c)
    c.out(c.one("LogSoftmax", [c.x(0, layout)], axis=axis), layout)


@maps("L2_NORMALIZATION")
def l2_normalization(c: OpContext) -> None:
    # x / max(sqrt(sum x^2), 1e-6) over the last axis, TFLite's own epsilon placement.
    layout, axis = _last_axis_layout(c)
    x = c.x(0, layout)
    ss = c.one("ReduceSumSquare", [x, c.ints_init([axis])], keepdims=1)
    norm = c.one("Max", [c.one("Sqrt", [ss]), c.scalar(1e-6)])
    c.out(c.activation(c.one("Div", [x, norm])), layout)


@maps("LOCAL_RESPONSE_NORMALIZATION")
def local_response_normalization(c: OpContext) -> None:
    # TFLite: x / (bias + alpha * sum over 2r+1 channels of x^2) ^ beta; ONNX's LRN divides its
    # alpha by the window size, so it gets alpha * size.
    radius = int(c.opt("Radius", 5))
    size = 2 * radius + 1
    y = c.one("LRN", [c.x(0, NCHW)], size=size, alpha=float(c.opt("Alpha", 1.0)) * size,
              beta=float(c.opt("Beta", 0.5)), bias=float(c.opt("Bias", 1.0)))
    c.out(y, NCHW)

