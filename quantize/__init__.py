"""Post-training quantization: one config shape, real-image calibration, QDQ INT8 through onnxruntime, the
quantization plan, and the per-runtime quantizers.

The names below are loaded when first used, so importing one light module of the package (the config's
vocabularies, the records) does not import the whole pipeline and torch with it.
"""

import importlib

_EXPORTS = {
    "ImageCalibrationReader": "calibration", "calibration_samples": "calibration",
    "OpQuantConfig": "config", "QuantConfig": "config", "nodes_to_quantize": "config", "preset": "config",
    "QuantizeSettings": "pipeline", "SearchSettings": "pipeline", "quantize_model": "pipeline",
    "quantize_onnx": "ptq",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
