"""cpu backend specifics: availability, kernel variants, threads, errors, concurrency, fusion."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from walle_core import atomic as A
from walle_core.backend import Program
from walle_core.decompose.builder import Builder
from walle_core.errors import WalleError
from walle_core.plugins import registry

cpu_entry = {e.name: e for e in registry().entries()}["cpu"]
pytestmark = pytest.mark.skipif(not cpu_entry.availability.available,
                                reason=f"cpu backend unavailable: {cpu_entry.availability.reason}")


def _mlp(b: Builder, x: A.Tensor, w: np.ndarray) -> A.Tensor:
    h = b.matmul(x, b.const(w))
    return b.unary("tanh", b.binary("add", h, b.const(np.float32(0.5))))


def _compile(ops: list[A.Op], ins: list[A.Tensor], outs: list[A.Tensor], threads: int = 2):  # type: ignore[no-untyped-def]
    cpu = registry().get("cpu")
    return cpu.compile(Program([(op, cpu.algorithms(op)[0]) for op in ops], ins, outs), threads=threads)


def test_device_reports_kernel_variant() -> None:
    dev = registry().get("cpu").device_info()
    assert dev.details["kernels"] in ("avx512", "avx2", "neon", "scalar")


def test_missing_extension_gives_reason_not_crash(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Simulate an install without a compiler: the extension cannot be imported.
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def fake(name, *a, **k):\n"
        "    if name == 'walle_cpu._kernels': raise ImportError('no compiled module')\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = fake\n"
        "from walle_cpu.plugin import CpuBackend\n"
        "a = CpuBackend().availability()\n"
        "assert not a.available and 'C kernels' in a.reason, a\n"
        "print('OK', a.reason)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_give_same_result(threads: int) -> None:
    rng = np.random.default_rng(0)
    b = Builder(fold=lambda op: None)
    x = b.tensor((64, 96), np.float32)
    w = rng.standard_normal((96, 80)).astype(np.float32)
    y = _mlp(b, x, w)
    exe = _compile(b.ops, [x], [y], threads)
    xv = rng.standard_normal((64, 96)).astype(np.float32)
    got = exe.run([xv])[0]
    np.testing.assert_allclose(got.reshape(64, 80), np.tanh(xv @ w + 0.5), rtol=1e-5, atol=1e-5)


def test_concurrent_runs_share_one_executable() -> None:
    rng = np.random.default_rng(1)
    b = Builder(fold=lambda op: None)
    x = b.tensor((33, 40), np.float32)
    w = rng.standard_normal((40, 300)).astype(np.float32)
    y = _mlp(b, x, w)
    exe = _compile(b.ops, [x], [y])
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        r = np.random.default_rng(seed)
        try:
            for _ in range(30):
                xv = r.standard_normal((33, 40)).astype(np.float32)
                got = exe.run([xv])[0].reshape(33, 300)
                np.testing.assert_allclose(got, np.tanh(xv @ w + 0.5), rtol=1e-5, atol=1e-5)
        except BaseException as exc:
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[0]


def test_gather_out_of_range_raises() -> None:
    b = Builder(fold=lambda op: None)
    data = b.tensor((4, 3), np.float32)
    idx = b.tensor((2,), np.int64)
    y = b.gather_rows(data, idx, 4, 3)
    exe = _compile(b.ops, [data, idx], [y])
    with pytest.raises(WalleError, match="out of range"):
        exe.run([np.zeros((4, 3), np.float32), np.array([1, 4], np.int64)])
    np.testing.assert_array_equal(
        exe.run([np.arange(12, dtype=np.float32).reshape(4, 3), np.array([-1, 0], np.int64)])[0],
        [[9, 10, 11], [0, 1, 2]])


def test_integer_division_by_zero_raises() -> None:
    b = Builder(fold=lambda op: None)
    p = b.tensor((3,), np.int32)
    q = b.tensor((3,), np.int32)
    y = b.binary("div", p, q)
    exe = _compile(b.ops, [p, q], [y])
    with pytest.raises(WalleError, match="division by zero"):
        exe.run([np.array([1, 2, 3], np.int32), np.array([1, 0, 1], np.int32)])


def test_elementwise_chain_is_fused() -> None:
    from walle_cpu.compiler import CpuExecutable

    b = Builder(fold=lambda op: None)
    x = b.tensor((5, 7), np.float32)
    bias = b.tensor((7,), np.float32)
    y = b.unary("sigmoid", b.binary("mul", b.unary("relu", b.binary("add", x, bias)), x))
    exe = _compile(b.ops, [x, bias], [y])
    assert isinstance(exe, CpuExecutable) and exe._n_ops == 1  # four ops, one C descriptor
    xv = np.linspace(-3, 3, 35, dtype=np.float32).reshape(5, 7)
    bv = np.linspace(-1, 1, 7, dtype=np.float32)
    want = 1 / (1 + np.exp(-(np.maximum(xv + bv, 0) * xv)))
    np.testing.assert_allclose(exe.run([xv, bv])[0], want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [(1, 3, 40001), (2, 70001)])
def test_long_rows_of_a_fused_chain_are_split_across_threads(shape: tuple[int, ...]) -> None:
    """Collapsed dims leave few, long rows: the chain splits them by columns (odd lengths,
    a bias broadcast over rows) and still matches numpy."""
    b = Builder(fold=lambda op: None)
    x = b.tensor(shape, np.float32)
    bias = b.tensor(shape[-1:], np.float32)
    y = b.binary("mul", b.unary("erf", b.binary("add", x, bias)), x)
    exe = _compile(b.ops, [x, bias], [y], threads=3)
    rng = np.random.default_rng(5)
    xv = rng.standard_normal(shape).astype(np.float32)
    bv = rng.standard_normal(shape[-1:]).astype(np.float32)
    erf = np.vectorize(math.erf, otypes=[np.float64])
    want = erf((xv + bv).astype(np.float64)) * xv
    np.testing.assert_allclose(exe.run([xv, bv])[0], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("shape", [(2, 3, 700, 16), (1, 2, 45, 24), (4, 33, 8)])
def test_short_rows_of_a_fused_chain_run_in_groups(shape: tuple[int, ...], threads: int) -> None:
    """Short rows (a blocked layout's 16 channels) with a vector repeated on every row (a
    per-channel slope) run many rows per block, the vector tiled: row counts that are not a
    whole number of blocks, several vectors, threads; the same numbers as numpy."""
    b = Builder(fold=lambda op: None)
    vshape = (*shape[:-2], 1, shape[-1])
    x, a, c = b.tensor(shape, np.float32), b.tensor(vshape, np.float32), b.tensor(vshape, np.float32)
    y = b.binary("add", b.binary("max", b.binary("mul", x, a), x), c)
    exe = _compile(b.ops, [x, a, c], [y], threads=threads)
    assert exe._n_ops == 1
    rng = np.random.default_rng(6)
    xv = rng.standard_normal(shape).astype(np.float32)
    av, cv = (rng.standard_normal(vshape).astype(np.float32) for _ in range(2))
    np.testing.assert_array_equal(exe.run([xv, av, cv])[0], np.maximum(xv * av, xv) + cv)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("shape", [(256, 24, 24), (3, 45, 7), (2, 5, 33, 16)])
def test_short_rows_with_a_value_per_row_run_in_groups(shape: tuple[int, ...], threads: int) -> None:
    """A bilinear resize's blend along the height, a + (b - a) * w with one weight per row
    (broadcast along the row), also runs many short rows per block, each row's weight repeated
    in a tile: partial blocks, threads; the same numbers as numpy."""
    b = Builder(fold=lambda op: None)
    wshape = (*shape[:-1], 1)
    x0, x1, w = b.tensor(shape, np.float32), b.tensor(shape, np.float32), b.tensor(wshape, np.float32)
    y = b.binary("add", x0, b.binary("mul", b.binary("sub", x1, x0), w))
    exe = _compile(b.ops, [x0, x1, w], [y], threads=threads)
    assert exe._n_ops == 1
    rng = np.random.default_rng(8)
    v0, v1 = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    wv = rng.uniform(0, 1, wshape).astype(np.float32)
    np.testing.assert_array_equal(exe.run([v0, v1, wv])[0], v0 + (v1 - v0) * wv)


@pytest.mark.parametrize("fn", ["sum", "max", "min"])
def test_long_contiguous_reductions_match_numpy_with_nan_and_inf(fn: str) -> None:
    """The vectorised fp32 path (sum in double lanes, NaN-propagating max/min)."""
    rng = np.random.default_rng(6)
    xv = rng.standard_normal((7, 1003)).astype(np.float32)
    xv[2, 500], xv[3, 17], xv[4, 1002], xv[5, 40] = np.nan, np.inf, -np.inf, np.nan
    b = Builder(fold=lambda op: None)
    x = b.tensor(xv.shape, np.float32)
    y = b.tensor((7,), np.float32)
    b.emit(A.Reduce([x], [y], fn=fn, outer=7, n=1003, inner=1))
    got = _compile(b.ops, [x], [y]).run([xv])[0]
    want = getattr(np, fn)(xv.astype(np.float64), axis=1).astype(np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_lstm_cells_run_as_one_fused_kernel(tmp_path, direction: str) -> None:  # type: ignore[no-untyped-def]
    """The plain LSTM cell is a ``lstm_cell`` composite the cpu backend claims (one kernel
    per step instead of ~10 ops); with uneven sequence lengths it still matches the reference."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import walle_core

    rng = np.random.default_rng(8)
    dirs, hid, inp, seq, batch = (2 if direction == "bidirectional" else 1), 5, 3, 6, 3
    init = [numpy_helper.from_array(rng.uniform(-1, 1, shape).astype(np.float32), name)
            for name, shape in (("W", (dirs, 4 * hid, inp)), ("R", (dirs, 4 * hid, hid)),
                                ("B", (dirs, 8 * hid)))]
    init.append(numpy_helper.from_array(np.array([6, 2, 4], np.int32), "L"))
    node = helper.make_node("LSTM", ["X", "W", "R", "B", "L"], ["Y", "Yh", "Yc"], hidden_size=hid,
                            direction=direction)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                                          (seq, batch, inp))],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                               for n in ("Y", "Yh", "Yc")], init)
    path = tmp_path / "lstm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)
    feeds = {"X": rng.uniform(-1, 1, (seq, batch, inp)).astype(np.float32)}
    model = walle_core.load(path, backend="cpu")
    ops, _ = model.atomic_ops(feeds)
    assert sum(isinstance(op, A.Composite) and op.name == "lstm_cell" for op in ops) == seq * dirs
    assert registry().get("cpu").claims("lstm_cell")
    got = model.run(feeds)
    assert not model.dropped, model.dropped
    want = walle_core.load(path, backend="reference").run(feeds)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("kind", "direction", "lbr", "initial"), [
    ("LSTM", "bidirectional", 0, True), ("LSTM", "reverse", 0, False), ("LSTM", "bidirectional", 0, False),
    ("GRU", "bidirectional", 1, True), ("GRU", "forward", 0, True), ("GRU", "reverse", 0, False),
    ("GRU", "bidirectional", 0, False),
])
@pytest.mark.parametrize("threads", [1, 2])
def test_full_length_recurrences_run_as_one_kernel_per_layer(
        tmp_path: Path, kind: str, direction: str, lbr: int, initial: bool, threads: int) -> None:
    """Every row at full length: the layer is one ``lstm_sequence`` / ``gru_sequence``
    composite over its directions (both of a bidirectional one, which run at once on two
    threads) that the cpu backend claims (recurrent.c), matching the unrolled reference."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import walle_core

    rng = np.random.default_rng(11)
    gates = 4 if kind == "LSTM" else 3
    dirs, hid, inp, seq, batch = (2 if direction == "bidirectional" else 1), 20, 7, 9, 3
    shapes = [("W", (dirs, gates * hid, inp)), ("R", (dirs, gates * hid, hid)),
              ("B", (dirs, 2 * gates * hid))]
    states = ["h0", "c0"][: 2 if kind == "LSTM" else 1] if initial else []
    shapes += [(s, (dirs, batch, hid)) for s in states]
    init = [numpy_helper.from_array(rng.uniform(-1, 1, shape).astype(np.float32), name)
            for name, shape in shapes]
    outs = ["Y", "Yh", "Yc"][: 3 if kind == "LSTM" else 2]
    attrs: dict[str, Any] = {"linear_before_reset": lbr} if kind == "GRU" else {}
    node = helper.make_node(kind, ["X", "W", "R", "B", *([""] if states else []), *states], outs,
                            hidden_size=hid, direction=direction, **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                                          (seq, batch, inp))],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outs],
                              init)
    path = tmp_path / "rnn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)
    feeds = {"X": rng.uniform(-1, 1, (seq, batch, inp)).astype(np.float32)}
    model = walle_core.load(path, backend="cpu", threads=threads)
    ops, _ = model.atomic_ops(feeds)
    name = f"{kind.lower()}_sequence"
    layers = [op for op in ops if isinstance(op, A.Composite) and op.name == name]
    assert len(layers) == 1 and layers[0].attrs["directions"] == dirs
    assert registry().get("cpu").claims(name)
    got = model.run(feeds)
    assert not model.dropped, model.dropped
    want = walle_core.load(path, backend="reference").run(feeds)
    for out in want:
        np.testing.assert_allclose(got[out], want[out], rtol=1e-5, atol=1e-5)


def test_unsupported_dtype_falls_back_with_no_algorithm() -> None:
    b = Builder(fold=lambda op: None)
    x = b.tensor((4,), np.float16)
    b.unary("exp", x)
    assert registry().get("cpu").algorithms(b.ops[0]) == ()


def _gelu_graph(shared_intermediate: bool) -> tuple[Builder, A.Tensor, list[A.Tensor]]:
    """MatMul + bias row, then GELU spelled as exporters do: x * (1 + erf(x / sqrt2)) * 0.5."""
    rng = np.random.default_rng(9)
    b = Builder(fold=lambda op: None)
    a = b.tensor((6, 8), np.float32)
    x = b.binary("add", b.const(rng.standard_normal(5).astype(np.float32)),
                 b.matmul(a, b.const(rng.standard_normal((8, 5)).astype(np.float32))))
    e = b.unary("erf", b.binary("div", x, b.const(np.float32(np.sqrt(2.0)))))
    y = b.binary("mul", b.binary("mul", x, b.binary("add", e, b.const(np.float32(1.0)))),
                 b.const(np.float32(0.5)))
    return b, a, [y, e] if shared_intermediate else [y]


@pytest.mark.parametrize("shared", [False, True])
def test_exported_gelu_and_bias_fold_into_the_matmul(shared: bool) -> None:
    from walle_core.plan.planner import prepare

    b, a, outs = _gelu_graph(shared)
    exe = _compile(prepare(b.ops, registry().get("cpu"), {t.id for t in outs}), [a], outs)
    labels = exe._labels  # type: ignore[attr-defined]
    if shared:  # erf(...) is also an output: the pattern must stay as it is
        assert not any("+gelu" in lb for lb in labels), labels
    else:
        assert len(labels) == 1 and labels[0].startswith("MatMul+gelu"), labels
    av = np.random.default_rng(10).standard_normal((6, 8)).astype(np.float32)
    ref = registry().get("reference")
    want = ref.compile(Program([(op, ref.algorithms(op)[0]) for op in b.ops], [a], outs)).run([av])
    for g, w in zip(exe.run([av]), want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows_first", [True, False])
def test_few_row_transposes_split_by_columns_across_threads(rows_first: bool) -> None:
    """A region of few rows and many columns (a layout change of 8 channels) is split by
    columns across the threads; the result is the transpose numpy gives."""
    n, c = 40001, 8
    b = Builder(fold=lambda op: None)
    if rows_first:  # (n, c) -> (c, n)
        x, y = b.tensor((n, c), np.float32), b.tensor((c, n), np.float32)
        region = A.Region(0, 0, (0, 1, c), 0, (0, n, 1), (1, c, n))
    else:  # (c, n) -> (n, c)
        x, y = b.tensor((c, n), np.float32), b.tensor((n, c), np.float32)
        region = A.Region(0, 0, (0, n, 1), 0, (0, 1, c), (1, c, n))
    b.emit(A.Raster([x], [y], regions=[region]))
    xv = np.random.default_rng(11).standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(_compile(b.ops, [x], [y], threads=3).run([xv])[0], xv.T)


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("axis", [2, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_composite_runs_fused_and_other_dtypes_expand(log: bool, axis: int, dtype: type) -> None:
    """The cpu backend claims softmax/log_softmax: one kernel for float32 (rows along the
    last axis, or gathered when the axis is not last, -inf and NaN rows included); a dtype it
    has no kernel for runs the composite's expansion instead of failing to plan."""
    from walle_core.decompose.norm import softmax_axis
    from walle_core.plan.planner import prepare

    b = Builder(fold=lambda op: None)
    x = b.tensor((3, 70, 33), dtype)
    y = softmax_axis(b, x, axis, log)
    cpu, ref = registry().get("cpu"), registry().get("reference")
    ops = prepare(b.ops, cpu, {y.id})
    fused = [op for op in ops if isinstance(op, A.Composite)]
    assert len(fused) == (1 if dtype == np.float32 else 0), ops
    exe = cpu.compile(Program([(op, cpu.algorithms(op)[0]) for op in ops], [x], [y]), threads=3)
    xv = np.random.default_rng(12).standard_normal(x.shape).astype(dtype) * 5
    xv[0, :, 0] = -np.inf
    xv[1, 3, :] = np.nan
    rops = prepare(b.ops, ref, {y.id})
    want = ref.compile(Program([(op, ref.algorithms(op)[0]) for op in rops], [x], [y])).run([xv])[0]
    np.testing.assert_allclose(exe.run([xv])[0], want, rtol=1e-5, atol=1e-6)


