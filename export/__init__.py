"""Exporters: the export-ready model form to ONNX (and, with their issues, Core ML and TensorRT)."""

from t2tedge.export.onnx_export import OnnxExportOptions, artifact_name, export_onnx, read_metadata

__all__ = ["OnnxExportOptions", "artifact_name", "export_onnx", "read_metadata"]
