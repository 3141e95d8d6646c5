"""Model tools around the engine: post-training quantization (``quantize``, ``calibration``)
and half-precision weights (``fp16``). They read and write ONNX with the ``onnx`` package."""