def _recording(cls: type) -> type:
    """``cls`` (a backend class) keeping every program the planner hands its ``compile``."""

    class Recording(cls):
        def __init__(self) -> None:
            super().__init__()
            self.programs: list[Program] = []

        def compile(self, program: Program, *, threads: int | None = None):  # type: ignore[no-untyped-def]
            self.programs.append(program)
            return super().compile(program, threads=threads)

    return Recording


def test_planner_applies_the_rewrites_a_backend_opts_into() -> None:
    """The backend-neutral rewrites (walle_core.plan.rewrite) run in the planner, for backends
    that opt in: the cpu backend receives exported GELU and the bias already folded into one
    MatMul epilogue; the reference backend (no opt-in) receives the ops as lowered; both give
    the same values."""
    from walle_core.plan.planner import build_stage, prepare, run_stage
    from walle_core.plan.rewrite.fused import MatMulAct
    from walle_cpu.plugin import CpuBackend
    from walle_reference.plugin import ReferenceBackend

    b, a, outs = _gelu_graph(False)
    av = np.random.default_rng(13).standard_normal((6, 8)).astype(np.float32)
    got = {}
    for cls in (CpuBackend, ReferenceBackend):
        backend = _recording(cls)()
        stage = build_stage(b.ops, [backend], {t.id for t in outs}, threads=2)
        (program,) = backend.programs
        kinds = [type(op).__name__ for op, _ in program.ops]
        if cls is CpuBackend:
            assert kinds == ["MatMulAct"], kinds
            (mm, _), = program.ops
            assert isinstance(mm, MatMulAct) and mm.act.fn == "gelu" and len(mm.inputs) == 3
        else:
            lowered = prepare(b.ops, backend, {t.id for t in outs})
            assert kinds == [type(op).__name__ for op in lowered] and "erf" in {
                getattr(op, "fn", "") for op, _ in program.ops}, kinds
        table = {a.id: av}
        run_stage(stage, table)
        got[cls.name] = table[outs[0].id]
    np.testing.assert_allclose(got["cpu"], got["reference"], rtol=1e-5, atol=1e-6)


