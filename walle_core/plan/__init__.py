"""Lowering to atomic ops, backend assignment, memory planning."""
