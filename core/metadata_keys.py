"""Every metadata key t2tedge stamps into an artifact, in one place.

Where they live: ONNX `metadata_props`, Core ML `user_defined_metadata` and OpenVINO `rt_info` hold strings (JSON
where the value is structured); `.tflite` and `.pte` files have no such field, so their sidecar
(`FILE.json`, `t2tedge.sidecar`) holds the same keys with JSON values. Readers (runtimes, `t2tedge profile`,
`t2tedge info`) look keys up here, so a key is spelt once.
"""

from __future__ import annotations

PREFIX = "t2tedge."

# What the file is and how to feed it: every exporter writes these.
MODEL = "t2tedge.model"  # registry name, e.g. t2t_vit_7
FAMILY = "t2tedge.family"  # T2T-ViT or MobileNet
PRECISION = "t2tedge.precision"  # fp32, fp16, w8, int8, ...
PREPROCESS = "t2tedge.preprocess"  # resize, crop, mean, std, interpolation (JSON)
PADDING = "t2tedge.padding"  # the convolutions' padding convention (symmetric or TF "SAME")
INPUT = "t2tedge.input"  # the input tensor in words
INPUT_LAYOUT = "t2tedge.input_layout"  # NCHW or NHWC
INPUT_SHAPE = "t2tedge.input_shape"
CLASS_ORDER = "t2tedge.class_order"  # the label of each output index
WEIGHTS = "t2tedge.weights"  # the checkpoint's sha256, or "untrained..."
VERSION = "t2tedge.version"  # the toolkit that wrote the file

# ONNX export.
OPSET = "t2tedge.opset"
SIMPLIFIER = "t2tedge.simplifier"

# FP16 ONNX (export onnxruntime --precision fp16, the file strongly typed TensorRT engines are built from).
FP16_KEPT_FP32 = "t2tedge.fp16_kept_fp32"  # node -> why it stays fp32 (JSON)
FP16_CHECKED_IMAGES = "t2tedge.fp16_checked_images"  # real images the activation range check ran on
FP16_CONVERTER = "t2tedge.fp16_converter"  # the converter and its version

# INT8 QDQ models (t2tedge quantize).
QUANT_CONFIG = "t2tedge.quant_config"  # the QuantConfig that made the file (JSON)
SOURCE_FP32 = "t2tedge.source_fp32"  # the fp32 ONNX file it was quantized from
# Ranges of int8 layers' outputs that stay float in the QDQ graph: it has no QuantizeLinear to read them from, but an
# implicit-mode TensorRT build still wants them.
FLOAT_OUTPUT_RANGES = "t2tedge.float_output_ranges"
ORT_DISABLED_OPTIMIZERS = "t2tedge.ort_disabled_optimizers"  # what an ORT session must disable for these logits

# The ONNX Runtime-only copy (t2tedge optimize).
ORT_OPTIMIZED = "t2tedge.ort_optimized"  # the contrib-op fusions applied
INT8_WEIGHTS = "t2tedge.int8_weights"  # int8, uint8 or none
OPTIMIZED_FROM = "t2tedge.optimized_from"  # source file name and sha256

# Core ML.
COMPRESS = "t2tedge.compress"
TARGET = "t2tedge.target"  # minimum deployment target
OUTPUT = "t2tedge.output"  # logits or probabilities

# OpenVINO IR.
IR_WEIGHTS = "t2tedge.ir_weights"
SOURCE_ONNX = "t2tedge.source_onnx"

# LiteRT / ExecuTorch sidecars.
QUANTIZATION = "t2tedge.quantization"  # the quantization report of an int8 .tflite or .pte
DELEGATE = "t2tedge.delegate"  # xnnpack or coreml
DELEGATION = "t2tedge.delegation"  # ops per delegate, delegate calls, ops left outside
OP_PATHS = "t2tedge.op_paths"  # per delegate call, its ops and their module paths (t2tedge profile --ops)
COREML_DELEGATE = "t2tedge.coreml"  # the Core ML delegate's settings inside a .pte

ALL = tuple(value for name, value in sorted(globals().items()) if name.isupper() and name not in ("PREFIX", "ALL"))
