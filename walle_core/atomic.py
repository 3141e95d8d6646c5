"""The atomic op set: the whole contract a backend implements.

Every ONNX op is decomposed into these kinds (see ``walle_core.decompose``). Tensors here have
concrete shapes and are dense, C-contiguous buffers; broadcasting is expressed by element strides
(0 on broadcast axes) on the inputs of ``Binary`` and ``Select``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar

import numpy as np


@dataclass(eq=False)
class Tensor:
    """A dense tensor of the lowered program. ``value`` is set for plan-time constants."""

    shape: tuple[int, ...]
    dtype: np.dtype
    value: np.ndarray | None = None
    name: str = ""
    id: int = 0  # unique within one lowering, assigned by the Builder in creation order

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __repr__(self) -> str:
        const = " const" if self.value is not None else ""
        return f"T{self.id}{list(self.shape)}:{self.dtype}{const}"


class Kind(StrEnum):
    RASTER = "Raster"
    UNARY = "Unary"
    BINARY = "Binary"
    SELECT = "Select"
    CAST = "Cast"
    REDUCE = "Reduce"
    MATMUL = "MatMul"
    CONV2D = "Conv2D"
    POOL2D = "Pool2D"
    GATHER_SCATTER = "GatherScatter"
    SORT = "Sort"
    COMPOSITE = "Composite"


@dataclass(eq=False)
class Op:
    kind: ClassVar[Kind]
    inputs: list[Tensor]
    outputs: list[Tensor]

    @property
    def out(self) -> Tensor:
        return self.outputs[0]

    def flops(self) -> float:
        """Arithmetic work, for the cost model (element ops count as one flop)."""
        return float(sum(t.size for t in self.outputs))

    def bytes_moved(self) -> float:
        return float(sum(t.nbytes for t in self.inputs) + sum(t.nbytes for t in self.outputs))


# --------------------------------------------------------------------------- data movement


@dataclass(frozen=True)
class Region:
    """Copy ``src[so + z*ss0 + y*ss1 + x*ss2] -> dst[do + z*ds0 + y*ds1 + x*ds2]``.

    Offsets and strides are in elements; ``src`` indexes ``Raster.inputs``.
    """

    src: int
    src_offset: int
    src_strides: tuple[int, int, int]
    dst_offset: int
    dst_strides: tuple[int, int, int]
    size: tuple[int, int, int]


@dataclass(eq=False)
class Raster(Op):
    """The one data-movement primitive. Uncovered output elements take ``fill`` (or stay
    undefined when ``fill`` is None and the regions cover the output)."""

    kind: ClassVar[Kind] = Kind.RASTER
    regions: list[Region] = field(default_factory=list)
    fill: float | None = None
    # (shape, strides, offset) when this raster densely copies one N-D strided view of input 0;
    # lets the planner compose chains of views into one raster.
    view: tuple[tuple[int, ...], tuple[int, ...], int] | None = None

    def flops(self) -> float:
        return 0.0


# --------------------------------------------------------------------------- element-wise


UNARY_KINDS = frozenset(
    """abs neg exp log sqrt rsqrt reciprocal sin cos tan asin acos atan sinh cosh tanh asinh acosh
    atanh sigmoid relu erf floor ceil round sign not isnan isinf isposinf isneginf softplus
    softsign gelu gelu_tanh hardswish hardsigmoid leaky_relu elu selu celu clip mish
    thresholded_relu bitwise_not identity""".split()
)
BINARY_KINDS = frozenset(
    """add sub mul div pow max min mod fmod eq lt le gt ge and or xor bitand bitor bitxor shl shr
    atan2""".split()
)


@dataclass(eq=False)
class Unary(Op):
    """``out = f(x)`` element-wise; ``params`` holds alpha/beta/min/max where the kind needs them."""

    kind: ClassVar[Kind] = Kind.UNARY
    fn: str = "identity"
    params: tuple[float, ...] = ()


@dataclass(eq=False)
class Binary(Op):
    """``out = a (fn) b``; ``strides[i]`` are the element strides of input i over ``out.shape``."""

    kind: ClassVar[Kind] = Kind.BINARY
    fn: str = "add"
    strides: list[tuple[int, ...]] = field(default_factory=list)


@dataclass(eq=False)
class Select(Op):
    """``out = cond ? a : b`` with broadcast strides per input, like ``Binary``."""

    kind: ClassVar[Kind] = Kind.SELECT
    strides: list[tuple[int, ...]] = field(default_factory=list)


@dataclass(eq=False)
class Cast(Op):
    kind: ClassVar[Kind] = Kind.CAST


# --------------------------------------------------------------------------- reductions


REDUCE_KINDS = frozenset("sum prod max min argmax argmin cumsum cumprod".split())


@dataclass(eq=False)
class Reduce(Op):
    """Reduce the middle axis of ``x`` viewed as ``(outer, n, inner)``.

    ``argmax``/``argmin`` give int64 (first index on ties unless ``last_index``); ``cumsum`` and
    ``cumprod`` keep the axis (inclusive scan).
    """

    kind: ClassVar[Kind] = Kind.REDUCE
    fn: str = "sum"
    outer: int = 1
    n: int = 1
    inner: int = 1
    last_index: bool = False

    def flops(self) -> float:
        return float(self.outer * self.n * self.inner)


# --------------------------------------------------------------------------- linear algebra


@dataclass(eq=False)
class MatMul(Op):
    """Batched ``out[b] = op(a[b]) @ op(b[b]) + bias`` with ``out`` of shape (batch, m, n).

    Inputs: a, b[, bias]. ``a_batch_stride``/``b_batch_stride`` are element strides between
    batches (0 broadcasts one matrix). ``bias`` has n elements (or m*n, ``bias_full``).
    """

    kind: ClassVar[Kind] = Kind.MATMUL
    batch: int = 1
    m: int = 1
    n: int = 1
    k: int = 1
    trans_a: bool = False
    trans_b: bool = False
    a_batch_stride: int = 0
    b_batch_stride: int = 0
    bias_full: bool = False

    def flops(self) -> float:
        return 2.0 * self.batch * self.m * self.n * self.k


@dataclass(frozen=True)
class Activation:
    """A fused activation applied by a kernel to its output (a ``Unary`` kind and params)."""

    fn: str = "identity"
    params: tuple[float, ...] = ()


@dataclass(eq=False)
class Conv2D(Op):
    """NCHW convolution. Inputs: x (N,C,H,W), w (O, C/groups, KH, KW)[, bias (O,)].

    ``pads`` = (top, left, bottom, right); ``act`` is fused after the bias.
    """

    kind: ClassVar[Kind] = Kind.CONV2D
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    groups: int = 1
    act: Activation = Activation()

    def flops(self) -> float:
        o = self.out.shape
        w = self.inputs[1].shape
        return 2.0 * math.prod(o) * w[1] * w[2] * w[3]


@dataclass(eq=False)
class Pool2D(Op):
    """NCHW pooling: ``fn`` in {max, avg, lp}. Padding never wins a max; ``count_include_pad``
    decides the average's divisor. ``p`` is the Lp norm order."""

    kind: ClassVar[Kind] = Kind.POOL2D
    fn: str = "max"
    kernel: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    count_include_pad: bool = False
    p: int = 2

    def flops(self) -> float:
        return float(self.out.size * self.kernel[0] * self.kernel[1])


