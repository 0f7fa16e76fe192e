"""Does INT8 pay? (`make bench-speed`): per model and target, the fp32 file, the INT8 file of the one plan and, where
the target builds it, w8; each file's batch-1 p50 (timed alone, two interleaved rounds) and its ratio to the fp32
file from the same run, top-1 agreement with the fp32 file, and the share of the model's MACs left in float; then
`auto`: the file `export --precision auto` would choose from these measurements (harness.auto_precision's
choose_fastest). At the top, the CPU and its int8 dot-product instructions (VNNI, AVX-VNNI, AMX; none): INT8
speed on x86 depends on them.

T2T-ViT-7 is the Imagenette subject, scored on Imagenette val and calibrated on Imagenette train; MobileNetV2 1.0 on
imagenet-val1300, calibrated on imagenet-sample. Writes results/bench_speed.json and prints a Markdown table.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from t2tedge.errors import DataError
from t2tedge.fileio import atomic_write_text
from t2tedge.harness.artifacts import artifact_for
from t2tedge.harness.auto_precision import choose_fastest
from t2tedge.harness.latency import machine_info
from t2tedge.results import AutoCandidate
from t2tedge.targets import get_target, target_for_file

from bench_common import bench_arguments, logits_of, planned_model, timed_alone

TARGETS = ("onnxruntime", "openvino", "litert", "executorch")
# Agreement each model's `auto` must reach (the targets: T2T-ViT-7 99%, MobileNetV2 98.7%).
AGREEMENT = {"t2t_vit_7": 0.99, "mobilenet_v2_100": 0.987}
WEIGHT_OPS = ("Conv", "MatMul", "Gemm")


def int8_dot_products() -> str:
    """The int8 dot-product instructions this CPU's flags show."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    names = {"avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI", "amx_int8": "AMX-INT8", "asimddp": "ARM dot product",
             "i8mm": "ARM i8mm"}
    found = [label for flag, label in names.items() if flag in flags]
    return ", ".join(found) if found else "none (int8 products through 16-bit multiply-adds, which may saturate)"


