"""A float TFLite ConvNet's weights in our model's layout, mapped by the graph rather than by tensor names.

The MobileNets' public releases (TF-slim MobileNetV1, MobileNetV2) ship a float `.tflite` in each archive; other
converters (litert-torch) write the same graph with other tensor names. What both keep is the order of their
layers: the file's CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED ops in execution order are our model's Conv2d and
Linear modules in forward order. Each pair is checked by shape before a value is copied, so a file of another
architecture is refused, not loaded sideways. What differs between files and how it is taken:
- layouts: CONV_2D weights are OHWI, DEPTHWISE_CONV_2D 1HWC, FULLY_CONNECTED (out, in): each is permuted to torch's;
- BatchNorm is folded into the file's convolution biases: our BatchNorm2d after a conv becomes the identity plus that
  bias (weight 1, mean 0, variance 1 - eps), as in ../shared/weights;
- fused activations (ReLU6) and padding (SAME: TF's asymmetric rule at stride 2) are properties of the ops, which our
  model's `tf_same` layers compute the same way; `verify_against_tflite` runs both on the same images to prove it;
- the classifier: a 1x1 CONV_2D (the releases) or a FULLY_CONNECTED (litert-torch), of 1001 classes with the
  background first (the releases: it is dropped) or of the model's own class count.

Reads the file with the LiteRT interpreter (ai-edge-litert, the litert extra): no TensorFlow.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from t2tedge.errors import DataError, require_installed

LAYER_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
INSTALL = "'t2t-edge[litert]'"


def _interpreter(tflite: Path):
    require_installed("ai_edge_litert", INSTALL)
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        return Interpreter(model_path=str(tflite),
                           experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    except (RuntimeError, ValueError) as exc:
        raise DataError(f"LiteRT cannot read {tflite.name}: {str(exc).splitlines()[0] if str(exc) else exc}") from None


def file_layers(tflite: str | os.PathLike) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """(op, weights, bias or None) of every convolution and fully-connected op, in execution order."""
    interpreter = _interpreter(Path(tflite))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    layers = []
    for op in interpreter._get_ops_details():  # the public API lists no ops; the quantizers read it the same way
        if op["op_name"] not in LAYER_OPS:
            continue
        inputs = op["inputs"]
        weight = interpreter.get_tensor(inputs[1])
        if weight.dtype != np.float32:
            raise DataError(f"{Path(tflite).name} holds {weight.dtype} weights ({tensors[inputs[1]]['name']}): take "
                            f"the float release file, not a quantized one")
        bias = interpreter.get_tensor(inputs[2]) if len(inputs) > 2 and inputs[2] >= 0 else None
        layers.append((op["op_name"], weight, bias))
    return layers


def model_layers(model: nn.Module) -> list[tuple[str, nn.Module, str | None]]:
    """(module path, Conv2d or Linear, the path of the BatchNorm2d right after it or None), in forward order."""
    modules = list(model.named_modules())
    found = []
    for position, (name, module) in enumerate(modules):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            following = modules[position + 1] if position + 1 < len(modules) else (None, None)
            found.append((name, module, following[0] if isinstance(following[1], nn.BatchNorm2d) else None))
    return found


def _torch_weight(op: str, weight: np.ndarray, module: nn.Module, background: bool) -> np.ndarray:
    if op == "DEPTHWISE_CONV_2D":  # (1, kh, kw, channels) -> (channels, 1, kh, kw)
        weight = weight.transpose(3, 0, 1, 2)
    elif op == "CONV_2D":  # (out, kh, kw, in) -> (out, in, kh, kw)
        weight = weight.transpose(0, 3, 1, 2)
    if isinstance(module, nn.Linear):
        weight = weight.reshape(weight.shape[0], -1)
        if background:
            weight = weight[1:]
    return weight


def state_dict_from_tflite(model: nn.Module, tflite: str | os.PathLike) -> dict[str, torch.Tensor]:
    """`model`'s state dict with the weights of the float TFLite file `tflite` (see the module docstring)."""
    name = Path(tflite).name
    ours, theirs = model_layers(model), file_layers(tflite)
    if len(ours) != len(theirs):
        raise DataError(f"{name} has {len(theirs)} convolution and fully-connected layers, the model "
                        f"{len(ours)}: it is a file of another architecture")
    state = {key: value.clone() for key, value in model.state_dict().items()}
    for index, ((path, module, norm), (op, weight, bias)) in enumerate(zip(ours, theirs)):
        classes = module.out_features if isinstance(module, nn.Linear) else None
        background = classes is not None and weight.shape[0] == classes + 1  # the releases' class 0
        converted = _torch_weight(op, weight, module, background)
        if tuple(converted.shape) != tuple(module.weight.shape):
            raise DataError(f"{name}: layer {index} ({op}, weights {list(weight.shape)}) does not fit {path} "
                            f"{list(module.weight.shape)}: it is a file of another architecture or width")
        state[f"{path}.weight"] = torch.from_numpy(np.ascontiguousarray(converted))
        values = np.zeros(converted.shape[0], np.float32) if bias is None else bias[1:] if background else bias
        if norm is not None:  # the BatchNorm after it: the identity plus the file's folded bias
            eps = model.get_submodule(norm).eps
            state[f"{norm}.weight"] = torch.ones(len(values))
            state[f"{norm}.bias"] = torch.from_numpy(np.array(values, np.float32))
            state[f"{norm}.running_mean"] = torch.zeros(len(values))
            state[f"{norm}.running_var"] = torch.full((len(values),), 1.0 - eps)
        elif module.bias is not None:
            state[f"{path}.bias"] = torch.from_numpy(np.array(values, np.float32))
        elif bias is not None and np.any(bias):
            raise DataError(f"{name}: layer {index} has a bias that {path} (no bias, no BatchNorm after it) "
                            f"cannot hold")
    return state


