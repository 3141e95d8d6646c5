"""Engine behaviour on small hand-built ONNX graphs: planning, memory, sync points, threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import walle_core
from walle_core import atomic as A
from walle_core.decompose.builder import Builder, strided_regions
from walle_core.plan.fuse import is_identity_copy
from walle_core.plan.memory import plan_arena

F = TensorProto.FLOAT


def model(nodes, inputs, outputs, inits=(), opset=17) -> bytes:
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


def vi(name: str, shape, dtype=F):
    return helper.make_tensor_value_info(name, dtype, shape)


def test_mlp_matches_numpy_and_replans_on_new_batch():
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((8, 16), np.float32), rng.standard_normal(16).astype(np.float32)
    w2 = rng.standard_normal((16, 3), np.float32)
    m = walle_core.load(model(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])],
        [vi("x", ["batch", 8])], [vi("y", ["batch", 3])],
        [("w1", w1), ("b1", b1), ("w2", w2)]))
    assert m.input_names == ["x"] and m.output_names == ["y"]
    assert m.inputs == {"x": "float32[batch,8]"}
    for batch in (1, 5, 2):
        x = rng.standard_normal((batch, 8), np.float32)
        ref = np.maximum(x @ w1 + b1, 0) @ w2
        np.testing.assert_allclose(m.run({"x": x})["y"], ref, rtol=1e-5, atol=1e-5)


def test_memory_planner_reuses_dead_buffers():
    nodes = [helper.make_node("Relu" if i % 2 else "Neg", [f"t{i}"], [f"t{i + 1}"]) for i in range(10)]
    m = walle_core.load(model(nodes, [vi("t0", [256, 256])], [vi("t10", [256, 256])]))
    x = np.random.default_rng(1).standard_normal((256, 256), np.float32)
    y = m.run({"t0": x})["t10"]
    np.testing.assert_array_equal(y, _chain(x))
    one = 256 * 256 * 4
    assert 0 < m.peak_bytes <= 2 * one  # nine intermediates share two buffers


def _chain(x: np.ndarray) -> np.ndarray:
    for i in range(10):
        x = np.maximum(x, 0) if i % 2 else -x
    return x


def test_plan_arena_never_overlaps_live_tensors():
    b = Builder(lambda op: None)
    ts = [b.tensor((100,), np.float32) for _ in range(6)]
    ops: list[A.Op] = [A.Unary([ts[i]], [ts[i + 1]], fn="relu") for i in range(5)]
    ops.append(A.Binary([ts[1], ts[5]], [b.tensor((100,), np.float32)], fn="add",
                        strides=[(1,), (1,)]))
    plan = plan_arena(ops, external={ts[0].id, ops[-1].out.id})
    live = {ts[1].id: (0, 5), ts[2].id: (1, 2), ts[3].id: (2, 3), ts[4].id: (3, 4), ts[5].id: (4, 5)}
    for a, (fa, la) in live.items():
        for c, (fc, lc) in live.items():
            if a < c and not (la < fc or lc < fa):
                oa, oc = plan.offsets[a], plan.offsets[c]
                assert oa + 400 <= oc or oc + 400 <= oa, (a, c)
    assert plan.arena_bytes < plan.naive_bytes


def test_reshape_is_free_and_transposes_are_rasters():
    m = walle_core.load(model(
        [helper.make_node("Reshape", ["x", "s"], ["r"]),
         helper.make_node("Transpose", ["r"], ["t"], perm=[2, 0, 1]),
         helper.make_node("Relu", ["t"], ["y"])],
        [vi("x", [2, 3, 4])], [vi("y", [4, 2, 3])], [("s", np.array([2, 3, 4], np.int64))]))
    x = np.random.default_rng(2).standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(m.run({"x": x})["y"], np.maximum(x.transpose(2, 0, 1), 0))
    node = m.plan_for({"x": x})
    kinds = [s.ops for s in node.stage.steps]
    assert sum(kinds) == 2  # the reshape copy was eliminated: one Raster + one Unary


def test_data_dependent_if_syncs_and_caches_both_branches():
    then_g = helper.make_graph([helper.make_node("Concat", ["x", "x"], ["o"], axis=0)], "then", [],
                               [vi("o", None)])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["o"])], "else", [], [vi("o", None)])
    m = walle_core.load(model(
        [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
         helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.float32))),
         helper.make_node("Greater", ["s", "zero"], ["c"]),
         helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
        [vi("x", [3])], [vi("y", None)]))
    pos = np.array([1, 2, 3], np.float32)
    neg = -pos
    for _ in range(2):
        np.testing.assert_array_equal(m.run({"x": pos})["y"], np.concatenate([pos, pos]))
        np.testing.assert_array_equal(m.run({"x": neg})["y"], pos)
    root = m.plan_for({"x": pos})
    assert not root.complete and len(root.children) == 2


def test_run_is_thread_safe():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((32, 32), np.float32)
    m = walle_core.load(model(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["y"])],
        [vi("x", ["n", 32])], [vi("y", ["n", 32])], [("w", w)]))
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        r = np.random.default_rng(seed)
        try:
            for _ in range(20):
                x = r.standard_normal((int(r.integers(1, 9)), 32), np.float32)
                # atol covers float32 dot products that cancel (numpy's own order differs from
                # the backend's by a few 1e-6 there); thread-safety bugs show up far above it.
                np.testing.assert_allclose(m.run({"x": x})["y"], np.tanh(x @ w), rtol=1e-5, atol=1e-5)
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_strided_regions_match_numpy_transpose_and_slices(shape, rnd):
    x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    perm = list(range(len(shape)))
    rnd.shuffle(perm)
    steps = [rnd.choice([1, 2, -1]) for _ in shape]
    view = x.transpose(perm)[tuple(slice(None, None, s) for s in steps)]
    # Express the numpy view as offset + element strides into x's flat buffer.
    strides = [s // 4 for s in view.strides]
    offset = (view.__array_interface__["data"][0] - x.__array_interface__["data"][0]) // 4
    dst = np.full(view.size, np.nan, np.float32)
    c = [int(np.prod(view.shape[i + 1 :])) for i in range(view.ndim)]
    for r in strided_regions(0, offset, strides, 0, c, view.shape):
        for z in range(r.size[0]):
            for y in range(r.size[1]):
                for xx in range(r.size[2]):
                    s_i = r.src_offset + z * r.src_strides[0] + y * r.src_strides[1] + xx * r.src_strides[2]
                    d_i = r.dst_offset + z * r.dst_strides[0] + y * r.dst_strides[1] + xx * r.dst_strides[2]
                    dst[d_i] = x.reshape(-1)[s_i]
    np.testing.assert_array_equal(dst.reshape(view.shape), view)


def test_identity_copy_detection():
    b = Builder(lambda op: None)
    x = b.tensor((2, 3), np.float32)
    y = b.reshape(x, (3, 2))
    assert is_identity_copy(b.ops[-1]) and y.shape == (3, 2)
    b.transpose(x, (1, 0))
    assert not is_identity_copy(b.ops[-1])


# ---------------------------------------------------------------------------- bad input


def test_corrupt_truncated_and_foreign_files_raise_model_load_error(tmp_path):
    good = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("y", [2])])
    cases = {
        "truncated.onnx": good[: len(good) // 2],
        "garbage.onnx": b"\x00\xff" * 100,
        "text.onnx": b"this is not a model at all\n",
        "empty.onnx": b"",
    }
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(walle_core.ModelLoadError):
            walle_core.load(p)
    with pytest.raises(walle_core.ModelLoadError, match="not found"):
        walle_core.load(tmp_path / "missing.onnx")


def test_wrong_feeds_raise_input_error():
    m = walle_core.load(model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", ["n", 4])],
                              [vi("y", ["n", 4])]))
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(walle_core.InputError, match="unknown input"):
        m.run({"x": x, "z": x})
    with pytest.raises(walle_core.InputError, match="missing input"):
        m.run({})
    with pytest.raises(walle_core.InputError, match="dtype float64"):
        m.run({"x": x.astype(np.float64)})
    with pytest.raises(walle_core.InputError, match=r"shape \[2, 5\]"):
        m.run({"x": np.zeros((2, 5), np.float32)})


def test_unsupported_op_names_node_type_and_opset():
    data = model([helper.make_node("NoSuchOp", ["x"], ["y"], name="weird")], [vi("x", [2])],
                 [vi("y", [2])], opset=13)
    with pytest.raises(walle_core.UnsupportedOpError, match=r"'NoSuchOp' \(node 'weird', opset 13\)"):
        walle_core.load(data)


def test_inconsistent_shapes_raise_invalid_model_error():
    m = walle_core.load(model([helper.make_node("Add", ["x", "z"], ["y"], name="add")],
                              [vi("x", [3]), vi("z", [4])], [vi("y", [3])]))
    with pytest.raises(walle_core.InvalidModelError, match=r"node 'add'.*do not broadcast"):
        m.run({"x": np.zeros(3, np.float32), "z": np.zeros(4, np.float32)})


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=2, max_size=5), st.randoms(use_true_random=False))
def test_adjacent_rasters_merge_and_stay_correct(shape, rnd):
    p1 = list(range(len(shape)))
    rnd.shuffle(p1)
    p2 = list(range(len(shape)))
    rnd.shuffle(p2)
    mid = [shape[p] for p in p1]
    ends = [rnd.randint(1, d) for d in mid]
    m = walle_core.load(model(
        [helper.make_node("Transpose", ["x"], ["a"], perm=p1),
         helper.make_node("Slice", ["a", "st", "en"], ["s"]),
         helper.make_node("Transpose", ["s"], ["y"], perm=p2)],
        [vi("x", shape)], [vi("y", None)],
        [("st", np.zeros(len(shape), np.int64)), ("en", np.array(ends, np.int64))]))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ref = x.transpose(p1)[tuple(slice(0, e) for e in ends)].transpose(p2)
    np.testing.assert_array_equal(m.run({"x": x})["y"], ref)


def test_transpose_pair_becomes_one_raster():
    m = walle_core.load(model(
        [helper.make_node("Transpose", ["x"], ["a"], perm=[0, 2, 1, 3]),
         helper.make_node("Transpose", ["a"], ["y"], perm=[3, 1, 0, 2])],
        [vi("x", [2, 3, 4, 5])], [vi("y", None)]))
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(m.run({"x": x})["y"], x.transpose(0, 2, 1, 3).transpose(3, 1, 0, 2))
    stage = m.plan_for({"x": x}).stage
    assert stage.n_ops == 1 and sum(s.ops for s in stage.steps) == 1


def test_external_data_initializers_load_from_the_model_folder(tmp_path):
    import onnx

    w = np.random.default_rng(4).standard_normal((64, 64)).astype(np.float32)
    proto = onnx.load_from_string(model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                                        [vi("x", [1, 64])], [vi("y", [1, 64])], [("w", w)]))
    path = tmp_path / "m.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    assert (tmp_path / "weights.bin").stat().st_size >= w.nbytes
    x = np.ones((1, 64), np.float32)
    np.testing.assert_allclose(walle_core.load(path).run({"x": x})["y"], x @ w, rtol=1e-5)
    (tmp_path / "weights.bin").write_bytes(b"short")
    with pytest.raises(walle_core.ModelLoadError):
        walle_core.load(path)
