"""High-level IR (framework-level nodes over named values)."""
