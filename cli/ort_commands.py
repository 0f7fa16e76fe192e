"""ONNX Runtime forms of an ONNX file, each a file of its own: `t2tedge optimize` (contrib-op fusions, uint8
weights) and `t2tedge export ort` (ORT format for ONNX Runtime Mobile)."""

from __future__ import annotations

import argparse
from pathlib import Path

from t2tedge.fileio import ensure_writable_dir


def cmd_optimize(args: argparse.Namespace) -> int:
    from t2tedge.export.ort_optimize import optimize_for_onnxruntime

    out, report = optimize_for_onnxruntime(args.onnx, args.out, int8_weights=args.int8_weights)
    fused = ", ".join(f"{op} x{n}" for op, n in report["fusions"].items()) or "no contrib ops"
    moved = f"; {report['int8_weight_tensors_moved']} int8 weight tensors as uint8" if report["quantized"] else ""
    print(f"wrote {out} ({fused}{moved}); it needs ONNX Runtime, other runtimes take {Path(args.onnx).name}")
    return 0


def cmd_export_ort(args: argparse.Namespace) -> int:
    from t2tedge.export.ort_format import export_ort

    if args.out is not None:
        ensure_writable_dir(args.out)
    ort_file, config = export_ort(args.onnx, args.out, style=args.style, platform=args.platform)
    print(f"wrote {ort_file} ({ort_file.stat().st_size / 1e6:.1f} MB) and {config}")
    return 0


def optimize_parser(sub) -> None:
    p = sub.add_parser(
        "optimize", help="write the ONNX Runtime CPU form of an ONNX file (contrib-op fusions, uint8 weights)",
        description="Write a copy of an ONNX file (fp32 or our INT8 QDQ) rewritten for ONNX Runtime's CPU provider: "
                    "T2T-ViT's self-attention as com.microsoft.Attention (QAttention in INT8), int8 MatMuls with their "
                    "bias as MatMulIntegerToFloat, and optionally uint8 weights for x86 CPUs without VNNI. "
                    "`t2tedge profile`, `eval` and `table4` run files as they are, so time this file to measure "
                    "what it gives (docs/runtimes.md).")
    p.add_argument("onnx", type=Path, metavar="FILE.onnx", help="an fp32 export, or an INT8 file from `t2tedge quantize`")
    p.add_argument("--int8-weights", choices=["int8", "uint8", "auto"], default="int8",
                   help="INT8 files: keep int8 weights (VNNI x86, ARM) or move them to uint8, exactly, for x86 CPUs "
                        "without VNNI, whose int8 dot products saturate in ONNX Runtime; auto: uint8 if this CPU "
                        "lacks VNNI (default: %(default)s)")
    p.add_argument("--out", type=Path, help="the file to write (default: FILE.ort-cpu.onnx beside FILE.onnx)")
    p.set_defaults(func=cmd_optimize)


def ort_format_parser(export_sub) -> None:
    p = export_sub.add_parser(
        "ort", help="ORT format (.ort) for ONNX Runtime Mobile, via onnxruntime's own converter",
        description="Convert an ONNX export to ONNX Runtime's ORT format and write the required-operators config "
                    "for a minimal build. 'fixed' bakes in CPU optimizations for --platform; 'runtime' leaves them "
                    "to session creation, which the XNNPACK execution provider needs to claim nodes.")
    p.add_argument("onnx", type=Path)
    p.add_argument("--out", type=Path, help="output folder (default: beside the ONNX file)")
    p.add_argument("--style", choices=("fixed", "runtime"), default="fixed")
    p.add_argument("--platform", choices=("arm", "amd64"), default="arm", help="target CPU (default: %(default)s)")
    p.set_defaults(func=cmd_export_ort)