# --------------------------------------------------------------------------- index-driven


@dataclass(eq=False)
class GatherScatter(Op):
    """Row moves driven by an int64 index vector; data is viewed as ``(rows, block)``.

    gather:  inputs (data, idx)          out[i, :] = data[idx[i], :]           out (k, block)
    scatter: inputs (data, idx, updates) out = data; out[idx[i], :] (reduce)= updates[i, :]
    Negative indices count from the end; out-of-range indices raise.
    """

    kind: ClassVar[Kind] = Kind.GATHER_SCATTER
    mode: str = "gather"
    rows: int = 1
    block: int = 1
    reduction: str = "none"


@dataclass(eq=False)
class Sort(Op):
    """Stable argsort of the middle axis of ``x`` as ``(outer, n, inner)``; output int64 indices."""

    kind: ClassVar[Kind] = Kind.SORT
    outer: int = 1
    n: int = 1
    inner: int = 1
    descending: bool = False

    def flops(self) -> float:
        return float(self.outer * self.inner * self.n * max(1.0, math.log2(max(self.n, 1))))


# --------------------------------------------------------------------------- composites


@dataclass(eq=False)
class Composite(Op):
    """A pattern a backend may claim (e.g. ``softmax``, ``layer_norm``); ``expansion`` is the
    equivalent atomic ops, run by backends that do not claim it."""

    kind: ClassVar[Kind] = Kind.COMPOSITE
    name: str = ""
    attrs: dict[str, object] = field(default_factory=dict)
    expansion: list[Op] = field(default_factory=list)

    def flops(self) -> float:
        return sum(op.flops() for op in self.expansion)
