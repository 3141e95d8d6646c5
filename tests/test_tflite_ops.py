"""Every TFLite builtin op the importer maps, in small generated models, against LiteRT.

Each case runs on two paths: the op reads the model input directly (the native NHWC layout),
or reads the output of a 1x1 convolution (the importer then holds the tensor in NCHW and the
op must remap its axes). Float models must match to 1e-5 of the output's scale; int8 models
(quantised by LiteRT's own calibrator) within one step of the stored type.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
pytest.importorskip("tflite")

from tflite_testlib import ModelBuilder, litert_run, lsb_error, quantize, random_feeds, rel_error

import walle_core
from walle_core.frontend.tflite_import import import_model

RNG = np.random.default_rng(7)
SHAPE = [1, 8, 8, 4]


def w(*shape: int, scale: float = 0.5) -> np.ndarray:
    return (RNG.normal(size=shape) * scale).astype(np.float32)


def i32(*values: int) -> np.ndarray:
    return np.asarray(values, np.int32)


def source(b: ModelBuilder, path: str, shape: list[int] = SHAPE, name: str | None = None) -> int:
    """A model input; on the ``nchw`` path a 1x1 convolution follows it."""
    x = b.input(shape, name=name)
    if path == "nchw" and len(shape) == 4:
        c = shape[3]
        (x,) = b.op("CONV_2D", [x, b.const(w(c, 1, 1, c)), b.const(np.zeros(c, np.float32))],
                    "Conv2DOptions", padding=1, strideW=1, strideH=1, dilationWFactor=1, dilationHFactor=1)
    return x


def conv(b: ModelBuilder, x: int, cout: int, k: int, padding: int, stride: int, act: int, dil: int = 1,
         cin: int = 4) -> int:
    return b.op("CONV_2D", [x, b.const(w(cout, k, k, cin)), b.const(w(cout))], "Conv2DOptions",
                padding=padding, strideW=stride, strideH=stride, fusedActivationFunction=act,
                dilationWFactor=dil, dilationHFactor=dil)[0]


def pool(b: ModelBuilder, op: str, x: int, k: int, stride: int, padding: int, act: int = 0) -> int:
    return b.op(op, [x], "Pool2DOptions", padding=padding, strideW=stride, strideH=stride,
                filterWidth=k, filterHeight=k, fusedActivationFunction=act)[0]


def resize(op: str, size: tuple[int, int], align: bool, half: bool) -> Callable[[ModelBuilder, str], list[int]]:
    options = "ResizeBilinearOptions" if op == "RESIZE_BILINEAR" else "ResizeNearestNeighborOptions"

    def build(b: ModelBuilder, path: str) -> list[int]:
        return b.op(op, [source(b, path), b.const(i32(*size))], options, alignCorners=align, halfPixelCenters=half)

    return build


def unary(op: str, options: str | None = None, **fields: object) -> Callable[[ModelBuilder, str], list[int]]:
    def build(b: ModelBuilder, path: str) -> list[int]:
        return b.op(op, [source(b, path)], options, **fields)

    return build


def binary(op: str, options: str, act: int, const: np.ndarray | None) -> Callable[[ModelBuilder, str], list[int]]:
    def build(b: ModelBuilder, path: str) -> list[int]:
        x = source(b, path)
        y = b.const(const) if const is not None else b.input(SHAPE)
        return b.op(op, [x, y], options, fusedActivationFunction=act)

    return build


def _strided(b: ModelBuilder, path: str, shrink: int) -> list[int]:
    return b.op("STRIDED_SLICE", [source(b, path), b.const(i32(0, 1, 0, 1)), b.const(i32(1, 7, 8, 4)),
                                   b.const(i32(1, 2, 3, 1))], "StridedSliceOptions",
                beginMask=4, endMask=4, shrinkAxisMask=shrink)


def _sliced(begin: tuple[int, ...], end: tuple[int, ...], strides: tuple[int, ...],
            **masks: int) -> Callable[[ModelBuilder, str], list[int]]:
    """STRIDED_SLICE with a sparse spec: ellipses, new axes, fewer entries than the rank."""
    def build(b: ModelBuilder, path: str) -> list[int]:
        return b.op("STRIDED_SLICE", [source(b, path), b.const(i32(*begin)), b.const(i32(*end)),
                                       b.const(i32(*strides))], "StridedSliceOptions", **masks)

    return build


def positive(b: ModelBuilder, path: str) -> int:
    """|x| + 0.5: an input for logarithms, roots and powers."""
    (a,) = b.op("ABS", [source(b, path)])
    return b.op("ADD", [a, b.const(np.float32(0.5))], "AddOptions")[0]


def on_positive(op: str, *extra: np.ndarray, options: str | None = None) -> Callable[[ModelBuilder, str], list[int]]:
    def build(b: ModelBuilder, path: str) -> list[int]:
        return b.op(op, [positive(b, path), *(b.const(e) for e in extra)], options)

    return build


def logical(b: ModelBuilder, path: str) -> list[int]:
    x = source(b, path)
    (neg,) = b.op("LESS", [x, b.const(np.float32(0.0))], out_dtype=np.bool_)
    (big,) = b.op("GREATER_EQUAL", [x, b.const(np.float32(-0.5))], out_dtype=np.bool_)
    (both,) = b.op("LOGICAL_AND", [neg, big], out_dtype=np.bool_)
    (either,) = b.op("LOGICAL_OR", [both, b.op("EQUAL", [x, x], out_dtype=np.bool_)[0]], out_dtype=np.bool_)
    (none,) = b.op("LOGICAL_NOT", [both], out_dtype=np.bool_)
    return [both, either, none]


def top_k(b: ModelBuilder, path: str) -> list[int]:
    outs = b.op("TOPK_V2", [source(b, path), b.const(i32(2))], n_out=2, out_shapes=[[1, 8, 8, 2], [1, 8, 8, 2]])
    b.tensors[outs[1]].type = 2  # the indices are INT32
    return outs


CASES: dict[str, Callable[[ModelBuilder, str], list[int]]] = {
    "conv_same_s2_relu6": lambda b, p: [conv(b, source(b, p), 6, 3, 0, 2, 3)],
    "conv_valid_dilated_relu": lambda b, p: [conv(b, source(b, p), 5, 3, 1, 1, 1, dil=2)],
    "depthwise_multiplier2": lambda b, p: b.op(
        "DEPTHWISE_CONV_2D", [source(b, p), b.const(w(1, 3, 3, 8)), b.const(w(8))], "DepthwiseConv2DOptions",
        padding=0, strideW=1, strideH=1, depthMultiplier=2, fusedActivationFunction=1,
        dilationWFactor=1, dilationHFactor=1),
    "depthwise_s2_valid": lambda b, p: b.op(
        "DEPTHWISE_CONV_2D", [source(b, p), b.const(w(1, 3, 3, 4)), b.const(w(4))], "DepthwiseConv2DOptions",
        padding=1, strideW=2, strideH=2, depthMultiplier=1, dilationWFactor=1, dilationHFactor=1),
    "transpose_conv_same_s2": lambda b, p: b.op(
        "TRANSPOSE_CONV", [b.const(i32(1, 16, 16, 3)), b.const(w(3, 3, 3, 4)), source(b, p), b.const(w(3))],
        "TransposeConvOptions", padding=0, strideW=2, strideH=2),
    "transpose_conv_computed_shape": lambda b, p: b.op(
        "TRANSPOSE_CONV", [b.op("ADD", [b.const(i32(1, 16, 16, 3)), b.const(i32(0, 0, 0, 0))], "AddOptions",
                                out_dtype=np.int32)[0], b.const(w(3, 3, 3, 4)), source(b, p)],
        "TransposeConvOptions", padding=0, strideW=2, strideH=2, out_shapes=[[1, 16, 16, 3]]),
    "transpose_conv_valid": lambda b, p: b.op(
        "TRANSPOSE_CONV", [b.const(i32(1, 17, 17, 3)), b.const(w(3, 3, 3, 4)), source(b, p)],
        "TransposeConvOptions", padding=1, strideW=2, strideH=2),
    "fully_connected_flatten_relu": lambda b, p: b.op(
        "FULLY_CONNECTED", [source(b, p), b.const(w(5, 256, scale=0.1)), b.const(w(5))],
        "FullyConnectedOptions", fusedActivationFunction=1),
    "fully_connected_keep_dims": lambda b, p: b.op(
        "FULLY_CONNECTED", [source(b, p), b.const(w(5, 4)), b.const(w(5))], "FullyConnectedOptions",
        keepNumDims=True),
    "batch_matmul_adj": lambda b, p: b.op(
        "BATCH_MATMUL", [b.input([2, 4, 3]), b.input([2, 5, 4])], "BatchMatMulOptions", adjX=True, adjY=True),
    "add_const_relu": binary("ADD", "AddOptions", 1, w(4)),
    "sub_inputs_relu6": binary("SUB", "SubOptions", 3, None),
    "mul_broadcast_tanh": binary("MUL", "MulOptions", 4, w(1, 8, 1, 4)),
    "div_const": binary("DIV", "DivOptions", 0, np.abs(w(4)) + 0.5),
    "average_pool_same_s2": lambda b, p: [pool(b, "AVERAGE_POOL_2D", source(b, p), 3, 2, 0)],
    "max_pool_valid_relu": lambda b, p: [pool(b, "MAX_POOL_2D", source(b, p), 2, 2, 1, act=1)],
    "mean_keep_dims": lambda b, p: b.op("MEAN", [source(b, p), b.const(i32(1, 2))], "ReducerOptions", keepDims=True),
    "sum_channels": lambda b, p: b.op("SUM", [source(b, p), b.const(i32(3))], "ReducerOptions", keepDims=False),
    "reduce_max_rows": lambda b, p: b.op("REDUCE_MAX", [source(b, p), b.const(i32(1))], "ReducerOptions", keepDims=False),
    "reshape": lambda b, p: b.op("RESHAPE", [source(b, p), b.const(i32(1, 64, 4))]),
    "squeeze_after_mean": lambda b, p: b.op(
        "SQUEEZE", b.op("MEAN", [source(b, p), b.const(i32(1, 2))], "ReducerOptions", keepDims=True),
        "SqueezeOptions", squeezeDims=[1, 2]),
    "expand_dims": lambda b, p: b.op("EXPAND_DIMS", [source(b, p), b.const(i32(-1))]),
    "concat_channels": lambda b, p: b.op(
        "CONCATENATION", [source(b, p), b.input(SHAPE)], "ConcatenationOptions", axis=3),
    "concat_rows_const": lambda b, p: b.op(
        "CONCATENATION", [source(b, p), b.const(w(1, 2, 8, 4))], "ConcatenationOptions", axis=1),
    "split_channels": lambda b, p: b.op("SPLIT", [b.const(i32(3)), source(b, p)], "SplitOptions", n_out=2, numSplits=2),
    "split_v_rows": lambda b, p: b.op(
        "SPLIT_V", [source(b, p), b.const(i32(3, -1)), b.const(i32(1))], "SplitVOptions", n_out=2, numSplits=2),
    "strided_slice_masks": lambda b, p: _strided(b, p, 0),
    "strided_slice_shrink": lambda b, p: _strided(b, p, 1),
    "strided_slice_ellipsis_first": _sliced((0, 1), (0, 4), (1, 2), ellipsisMask=1),  # x[..., 1:4:2]
    "strided_slice_ellipsis_middle": _sliced((0, 0, 3), (1, 0, 1), (1, 1, -1), ellipsisMask=2),  # x[0:1, ..., 3:1:-1]
    "strided_slice_new_axis": _sliced((0, 0, 2), (0, 1, 6), (1, 1, 1), newAxisMask=1),  # x[None, 0:1, 2:6]
    "strided_slice_ellipsis_new_axis_shrink": _sliced((0, 0, 2), (0, 0, 3), (1, 1, 1), ellipsisMask=1,
                                                      newAxisMask=2, shrinkAxisMask=4),  # x[..., None, 2]
    "strided_slice_short_spec": _sliced((0, 2), (1, 7), (1, 2)),  # x[0:1, 2:7:2], the rest whole
    "slice": lambda b, p: b.op("SLICE", [source(b, p), b.const(i32(0, 2, 1, 1)), b.const(i32(1, 4, -1, 2))]),
    "pad_folded_into_conv": lambda b, p: [conv(b, b.op(
        "PAD", [source(b, p), b.const(i32(0, 0, 1, 2, 0, 1, 0, 0).reshape(4, 2))])[0], 5, 3, 1, 2, 1)],
    "pad_folded_into_depthwise": lambda b, p: b.op(
        "DEPTHWISE_CONV_2D", [b.op("PAD", [source(b, p), b.const(i32(0, 0, 1, 1, 1, 1, 0, 0).reshape(4, 2))])[0],
                              b.const(w(1, 3, 3, 4)), b.const(w(4))], "DepthwiseConv2DOptions",
        padding=1, strideW=2, strideH=2, depthMultiplier=1, dilationWFactor=1, dilationHFactor=1),
    "pad": lambda b, p: b.op("PAD", [source(b, p), b.const(i32(0, 0, 1, 2, 2, 1, 0, 0).reshape(4, 2))]),
    "padv2_value": lambda b, p: b.op(
        "PADV2", [source(b, p), b.const(i32(0, 0, 1, 1, 0, 2, 0, 0).reshape(4, 2)), b.const(np.float32(0.5))]),
    "mirror_pad_reflect": lambda b, p: b.op(
        "MIRROR_PAD", [source(b, p), b.const(i32(0, 0, 2, 1, 1, 2, 0, 0).reshape(4, 2))], "MirrorPadOptions", mode=0),
    "mirror_pad_symmetric": lambda b, p: b.op(
        "MIRROR_PAD", [source(b, p), b.const(i32(0, 0, 2, 1, 1, 2, 0, 0).reshape(4, 2))], "MirrorPadOptions", mode=1),
    "transpose": lambda b, p: b.op("TRANSPOSE", [source(b, p), b.const(i32(0, 2, 1, 3))]),
    "transpose_to_nchw": lambda b, p: b.op("TRANSPOSE", [source(b, p), b.const(i32(0, 3, 1, 2))]),
    "gather_channels": lambda b, p: b.op("GATHER", [source(b, p), b.const(i32(3, 0, 1))], "GatherOptions", axis=3),
    "gather_batch_dims": lambda b, p: b.op("GATHER", [source(b, p), b.const(RNG.integers(0, 8, (1, 5)).astype(np.int32))],
                                           "GatherOptions", axis=1, batchDims=1),
    "gather_batch_dims_inner_axis": lambda b, p: b.op(
        "GATHER", [b.input([2, 3, 6, 4]), b.const(RNG.integers(0, 6, (2, 3, 2)).astype(np.int32))],
        "GatherOptions", axis=-2, batchDims=-1),  # batch over (2, 3), indices (2, 3, 2)
    "gather_batch_dims_middle": lambda b, p: b.op(
        "GATHER", [b.input([2, 3, 5, 4]), b.const(RNG.integers(0, 5, (2, 2, 3)).astype(np.int32))],
        "GatherOptions", axis=2, batchDims=1),  # an axis between the batch and the gathered one
    "gather_nd": lambda b, p: b.op("GATHER_ND", [source(b, p), b.const(i32(0, 1, 0, 3, 0, 7).reshape(3, 2))]),
    "softmax_beta": unary("SOFTMAX", "SoftmaxOptions", beta=0.5),
    "log_softmax": unary("LOG_SOFTMAX"),
    "logistic": unary("LOGISTIC"),
    "tanh": unary("TANH"),
    "relu": unary("RELU"),
    "relu6": unary("RELU6"),
    "leaky_relu": unary("LEAKY_RELU", "LeakyReluOptions", alpha=0.1),
    "prelu": lambda b, p: b.op("PRELU", [source(b, p), b.const(w(1, 1, 4))]),
    "hard_swish": unary("HARD_SWISH"),
    "gelu": unary("GELU", "GeluOptions", approximate=False),
    "gelu_tanh": unary("GELU", "GeluOptions", approximate=True),
    "resize_bilinear": resize("RESIZE_BILINEAR", (12, 13), False, False),
    "resize_bilinear_align_corners": resize("RESIZE_BILINEAR", (12, 13), True, False),
    "resize_bilinear_half_pixel": resize("RESIZE_BILINEAR", (16, 5), False, True),
    "resize_nearest": resize("RESIZE_NEAREST_NEIGHBOR", (16, 12), False, False),
    "resize_nearest_align_corners": resize("RESIZE_NEAREST_NEIGHBOR", (13, 5), True, False),
    "resize_nearest_half_pixel": resize("RESIZE_NEAREST_NEIGHBOR", (12, 5), False, True),
    "depth_to_space": unary("DEPTH_TO_SPACE", "DepthToSpaceOptions", blockSize=2),
    "space_to_depth": unary("SPACE_TO_DEPTH", "SpaceToDepthOptions", blockSize=2),
    "l2_normalization": unary("L2_NORMALIZATION", "L2NormOptions"),
    "arg_max": lambda b, p: b.op("ARG_MAX", [source(b, p), b.const(i32(3))], "ArgMaxOptions",
                                 out_dtype=np.int32, outputType=2),
    "cast": lambda b, p: b.op("CAST", [source(b, p)], out_dtype=np.int32),
    "l2_pool": lambda b, p: [pool(b, "L2_POOL_2D", source(b, p), 2, 2, 1)],
    "sqrt": on_positive("SQRT"),
    "rsqrt": on_positive("RSQRT"),
    "log": on_positive("LOG"),
    "pow": on_positive("POW", np.float32(1.5)),
    "floor_div": on_positive("FLOOR_DIV", np.float32(0.3)),
    "exp": unary("EXP"),
    "neg": unary("NEG"),
    "floor": unary("FLOOR"),
    "ceil": unary("CEIL"),
    "round": unary("ROUND"),
    "sin": unary("SIN"),
    "cos": unary("COS"),
    "elu": unary("ELU"),
    "sign": unary("SIGN"),
    "square": unary("SQUARE"),
    "relu_n1_to_1": unary("RELU_N1_TO_1"),
    "relu_0_to_1": unary("RELU_0_TO_1"),
    "maximum": lambda b, p: b.op("MAXIMUM", [source(b, p), b.input(SHAPE)]),
    "minimum": lambda b, p: b.op("MINIMUM", [source(b, p), b.const(w(4))]),
    "squared_difference": lambda b, p: b.op("SQUARED_DIFFERENCE", [source(b, p), b.input(SHAPE)]),
    "select_v2": lambda b, p: b.op("SELECT_V2", [
        b.op("LESS", [b.input(SHAPE), b.const(np.float32(0.0))], out_dtype=np.bool_)[0], source(b, p), b.input(SHAPE)]),
    "logical": logical,
    "reduce_min_keep": lambda b, p: b.op("REDUCE_MIN", [source(b, p), b.const(i32(2, 3))], "ReducerOptions", keepDims=True),
    "reduce_prod": lambda b, p: b.op("REDUCE_PROD", [source(b, p), b.const(i32(2))], "ReducerOptions", keepDims=False),
    "arg_min_rows": lambda b, p: b.op("ARG_MIN", [source(b, p), b.const(i32(1))], "ArgMinOptions",
                                      out_dtype=np.int64, outputType=4),
    "shape": lambda b, p: b.op("SHAPE", [source(b, p)], "ShapeOptions", out_dtype=np.int32, outType=2),
    "pack": lambda b, p: b.op("PACK", [b.input([3, 4]), b.input([3, 4])], "PackOptions", valuesCount=2, axis=1),
    "unpack": lambda b, p: b.op("UNPACK", [b.input([2, 3, 4])], "UnpackOptions", n_out=3, num=3, axis=1),
    "tile": lambda b, p: b.op("TILE", [source(b, p), b.const(i32(1, 2, 1, 3))]),
    "space_to_batch_nd": lambda b, p: b.op("SPACE_TO_BATCH_ND", [source(b, p), b.const(i32(2, 2)),
                                                                b.const(i32(1, 1, 0, 2).reshape(2, 2))]),
    "batch_to_space_nd": lambda b, p: b.op("BATCH_TO_SPACE_ND", [b.input([4, 4, 4, 3]), b.const(i32(2, 2)),
                                                                b.const(i32(0, 1, 1, 0).reshape(2, 2))]),
    "dilated_conv_as_tf_writes_it": lambda b, p: b.op("BATCH_TO_SPACE_ND", [
        conv(b, b.op("SPACE_TO_BATCH_ND", [source(b, p), b.const(i32(2, 2)), b.const(i32(2, 2, 2, 2).reshape(2, 2))])[0],
             4, 3, 1, 1, 0), b.const(i32(2, 2)), b.const(i32(0, 0, 0, 0).reshape(2, 2))]),
    "local_response_normalization": unary("LOCAL_RESPONSE_NORMALIZATION", "LocalResponseNormalizationOptions",
                                          radius=2, bias=1.5, alpha=0.3, beta=0.6),
    "embedding_lookup": lambda b, p: b.op("EMBEDDING_LOOKUP", [b.const(i32(3, 0, 3, 1)), b.input([5, 6])]),
    "add_n": lambda b, p: b.op("ADD_N", [source(b, p), b.input(SHAPE), b.const(w(*SHAPE))]),
    "top_k": lambda b, p: top_k(b, p),
    "fill": lambda b, p: b.op("FILL", [b.const(i32(2, 3)), b.const(np.float32(1.25))]),
    "zeros_like": unary("ZEROS_LIKE"),
    "broadcast_to": lambda b, p: b.op("BROADCAST_TO", [source(b, p), b.const(i32(2, 8, 8, 4))]),
    "cumsum_channels": lambda b, p: b.op("CUMSUM", [source(b, p), b.const(i32(3))], "CumsumOptions"),
    "cumsum_rows_exclusive_reverse": lambda b, p: b.op("CUMSUM", [source(b, p), b.const(i32(1))], "CumsumOptions",
                                                       exclusive=True, reverse=True),
    "reverse_v2": lambda b, p: b.op("REVERSE_V2", [source(b, p), b.const(i32(1, 2))]),
    "range": lambda b, p: b.op("RANGE", [b.const(np.float32(-1.0)), b.const(np.float32(2.0)), b.const(np.float32(0.25))],
                               out_shapes=[[12]]),
    "one_hot": lambda b, p: b.op("ONE_HOT", [b.const(i32(0, 3, 1, 4, 2).reshape(5, 1)), b.const(np.int32(4)),
                                              b.const(np.float32(2.5)), b.const(np.float32(-1.0))], "OneHotOptions",
                                 axis=1),
    "reduce_any_all": lambda b, p: [
        b.op(op, [b.op("GREATER", [source(b, p), b.const(np.float32(0.3))], out_dtype=np.bool_)[0], b.const(i32(1, 2))],
             "ReducerOptions", out_dtype=np.bool_, keepDims=keep)[0]
        for op, keep in (("REDUCE_ANY", False), ("REDUCE_ALL", True))],
    "segment_sum": lambda b, p: b.op("SEGMENT_SUM", [b.input([4, 3]), b.const(i32(0, 0, 1, 1))]),
    **{f"unsorted_segment_{k}": (lambda op: lambda b, p: b.op(op, [b.input([2, 3, 4]), b.const(i32(1, 0, 3, 1, 0, 1).reshape(2, 3)),
                                                                   b.const(np.int32(5))]))(f"UNSORTED_SEGMENT_{k.upper()}")
       for k in ("sum", "prod", "max", "min")},
    "where": lambda b, p: b.op("WHERE", [b.op("GREATER", [source(b, p), b.const(np.float32(0.0))], out_dtype=np.bool_)[0]],
                               out_dtype=np.int64),
    "scatter_nd": lambda b, p: b.op("SCATTER_ND", [b.const(i32(1, 0, 3, 1).reshape(4, 1)), b.input([4, 3]),
                                                   b.const(i32(5, 3))], out_shapes=[[5, 3]]),
}
# LiteRT's calibrator does not quantise these ops (CAST, DIV, ADD_N, TOPK_V2, ...), leaves PADV2's
# pad value float (which LiteRT's own int8 PADV2 then refuses), or the model has no float input.
FLOAT_ONLY = {"range", "one_hot", "reduce_any_all", "scatter_nd", "segment_sum", "unsorted_segment_sum",
              "unsorted_segment_prod", "unsorted_segment_max", "unsorted_segment_min", "where", "cumsum_channels", "cumsum_rows_exclusive_reverse",
              "fill", "add_n", "top_k", "embedding_lookup", "local_response_normalization", "zeros_like",
              "transpose_conv_computed_shape", "cast", "div_const", "padv2_value", "arg_min_rows", "ceil", "cos", "elu", "floor", "floor_div",
              "l2_pool", "logical", "neg", "pow", "relu_0_to_1", "round", "select_v2", "sign", "sin", "square"}


def build_case(name: str, path: str) -> bytes:
    b = ModelBuilder()
    outs = CASES[name](b, path)
    b.output(*outs)
    return b.build()


def compare_float(model: bytes) -> None:
    feeds = random_feeds(model)
    ref = litert_run(model, feeds)
    m = walle_core.load(model, backend="reference")
    got = m.run(dict(zip(m.input_names, feeds, strict=True)))
    for name, r in zip(m.output_names, ref, strict=True):
        if r.dtype.kind == "f":
            assert rel_error(got[name], r) <= 1e-5, name
        else:
            np.testing.assert_array_equal(got[name], r)


@pytest.mark.parametrize("path", ["native", "nchw"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_float_op_matches_litert(name: str, path: str) -> None:
    compare_float(build_case(name, path))


@pytest.mark.parametrize("path", ["native", "nchw"])
@pytest.mark.parametrize("name", sorted(set(CASES) - FLOAT_ONLY))
def test_int8_op_matches_litert(name: str, path: str) -> None:
    model = quantize(build_case(name, path))
    graph = import_model(model)
    assert graph.inputs[0].type.dtype == np.int8  # int8 in, int8 out: nothing dequantised at the edges
    feeds = random_feeds(model)
    ref = litert_run(model, feeds)
    m = walle_core.load(model, backend="reference")
    got = m.run(dict(zip(m.input_names, feeds, strict=True)))
    for out, r in zip(m.output_names, ref, strict=True):
        assert got[out].dtype == r.dtype
        assert lsb_error(got[out], r) <= 1, out


def test_quantize_dequantize_ops_per_tensor_and_per_channel() -> None:
    b = ModelBuilder()
    x = b.input(SHAPE, name="x")
    (q,) = b.op("QUANTIZE", [x], out_dtype=np.int8, out_quant=(0.02, 3, 0))
    (d,) = b.op("DEQUANTIZE", [q])
    wq = np.asarray(RNG.integers(-127, 128, (6, 1, 1, 4)), np.int8)
    weights = b.const(wq, quant=(np.linspace(0.01, 0.05, 6), np.zeros(6), 0))
    (wf,) = b.op("DEQUANTIZE", [weights])
    (y,) = b.op("CONV_2D", [d, wf, b.const(w(6))], "Conv2DOptions", padding=0, strideW=1, strideH=1,
                dilationWFactor=1, dilationHFactor=1)
    b.output(q, y)
    model = b.build()
    graph = import_model(model)
    dq_axes = [n.attrs.get("axis") for n in graph.nodes if n.op_type == "DequantizeLinear"]
    assert 0 in dq_axes  # the per-channel weight keeps its own axis after the OHWI -> OIHW change
    compare_float(model)


@pytest.mark.parametrize("name", ["pad_folded_into_conv", "pad_folded_into_depthwise"])
def test_spatial_pad_before_valid_conv_becomes_conv_pads(name: str) -> None:
    graph = import_model(build_case(name, "native"))
    ops = [n.op_type for n in graph.nodes]
    assert "Pad" not in ops, ops
    (conv_node,) = [n for n in graph.nodes if n.op_type == "Conv"]
    assert "auto_pad" not in conv_node.attrs and any(conv_node.attrs["pads"])
