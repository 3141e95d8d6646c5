"""Comparing Walle with onnxruntime on one ONNX model (the zoo's and the loading tests' oracle).

Error measure, as in ``tests/test_models.py``: per output ``max|walle - ort| / max(max|ort|,
1e-6)``, the worst absolute error relative to the output's scale; integer and boolean outputs
must match exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TOL = 1e-4


def onnxruntime_outputs(model: Path | bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model) if isinstance(model, Path) else model,
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds), strict=True))


def worst_error(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    """The worst scale-relative error over all outputs; a shape or dtype-kind mismatch, a
    non-finite value or a wrong integer is an ``AssertionError`` naming the output."""
    worst = 0.0
    for name, w in want.items():
        g = got[name]
        assert g.shape == w.shape, f"output {name!r}: shape {g.shape}, onnxruntime {w.shape}"
        if w.dtype.kind in "iub":
            assert np.array_equal(g, w), f"output {name!r}: integer values differ from onnxruntime"
            continue
        assert np.all(np.isfinite(g) == np.isfinite(w)), f"output {name!r}: non-finite values differ"
        fin = np.isfinite(w)
        diff = np.abs(g[fin].astype(np.float64) - w[fin].astype(np.float64))
        scale = max(float(np.max(np.abs(w[fin]), initial=0.0)), 1e-6)
        worst = max(worst, float(np.max(diff, initial=0.0)) / scale)
    return worst