def tflite_outputs(tflite: str | os.PathLike, images: np.ndarray) -> np.ndarray:
    """The file's output for NCHW `images`, one at a time (the releases take NHWC batch 1)."""
    interpreter = _interpreter(Path(tflite))
    interpreter.allocate_tensors()
    source, sink = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    outputs = []
    for image in images:
        interpreter.set_tensor(source["index"], np.ascontiguousarray(image.transpose(1, 2, 0)[None]))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(sink["index"]).reshape(-1).copy())
    return np.stack(outputs)


def verify_against_tflite(model: nn.Module, tflite: str | os.PathLike, images: np.ndarray,
                          tolerance: float = 1e-4) -> float:
    """Max difference between `model` and the file on `images`, in the file's own terms: logits against logits, or,
    where the file ends in a softmax over a background class too (the releases), class probabilities renormalised
    without it. DataError above `tolerance`: padding, activations or layer order differ."""
    with torch.no_grad():
        ours = model.eval()(torch.from_numpy(images)).numpy().astype(np.float64)
    theirs = tflite_outputs(tflite, images).astype(np.float64)
    if theirs.shape[1] == ours.shape[1] + 1:  # probabilities over a background class and ours
        theirs = theirs[:, 1:] / theirs[:, 1:].sum(axis=1, keepdims=True)
        ours = np.exp(ours - ours.max(axis=1, keepdims=True))
        ours /= ours.sum(axis=1, keepdims=True)
    elif np.allclose(theirs.sum(axis=1), 1.0, atol=1e-3) and np.all(theirs >= 0):  # a softmax over our classes
        ours = np.exp(ours - ours.max(axis=1, keepdims=True))
        ours /= ours.sum(axis=1, keepdims=True)
    difference = float(np.abs(ours - theirs).max())
    if not difference <= tolerance:
        raise DataError(f"the weights converted from {Path(tflite).name} compute other outputs than the file "
                        f"(max difference {difference:.3g} > {tolerance:g}): the file's graph is not this model's")
    return difference
