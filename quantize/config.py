"""One quantization config shape, like coremltools.optimize's: a global setting, then per-op-type and
per-node-name overrides. `None` at any level means "keep this in float". The sensitivity analysis,
`--exclude` and the mixed-precision search all produce and consume this shape.
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Iterable

from t2tedge.errors import T2TEdgeError
from t2tedge.results import Record, ResultFormatError

if TYPE_CHECKING:  # only read here, never built: the CLI's choices import this module without onnx
    import onnx

CALIBRATION_METHODS = ("minmax", "percentile", "entropy", "mse")
# nearest: each int8 weight is its float weight's nearest step. gptq: rounded against the layer's real inputs
# so that the rounding errors cancel in the layer's output (quantize/weight_rounding.py).
WEIGHT_ROUNDINGS = ("gptq", "nearest")
# auto: biases corrected for the mean shift of quantized inputs only where that raises logits SQNR on the
# calibration images (quantize/bias_correction.py); on: always; off: never.
BIAS_CORRECTIONS = ("auto", "on", "off")


@dataclass(frozen=True)
class OpQuantConfig(Record):
    """How one op is quantized: int8 weights (per channel or per tensor), 8-bit activations per tensor."""

    weight_granularity: str = "per_channel"  # per_channel | per_tensor
    activation_dtype: str = "uint8"  # uint8 | int8
    activation_symmetric: bool = False

    def __post_init__(self) -> None:
        if self.weight_granularity not in ("per_channel", "per_tensor"):
            raise T2TEdgeError(f"weight_granularity must be per_channel or per_tensor, not {self.weight_granularity!r}")
        if self.activation_dtype not in ("uint8", "int8"):
            raise T2TEdgeError(f"activation_dtype must be uint8 or int8, not {self.activation_dtype!r}")


# MatMul/Gemm/Conv carry nearly all MACs; LayerNorm, Softmax, GELU and the Performer's exp and normalisation
# stay float (ORT runs them in float anyway, and they are where ViT PTQ loses accuracy).
DEFAULT_OP_TYPES = ("Conv", "MatMul", "Gemm")

# T2T-ViT's soft splits are one-hot grouped Convs: every output copies one input pixel, so int8 saves no
# arithmetic, and ORT's grouped QLinearConv (channel multiplier 49 and 9) took 2.0 ms of T2T-ViT-7's 9 ms
# against 0.5 ms for the float Convs. Kept float by default; a node-name rule, so configs can override it.
DATA_MOVEMENT_NODES: dict[str, None] = {"*/soft_split*": None}

DEFAULT_FLOAT_NODES: dict[str, None] = dict(DATA_MOVEMENT_NODES)


@dataclass
class QuantConfig(Record):
    """`global_config` applies to every op of `op_types`; `op_type_configs` then `op_name_configs` override it
    (None: keep float). Saved as `t2tedge.quant-config/1`; a hand-written file may leave out the schema id, and
    every key it leaves out takes the default below."""

    SCHEMA: ClassVar[str] = "t2tedge.quant-config/1"
    SCHEMA_REQUIRED: ClassVar[bool] = False

    global_config: OpQuantConfig | None = field(default_factory=OpQuantConfig)
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    op_type_configs: dict[str, OpQuantConfig | None] = field(default_factory=dict)
    # Keys are node names or fnmatch patterns ("/blocks.0/*").
    op_name_configs: dict[str, OpQuantConfig | None] = field(default_factory=lambda: dict(DEFAULT_FLOAT_NODES))
    method: str = "mse"
    percentile: float = 99.999
    # MatMuls whose both inputs are activations (attention scores, the Performer's kernel products).
    quantize_activation_matmul: bool = False
    # int32 bias DQs let ORT fuse QLinearConv; TensorRT wants float biases.
    quantize_bias: bool = True
    weight_rounding: str = "gptq"
    bias_correction: str = "auto"
    # Quantize the input image on its own 8-bit pixel grid where the preprocessing allows (quantize/input_grid.py).
    pixel_grid_input: bool = True

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise T2TEdgeError(f"unknown calibration method {self.method!r}; choose {', '.join(CALIBRATION_METHODS)}")
        if self.weight_rounding not in WEIGHT_ROUNDINGS:
            raise T2TEdgeError(f"unknown weight rounding {self.weight_rounding!r}; choose {', '.join(WEIGHT_ROUNDINGS)}")
        if self.bias_correction not in BIAS_CORRECTIONS:
            raise T2TEdgeError(f"unknown bias correction {self.bias_correction!r}; choose {', '.join(BIAS_CORRECTIONS)}")

    def config_for(self, node: onnx.NodeProto) -> OpQuantConfig | None:
        """The effective setting of one node: node name beats op type beats global."""
        for pattern, value in self.op_name_configs.items():
            if node.name == pattern or fnmatch.fnmatchcase(node.name, pattern):
                return value
        if node.op_type in self.op_type_configs:
            return self.op_type_configs[node.op_type]
        return self.global_config if node.op_type in self.op_types else None

    def with_float(self, names_or_types: Iterable[str], graph: onnx.GraphProto | None = None,
                   strict: bool = False) -> "QuantConfig":
        """A copy keeping the given op types (if they are op types of `graph`) or node names in float. `strict`:
        an entry that is neither an op type of `graph` nor matches one of its node names is an error (a typo
        would otherwise quantize everything without a word)."""
        op_types = {n.op_type for n in graph.node} if graph is not None else set()
        if strict and graph is not None:
            names = [n.name for n in graph.node]
            unmatched = [item for item in names_or_types if item not in op_types
                         and not any(name == item or fnmatch.fnmatchcase(name, item) for name in names)]
            if unmatched:
                raise T2TEdgeError(f"--exclude {', '.join(unmatched)} matches no op type or node name of the model; "
                                   f"op types here: {', '.join(sorted(op_types & set(self.op_types)))}; node names "
                                   f"look like {names[0]!r} (fnmatch patterns such as '/blocks.0/*' work)")
        types, names = dict(self.op_type_configs), dict(self.op_name_configs)
        for item in names_or_types:
            if item in op_types or (graph is None and item[:1].isupper() and "/" not in item):
                types[item] = None
            else:
                names[item] = None
        return replace(self, op_type_configs=types, op_name_configs=names)

    def save(self, path: str | os.PathLike) -> None:
        from t2tedge.fileio import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "QuantConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()), where=Path(path).name)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise T2TEdgeError(f"cannot read quantization config {path}: {exc}") from None
        except ResultFormatError as exc:
            raise T2TEdgeError(f"bad quantization config: {exc}") from None


QUANTIZATION_TARGETS = ("onnxruntime", "openvino", "tensorrt")


def preset(target: str, method: str = "mse", per_channel: bool = True, weight_rounding: str = "gptq",
           bias_correction: str = "auto") -> QuantConfig:
    """Defaults per deployment target: ORT CPU runs U8S8 fastest; TensorRT takes symmetric INT8 only.

    OpenVINO gets ORT's settings, chosen by measurement on the trained T2T-ViT-7 subject (OpenVINO 2026.4, AMD
    EPYC with AVX-512 VNNI, 300 Imagenette val images, docs/openvino.md): int8 attention MatMuls, which NNCF
    quantizes, cost 3 dB logits SQNR (block attention only) to 16 dB (with the Performer's products) for no
    measurable speed-up; symmetric int8 activations cost 2.8 dB; float biases changed nothing."""
    granularity = "per_channel" if per_channel else "per_tensor"
    if target in ("onnxruntime", "openvino"):
        return QuantConfig(method=method, weight_rounding=weight_rounding, bias_correction=bias_correction,
                           global_config=OpQuantConfig(weight_granularity=granularity))
    if target == "tensorrt":
        return QuantConfig(method=method, quantize_bias=False, weight_rounding=weight_rounding,
                           bias_correction=bias_correction, global_config=OpQuantConfig(
            weight_granularity=granularity, activation_dtype="int8", activation_symmetric=True))
    raise T2TEdgeError(f"unknown quantization target {target!r}; choose {', '.join(QUANTIZATION_TARGETS)}")


def has_constant_input(node: onnx.NodeProto, initializers: set[str]) -> bool:
    return any(name in initializers for name in node.input[1:2])


# Which products of two activations (MatMuls with no weight) an INT8 file quantizes. none: every one stays float
# (the default: on ONNX Runtime and OpenVINO each costs 3-4 conversions and buys no time, docs/quantization.md);
# attention: the products next to a Softmax (a block's q.k^T and attention.v); all: the Performer's kernel
# products as well (16 dB of logits SQNR on T2T-ViT-7, docs/openvino.md).
INT8_PRODUCTS = ("none", "attention", "all")
# Ops that sit between an attention product and its Softmax in exported graphs (scale, mask, layout).
_ATTENTION_GLUE = ("Mul", "Div", "Add", "Where", "Reshape", "Transpose", "Cast", "Identity", "Dropout")


def activation_products(graph: onnx.GraphProto) -> list[str]:
    """Names of the MatMuls whose second input is no initializer: products of two activations."""
    initializers = {init.name for init in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and not has_constant_input(n, initializers)]


def attention_products(graph: onnx.GraphProto, reach: int = 3) -> list[str]:
    """The activation products within `reach` glue ops of a Softmax: the one whose output the Softmax normalises
    (scores) and those that read its output (attention . values)."""
    from t2tedge.onnx_graph import consumers as readers_of, producers as producers_of

    producers, consumers = producers_of(graph), readers_of(graph)

    def feeds_softmax(tensor: str, steps: int) -> bool:
        for user in consumers.get(tensor, []):
            if user.op_type == "Softmax" or (steps and user.op_type in _ATTENTION_GLUE
                                             and feeds_softmax(user.output[0], steps - 1)):
                return True
        return False

    def from_softmax(tensor: str, steps: int) -> bool:
        node = producers.get(tensor)
        return node is not None and (node.op_type == "Softmax" or (
            steps > 0 and node.op_type in _ATTENTION_GLUE and from_softmax(node.input[0], steps - 1)))

    products = set(activation_products(graph))
    return [n.name for n in graph.node if n.name in products and (
        feeds_softmax(n.output[0], reach) or any(from_softmax(name, reach) for name in n.input[:2]))]


def with_int8_products(config: QuantConfig, products: str, graph: onnx.GraphProto) -> QuantConfig:
    """A copy of `config` whose activation products are quantized as `products` says (INT8_PRODUCTS)."""
    if products not in INT8_PRODUCTS:
        raise T2TEdgeError(f"unknown int8 products {products!r}; choose {', '.join(INT8_PRODUCTS)}")
    if products == "none":
        return replace(config, quantize_activation_matmul=False)
    quantized = replace(config, quantize_activation_matmul=True)
    if products == "all":
        return quantized
    attention = set(attention_products(graph))
    return quantized.with_float([name for name in activation_products(graph) if name not in attention], graph)


# ORT folds these into the quantized range of their producer (a Conv+ReLU6 output is calibrated on [0, 6],
# not on the pre-activation range) only when they are themselves among the nodes to quantize.
FOLDABLE_ACTIVATIONS = ("Relu", "Clip")


def nodes_to_quantize(config: QuantConfig, graph: onnx.GraphProto) -> dict[str, OpQuantConfig]:
    """Node name -> setting for every node that will be quantized under `config`."""
    initializers = {init.name for init in graph.initializer}
    chosen = {}
    producer_setting: dict[str, OpQuantConfig] = {}
    for node in graph.node:
        if node.op_type in FOLDABLE_ACTIVATIONS and node.input[0] in producer_setting:
            if config.config_for(node) is not None or node.op_type not in config.op_types:
                chosen[node.name] = producer_setting[node.input[0]]
            continue
        setting = config.config_for(node)
        if setting is None:
            continue
        if node.op_type == "MatMul" and not config.quantize_activation_matmul and not has_constant_input(node, initializers):
            continue
        chosen[node.name] = setting
        producer_setting.update({output: setting for output in node.output})
    return chosen
