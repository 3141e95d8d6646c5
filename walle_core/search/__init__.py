"""Backend and algorithm selection (fixed preference until the semi-auto search lands)."""