def test_rewrites_are_idempotent() -> None:
    """A rewritten op list rewritten again is unchanged: the cpu backend's compile may apply
    them to programs the planner already rewrote."""
    from walle_core.plan.planner import prepare
    from walle_core.plan.rewrite import apply
    from walle_cpu.plugin import CpuBackend

    b, _a, outs = _gelu_graph(False)
    cpu = registry().get("cpu")
    items = [(op, cpu.algorithms(op)[0]) for op in prepare(b.ops, cpu, {t.id for t in outs})]
    once = apply(items, {t.id for t in outs}, CpuBackend.rewrites)
    twice = apply(once, {t.id for t in outs}, CpuBackend.rewrites)
    assert len(once) < len(items)
    assert [(op, algo) for op, algo in twice] == [(op, algo) for op, algo in once]


def test_header_codes_name_the_atomic_functions() -> None:
    """The function codes Python reads from csrc/wl.h (through cffi) are named exactly like the
    atomic op set's kinds, so an op's ``fn`` maps to its C enum constant without a table."""
    from walle_cpu import codes

    assert set(codes.UNARY_FNS) == A.UNARY_KINDS
    assert set(codes.BINARY_FNS) == A.BINARY_KINDS
    assert set(codes.REDUCE_FNS) == A.REDUCE_KINDS
    assert set(codes.POOL_FNS) == {"max", "avg", "lp", "resize"}  # resize: the blocked 2-D resize pass
    assert len(set(codes.DTYPES.values())) == len(codes.DTYPES) == 12


