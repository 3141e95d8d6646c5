"""Whole-model builders for the engine's model tests (architectures written with torch.nn).

Each builder module defines ``build() -> (torch.nn.Module, dict[name, example ndarray])`` and
``DYNAMIC``: the input axes exported as dynamic. :func:`export` writes the ONNX file into a
cache outside the repository, keyed by a hash of the builder's source.
"""
