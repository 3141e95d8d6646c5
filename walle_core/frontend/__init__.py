"""Model front ends (ONNX)."""
