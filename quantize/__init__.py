"""Post-training quantization: one config shape, real-image calibration, QDQ INT8 through onnxruntime."""

from t2tedge.quantize.calibration import ImageCalibrationReader, calibration_samples
from t2tedge.quantize.config import OpQuantConfig, QuantConfig, nodes_to_quantize, preset
from t2tedge.quantize.pipeline import QuantizeSettings, SearchSettings, quantize_model
from t2tedge.quantize.ptq import quantize_onnx

__all__ = ["ImageCalibrationReader", "OpQuantConfig", "QuantConfig", "QuantizeSettings", "SearchSettings", "calibration_samples", "nodes_to_quantize",
           "preset", "quantize_model", "quantize_onnx"]