@pytest.mark.parametrize(("groups", "og", "stride", "dilation", "size"),
                         [(9, 8, 1, 1, 6), (23, 8, 2, 1, 7), (3, 5, 1, 2, 9), (4, 6, 2, 1, 12), (2, 3, 1, 1, 5)])
def test_grouped_convs_run_as_implicit_gemm_and_match_the_reference(
        groups: int, og: int, stride: int, dilation: int, size: int) -> None:
    """Grouped convs (RegNet's 8-channel groups) on im2col+gemm: groups of 4 or more outputs take
    the implicit GEMM with micro-tile rows cut at group edges (odd group sizes, strides by
    phases, dilation), fewer outputs per group the im2col path; both match the reference."""
    cg, k, pad = 8, 3, dilation
    b = Builder(fold=lambda op: None)
    x = b.tensor((2, groups * cg, size, size), np.float32)
    out = (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    y = b.tensor((2, groups * og, out, out), np.float32)
    rng = np.random.default_rng(groups)
    w = b.const(rng.uniform(-0.5, 0.5, (groups * og, cg, k, k)).astype(np.float32))
    bias = b.const(rng.uniform(-0.5, 0.5, groups * og).astype(np.float32))
    b.emit(A.Conv2D([x, w, bias], [y], strides=(stride, stride), pads=(pad,) * 4,
                    dilations=(dilation, dilation), groups=groups, act=A.Activation("relu")))
    xv = rng.standard_normal(x.shape).astype(np.float32)
    ref = registry().get("reference")
    want = ref.compile(Program([(op, ref.algorithms(op)[0]) for op in b.ops], [x], [y])).run([xv])[0]
    exe = _compile(b.ops, [x], [y])
    assert exe._labels[0].startswith("Conv2D+relu im2col+gemm"), exe._labels
    np.testing.assert_allclose(exe.run([xv])[0], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("exponent", [2.0, 3.0, 3.5])
def test_pow_by_a_constant_matches_numpy(exponent: float) -> None:
    """Squares and cubes run as products (the tanh GELU's x^3 called powf per element: 15 of
    gpt2's 85 us); every exponent keeps pow's values at 0, -0, inf, -inf and NaN."""
    from onnx import TensorProto, helper, numpy_helper

    import walle_core

    g = helper.make_graph([helper.make_node("Pow", ["x", "e"], ["y"])], "pow",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1037])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.array(exponent, np.float32), "e")])
    model = walle_core.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 15)]).SerializeToString(),
                            backend="cpu")
    x = np.random.default_rng(7).uniform(-30, 30, 1037).astype(np.float32)
    x[:6] = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e13]
    got = model.run({"x": x})["y"]
    with np.errstate(all="ignore"):
        want = np.power(x.astype(np.float64), exponent).astype(np.float32)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.signbit(got[:4]), np.signbit(want[:4]))
    np.testing.assert_allclose(got, want, rtol=3e-7, atol=0)


@pytest.mark.parametrize(("src", "dst", "n"), [(np.int32, np.float32, 100003), (np.float32, np.uint8, 70001),
                                               (np.float32, np.float64, 65537), (np.int64, np.int8, 99999),
                                               (np.float32, np.int32, 1000)])
def test_casts_split_across_threads_match_numpy(src: type, dst: type, n: int) -> None:
    """A Cast of more than 32768 elements is split into chunks across the threads (one per
    thread, odd lengths leave a short last chunk); a small one runs on one thread."""
    b = Builder(fold=lambda op: None)
    x = b.tensor((n,), np.dtype(src))
    y = b.cast(x, np.dtype(dst))
    xv = np.random.default_rng(12).uniform(0, 250, n).astype(src)
    got = _compile(b.ops, [x], [y], threads=3).run([xv])[0]
    np.testing.assert_array_equal(got, xv.astype(dst))
