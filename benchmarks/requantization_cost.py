"""What XNNPACK's requantization costs T2T-ViT-7 INT8, measured on ONNX Runtime by simulation.

XNNPACK's static int8 fully connected kernel (ExecuTorch, LiteRT) writes int8, so the plan's 36 linear layers whose
outputs the ONNX Runtime file keeps float are requantized there, on the plan's calibrated range after the bias. This
script puts exactly that Q/DQ pair (uint8 on the plan's `requantization_range`) after those outputs of the plan's own
QDQ file, runs it on ONNX Runtime, and reports top-1 agreement with fp32 for: the file as it is, every output
requantized, every output but one group, and the ranges scaled. The difference isolates the requantization from
every other kernel difference between the runtimes.

    python benchmarks/requantization_cost.py [--images 800] [--num-calib 256] [--work DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from t2tedge.data import discover, load_batch, split
from t2tedge.models import get_spec, trained_subject
from t2tedge.onnx_graph import consumers
from t2tedge.op_blocks import module_path
from t2tedge.ort_session import logits
from t2tedge.quantize.quantization_plan import load_plan, plan_path_for
from t2tedge.targets import BuildRequest, get_target

GROUPS = {"attn.qkv": "attn.qkv", "attn.proj": "attn.proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
          "tokens_to_token (8)": "tokens_to_token."}


def requantized(qdq: onnx.ModelProto, ranges: dict[str, tuple[float, float]], has_bias: dict[str, bool],
                scale: float = 1.0) -> onnx.ModelProto:
    """`qdq` with a uint8 Q/DQ pair on the output (after its bias Add) of each layer in `ranges`."""
    model = onnx.ModelProto.FromString(qdq.SerializeToString())
    graph = model.graph
    readers = consumers(graph)
    added = []
    for node in list(graph.node):
        layer = module_path(node.name)
        if node.op_type not in ("MatMul", "Gemm") or layer not in ranges:
            continue
        out = node.output[0]
        after = readers.get(out, [])
        if has_bias[layer] and len(after) == 1 and after[0].op_type == "Add":
            out = after[0].output[0]
        low, high = min(ranges[layer][0], 0.0) * scale, max(ranges[layer][1], 0.0) * scale
        step = (high - low) / 255.0
        graph.initializer.extend([numpy_helper.from_array(np.array(step, np.float32), out + "_rq_scale"),
                                  numpy_helper.from_array(np.array(round(-low / step), np.uint8), out + "_rq_zero")])
        for reader in readers.get(out, []):
            reader.input[:] = [out + "_rq" if name == out else name for name in reader.input]
        added += [helper.make_node("QuantizeLinear", [out, out + "_rq_scale", out + "_rq_zero"], [out + "_rq_q"]),
                  helper.make_node("DequantizeLinear", [out + "_rq_q", out + "_rq_scale", out + "_rq_zero"],
                                   [out + "_rq"])]
    nodes, ready = list(graph.node) + added, {i.name for i in graph.input} | {i.name for i in graph.initializer}
    ordered = []
    while nodes:  # topological order for the inserted pairs
        waiting = [n for n in nodes if not all(not name or name in ready for name in n.input)]
        for node in [n for n in nodes if n not in waiting]:
            ordered.append(node)
            ready.update(node.output)
        if len(waiting) == len(nodes):
            raise RuntimeError("cycle while ordering the requantized graph")
        nodes = waiting
    del graph.node[:]
    graph.node.extend(ordered)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=800, help="Imagenette val images (default: 800)")
    parser.add_argument("--num-calib", type=int, default=256, help="calibration images of the plan (default: 256)")
    parser.add_argument("--work", type=Path, help="keep the built files here (default: a temporary folder)")
    args = parser.parse_args()
    subject = trained_subject("t2t_vit_7")
    if subject is None:
        raise SystemExit("needs the T2T-ViT-7 Imagenette subject and ../shared/data/imagenette2")
    work = args.work or Path(tempfile.mkdtemp(prefix="requant-"))
    target = get_target("onnxruntime")
    common = dict(model="t2t_vit_7", checkpoint=subject.checkpoint, num_classes=subject.num_classes, progress=False)
    fp32 = target.build(BuildRequest(precision="fp32", out_dir=work / "fp32", **common))
    qdq_path = target.build(BuildRequest(precision="int8", out_dir=work / "int8", calib=subject.train,
                                         num_calib=args.num_calib, **common))
    plan = load_plan(plan_path_for(qdq_path))
    ranges = {name: layer.requantization_range for name, layer in plan.layers.items() if layer.requantization_range}
    has_bias = {name: layer.has_bias for name, layer in plan.layers.items()}
    samples, _ = split(discover(subject.val, num_classes=subject.num_classes), args.images, seed=1)
    images, _ = load_batch(samples, get_spec("t2t_vit_7").preprocess)
    reference = logits(fp32, images).argmax(1)
    qdq = onnx.load(str(qdq_path))

    def agreement(model: onnx.ModelProto) -> float:
        path = work / "variant.onnx"
        onnx.save(model, str(path))
        return float(np.mean(logits(path, images).argmax(1) == reference))

    print(f"T2T-ViT-7 subject, {len(images)} Imagenette val images; plan of {len(plan.layers)} layers, "
          f"{len(ranges)} requantized on XNNPACK")
    print(f"{'variant':<44} agreement with fp32")
    print(f"{'the plan QDQ file (ONNX Runtime INT8)':<44} {100 * agreement(qdq):.2f}%")
    print(f"{f'all {len(ranges)} outputs requantized':<44} {100 * agreement(requantized(qdq, ranges, has_bias)):.2f}%")
    for label, key in GROUPS.items():
        rest = {name: r for name, r in ranges.items() if key not in name}
        print(f"{f'all but {label}':<44} {100 * agreement(requantized(qdq, rest, has_bias)):.2f}%")
    for factor in (0.8, 1.25, 1.6):
        print(f"{f'all, ranges x{factor}':<44} {100 * agreement(requantized(qdq, ranges, has_bias, factor)):.2f}%")


if __name__ == "__main__":
    main()
