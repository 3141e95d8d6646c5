"""Sparse TFLite constants (``SparsityParameters``: dense/CSR levels in a traversal order, optional
blocks) -> dense numpy arrays, so a DENSIFY of a constant folds away at load.

The walk is level by level over all paths at once (numpy), in the traversal order the values
are stored in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from walle_core.errors import ModelLoadError
from walle_core.frontend.tflite.reader import tflite_schema

DENSE, SPARSE_CSR = 0, 1
_VECTOR_TYPES = {1: "Int32Vector", 2: "Uint16Vector", 3: "Uint8Vector"}


def _index_vector(kind: int, table: Any) -> np.ndarray:
    name = _VECTOR_TYPES.get(int(kind))
    if name is None or table is None:
        return np.zeros(0, np.int64)
    vec = getattr(tflite_schema(), name)()
    vec.Init(table.Bytes, table.Pos)
    return np.asarray(vec.ValuesAsNumpy() if vec.ValuesLength() else [], np.int64)


def densify(values: np.ndarray, shape: Sequence[int], sparsity: Any, name: str) -> np.ndarray:
    order = [int(v) for v in sparsity.TraversalOrderAsNumpy()] if sparsity.TraversalOrderLength() else []
    block_map = [int(v) for v in sparsity.BlockMapAsNumpy()] if sparsity.BlockMapLength() else []
    levels = [sparsity.DimMetadata(i) for i in range(sparsity.DimMetadataLength())]
    rank = len(shape)
    if not order:
        order = list(range(rank))
    if len(order) != rank + len(block_map) or len(levels) != len(order):
        raise ModelLoadError(f"corrupt sparse tensor {name!r}: {len(order)} traversal dims, "
                             f"{len(levels)} levels, rank {rank}, {len(block_map)} blocks")
    block_size = [int(levels[rank + j].DenseSize()) for j in range(len(block_map))]
    pos = np.zeros(1, np.int64)  # per path: position within the current level
    idx = np.zeros((1, 0), np.int64)  # per path: index at each level so far
    for level in levels:
        if int(level.Format()) == DENSE:
            n = int(level.DenseSize())
            pos = (pos[:, None] * n + np.arange(n)[None, :]).reshape(-1)
            idx = np.repeat(idx, n, axis=0)
            idx = np.concatenate([idx, np.tile(np.arange(n), len(idx) // max(n, 1))[:, None]], axis=1)
        else:
            seg = _index_vector(level.ArraySegmentsType(), level.ArraySegments())
            ind = _index_vector(level.ArrayIndicesType(), level.ArrayIndices())
            if pos.size and (pos.max() + 1 >= seg.size):
                raise ModelLoadError(f"corrupt sparse tensor {name!r}: segment index out of range")
            counts = seg[pos + 1] - seg[pos]
            if np.any(counts < 0) or (counts.sum() and seg[pos + 1].max() > ind.size):
                raise ModelLoadError(f"corrupt sparse tensor {name!r}: bad segments")
            starts = np.repeat(seg[pos], counts)
            within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
            pos = starts + within
            idx = np.concatenate([np.repeat(idx, counts, axis=0), ind[pos][:, None]], axis=1)
    if len(idx) != values.size:
        raise ModelLoadError(f"corrupt sparse tensor {name!r}: {values.size} values for {len(idx)} positions")
    orig = np.zeros((len(idx), rank), np.int64)
    for i in range(rank):
        orig[:, order[i]] = idx[:, i]
    for i in range(rank, len(order)):
        b = order[i] - rank
        orig[:, block_map[b]] = orig[:, block_map[b]] * block_size[b] + idx[:, i]
    dense = np.zeros(tuple(shape), values.dtype)
    if len(idx):
        if np.any(orig < 0) or np.any(orig >= np.asarray(shape)[None, :]):
            raise ModelLoadError(f"corrupt sparse tensor {name!r}: an index lies outside {list(shape)}")
        dense[tuple(orig.T)] = values
    return dense