def gemm_peaks(threads: int, size: int = 1024, runs: int = 20) -> dict[str, float]:
    """ONNX Runtime's best MatMul rate here on size^3 products: fp32 (GFLOP/s) and uint8 x int8 -> int32
    (MatMulInteger, GOP/s): the floor a model's MACs cannot beat on this CPU."""
    import time

    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    cases = {"fp32_gflops": ("MatMul", TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT,
                             rng.standard_normal((size, size), dtype=np.float32),
                             rng.standard_normal((size, size), dtype=np.float32)),
             "int8_gops": ("MatMulInteger", TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32,
                           rng.integers(0, 255, (size, size), dtype=np.uint8),
                           rng.integers(-127, 127, (size, size), dtype=np.int8))}
    peaks = {}
    for key, (op, a_type, b_type, c_type, a, b) in cases.items():
        graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["c"])], "gemm",
                                  [helper.make_tensor_value_info("a", a_type, [size, size]),
                                   helper.make_tensor_value_info("b", b_type, [size, size])],
                                  [helper.make_tensor_value_info("c", c_type, [size, size])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        best = float("inf")
        for i in range(runs + 3):
            start = time.perf_counter()
            session.run(None, {"a": a, "b": b})
            if i >= 3:
                best = min(best, time.perf_counter() - start)
        peaks[key] = 2 * size**3 / best / 1e9
    return peaks


def node_macs(fp32_onnx: Path) -> dict[str, int]:
    """MACs of each Conv / MatMul / Gemm node of a static-shape fp32 ONNX file (batch 1)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(fp32_onnx)))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    shapes.update({i.name: list(i.dims) for i in model.graph.initializer})
    macs = {}
    for node in model.graph.node:
        if node.op_type not in WEIGHT_OPS or node.output[0] not in shapes or node.input[1] not in shapes:
            continue
        out, second = shapes[node.output[0]], shapes[node.input[1]]
        if node.op_type == "Conv":
            reduce = int(np.prod(second[1:]))  # in-channels per group x kernel
        elif node.op_type == "Gemm":
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            reduce = second[1] if trans_b else second[0]
        else:
            reduce = second[-2]
        macs[node.name] = int(np.prod(out)) * reduce
    return macs


def float_mac_share(macs: dict[str, int], qdq_onnx: Path) -> float:
    """Share of `macs` in nodes the plan's QDQ file leaves in float (an input not fed by a DequantizeLinear)."""
    model = onnx.load(str(qdq_onnx))
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    initializers = {i.name for i in model.graph.initializer}
    floating = 0
    for node in model.graph.node:
        if node.name in macs and not all(producers.get(i) == "DequantizeLinear" for i in node.input[:2]
                                         if i not in initializers or node.op_type != "MatMul"):
            floating += macs[node.name]
    return floating / max(1, sum(macs.values()))


def main() -> int:
    parser = bench_arguments(__doc__.splitlines()[0], "results/bench_speed.json")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.set_defaults(runs=100)
    args = parser.parse_args()
    rows, floors = [], {}
    cpu = machine_info().cpu
    dot = int8_dot_products()
    peaks = gemm_peaks(args.threads)
    print(f"CPU: {cpu}; int8 dot products: {dot}; {args.threads} threads, batch 1; ONNX Runtime GEMM peak "
          f"{peaks['fp32_gflops']:.0f} GFLOP/s fp32, {peaks['int8_gops']:.0f} GOP/s u8 x s8", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as tmp:
        for name in args.models.split(","):
            work = Path(tmp) / name
            targets = [get_target(t) for t in args.targets.split(",")]
            planned = planned_model(name, targets, work, args.limit, args.num_calib)
            checkpoint, classes, images, label = planned.checkpoint, planned.classes, planned.images, planned.label
            files: dict[tuple[str, str], Path] = {}
            for target in targets:
                files[target.name, "fp32"] = artifact_for(target, name, checkpoint, work / "fp32", num_classes=classes)
                files[target.name, "int8"] = planned.int8[target.name]
                if "w8" in target.builds and "w8" not in target.not_measured_here:
                    files[target.name, "w8"] = artifact_for(target, name, checkpoint, work / "w8", precision="w8",
                                                            num_classes=classes)
            macs = node_macs(files["onnxruntime", "fp32"]) if ("onnxruntime", "fp32") in files else {}
            if macs:
                floor = 2 * sum(macs.values()) / 1e6
                print(f"{name}: {sum(macs.values()) / 1e9:.2f} GMACs in Conv/MatMul/Gemm: at the GEMM peaks "
                      f"{floor / peaks['fp32_gflops']:.2f} ms fp32, {floor / peaks['int8_gops']:.2f} ms int8", flush=True)
                floors[name] = {"gmacs": sum(macs.values()) / 1e9, "fp32_ms": floor / peaks["fp32_gflops"],
                                "int8_ms": floor / peaks["int8_gops"]}
            share = float_mac_share(macs, files["onnxruntime", "int8"]) if macs else None
            print(f"{name}: timing {len(files)} files alone ...", flush=True)
            latency = timed_alone({f"{t} {p}": path for (t, p), path in files.items()}, name, args.threads, args.runs)
            for target in targets:
                reference = logits_of(target.load(files[target.name, "fp32"], threads=args.threads), images).argmax(1)
                candidates = []
                for (t, precision), path in files.items():
                    if t != target.name:
                        continue
                    top1 = logits_of(target_for_file(path).load(path, threads=args.threads), images).argmax(1)
                    timing = latency[f"{t} {precision}"]
                    candidates.append(AutoCandidate(precision=precision, file=path.name,
                                                    bytes=target.size_bytes(path), p50_ms=timing["p50_ms"],
                                                    agreement=float(np.mean(top1 == reference))))
                fp32_p50 = candidates[0].p50_ms
                try:
                    auto = choose_fastest(candidates, AGREEMENT.get(name, 0.99)).precision
                except DataError:
                    auto = "none"
                for c in candidates:
                    row = {"model": name, "weights": label, "target": target.name, "precision": c.precision,
                           "images": len(images), "p50_ms": c.p50_ms, "ratio_to_fp32": c.p50_ms / fp32_p50,
                           "agreement_fp32": c.agreement, "size_mb": c.bytes / 1e6, "auto": c.precision == auto,
                           "float_mac_share": share if c.precision == "int8" else (1.0 if c.precision == "fp32" else None)}
                    rows.append(row)
                    print(f"  {target.name} {c.precision}: p50 {c.p50_ms:.2f} ms ({row['ratio_to_fp32']:.2f}x fp32), "
                          f"agreement {100 * c.agreement:.2f}%" + ("  <- auto" if row["auto"] else ""), flush=True)
    print(f"\nCPU: {cpu}; int8 dot products: {dot}; {args.threads} threads, batch 1\n")
    print("| model | target | precision | p50 ms | x fp32 | agreement with fp32 | MACs in float | MB | auto |")
    print("| --- " * 9 + "|")
    for r in rows:
        share = f"{100 * r['float_mac_share']:.1f}%" if r["float_mac_share"] is not None else ""
        print(f"| {r['model']} | {r['target']} | {r['precision']} | {r['p50_ms']:.2f} | {r['ratio_to_fp32']:.2f} | "
              f"{100 * r['agreement_fp32']:.2f}% | {share} | {r['size_mb']:.1f} | {'**auto**' if r['auto'] else ''} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({"machine": machine_info().to_dict(), "int8_dot_products": dot,
                                            "threads": args.threads, "gemm_peaks": peaks, "floors": floors,
                                            "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
