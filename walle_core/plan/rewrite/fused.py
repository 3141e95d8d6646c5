"""Variants of atomic ops that the epilogue fusions produce: a Conv2D or MatMul that also adds a
residual and/or applies an activation before storing. Only backends that opt in
(``Backend.rewrites``) receive them."""

from __future__ import annotations

import dataclasses

from walle_core import atomic as A


@dataclasses.dataclass(eq=False)
class ConvRes(A.Conv2D):
    """Conv2D whose last input is a residual added after the bias, before ``act``."""


@dataclasses.dataclass(eq=False)
class MatMulRes(A.MatMul):
    """MatMul whose last input is a residual of the output's shape, then ``act``."""

    act: A.Activation = dataclasses.field(default_factory=A.Activation)


@dataclasses.dataclass(eq=False)
class MatMulAct(A.MatMul):
    """MatMul (with or without bias) whose output goes through ``act``."""

    act: A.Activation = dataclasses.field(default_factory=A.Activation)


def with_activation(op: A.Op, act: A.Activation, out: A.Tensor) -> A.Op:
    """``op`` (Conv2D or MatMul) writing ``out`` through ``act``."""
    if hasattr(op, "act"):
        return dataclasses.replace(op, outputs=[out], act=act)  # type: ignore[call-arg]
    assert isinstance(op, A.MatMul)
    fields = {f.name: getattr(op, f.name) for f in dataclasses.fields(op) if f.init}
    return MatMulAct(**{**fields, "outputs": [out]}, act=act)


def with_residual(op: A.Op, r: A.Tensor, out: A.Tensor) -> A.Op:
    fields = {f.name: getattr(op, f.name) for f in dataclasses.fields(op) if f.init}
    fields["inputs"] = [*op.inputs, r]
    fields["outputs"] = [out]
    if isinstance(op, A.Conv2D):
        return ConvRes(**fields)
    assert isinstance(op, A.MatMul)
    return MatMulRes(**fields)
