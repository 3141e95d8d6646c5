"""The model zoo: architectures people deploy on devices, written with ``torch.nn`` and exported
to ONNX at test time (cached outside the repository, like ``tests/models``).

Every model module defines

- ``model() -> torch.nn.Module`` (built under ``torch.manual_seed(0)``),
- ``inputs(rng, sizes) -> {name: ndarray}``: example inputs for the given sizes of the dynamic dims,
- ``DYNAMIC``: ``{input: {axis: symbol}}`` and ``OUTPUTS``: ``{output: {axis: symbol}}``, the axes
  exported as dynamic (every model has at least one where the real one does),
- ``SIZES``: the symbols' example sizes and ``ALT``: a second set the tests also run,
- optionally ``OPSET`` (default 17).

Sizes are small (a few MFLOPs per model) so the whole zoo checks in minutes on two cores,
while the layers, their order and the exported op patterns follow the real architectures.
"""

from __future__ import annotations

ZOO = [
    "yolov5", "yolov8", "yolox", "ssdlite", "dbnet", "crnn",
    "mobilenetv3", "efficientnet_lite", "shufflenetv2", "ghostnet", "regnet", "convnext",
    "vit_tiny", "mobilevit", "swin", "minilm", "gpt2", "whisper_encoder",
    "gru_speech", "kws_conv1d", "super_resolution", "ctr", "conformer",
    "deeplabv3", "byte_classifier", "mobilefacenet",
]
