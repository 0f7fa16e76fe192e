"""Bad input never costs a user a good artifact or a traceback: each case exits non-zero with one line, writes
nothing, and leaves the artifact already in its --out folder as it was."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from t2tedge.cli import main
from t2tedge.export import export_onnx
from t2tedge.export.ort_optimize import optimize_for_onnxruntime

GOOD = b"a good artifact from an earlier run"


class Unpicklable:
    """A class the safe loader refuses: a checkpoint holding one would run code when unpickled."""


@pytest.fixture(scope="module")
def world(tmp_path_factory, weights_dir, val_dir):
    root = tmp_path_factory.mktemp("bad_input")
    files = {"root": root, "val": val_dir}
    files["mnv2"] = export_onnx("mobilenet_v2_100", weights_dir / "mobilenet_v2_1.0_imagenet_tfsame.pth", out_dir=root)
    files["t2t"] = export_onnx("t2t_vit_7", None, out_dir=root / "t2t")
    files["optimized"] = optimize_for_onnxruntime(files["t2t"])[0]
    (root / "folder.onnx").mkdir()
    files["folder_onnx"] = root / "folder.onnx"
    bare = onnx.load(str(files["mnv2"]))
    del bare.metadata_props[:]
    onnx.save(bare, str(root / "bare.onnx"))
    files["bare"] = root / "bare.onnx"
    qdq = onnx.load(str(files["mnv2"]))  # a stand-in QDQ file: one Q/DQ pair on the logits is enough to be int8
    logits = qdq.graph.output[0].name
    for node in qdq.graph.node:
        node.output[:] = [name + "_f" if name == logits else name for name in node.output]
    qdq.graph.initializer.extend([onnx.numpy_helper.from_array(np.array(0.1, np.float32), "qs"),
                                  onnx.numpy_helper.from_array(np.array(0, np.int8), "qz")])
    qdq.graph.node.extend([onnx.helper.make_node("QuantizeLinear", [logits + "_f", "qs", "qz"], ["q"]),
                           onnx.helper.make_node("DequantizeLinear", ["q", "qs", "qz"], [logits])])
    (root / "qdq").mkdir()
    onnx.save(qdq, str(root / "qdq" / "mobilenet_v2_100_int8.onnx"))
    files["qdq"] = root / "qdq" / "mobilenet_v2_100_int8.onnx"
    from t2tedge.export.onnx_fp16 import write_fp16_onnx

    write_fp16_onnx(files["mnv2"], root / "fp16" / "mobilenet_v2_100_fp16.onnx", None)
    files["fp16"] = root / "fp16" / "mobilenet_v2_100_fp16.onnx"
    (root / "m.engine").write_bytes(b"a TensorRT engine, built on another machine")
    files["engine"] = root / "m.engine"
    other = onnx.load(str(files["t2t"]))  # the T2T-ViT-7 file, stamped as preprocessed with other statistics
    for prop in other.metadata_props:
        if prop.key == "t2tedge.preprocess":
            prop.value = json.dumps({**json.loads(prop.value), "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    (root / "other_prep").mkdir()
    onnx.save(other, str(root / "other_prep" / "t2t_vit_7.onnx"))
    files["t2t_prep"] = root / "other_prep" / "t2t_vit_7.onnx"
    (root / "fake.onnx").write_text("not a model\n")
    files["fake"] = root / "fake.onnx"
    (root / "fake.tflite").write_text("not a model\n")
    files["fake_tflite"] = root / "fake.tflite"
    (root / "fake.pte").write_text("not a program\n")
    files["fake_pte"] = root / "fake.pte"
    from t2tedge.export.openvino_export import convert_onnx_to_ir

    cut = convert_onnx_to_ir(files["mnv2"], root / "cut_ir" / "mobilenet_v2_100.xml")
    cut.with_suffix(".bin").write_bytes(cut.with_suffix(".bin").read_bytes()[:100_000])
    files["cut_ir"] = cut
    (root / "nobin.xml").write_text("<?xml version='1.0'?>\n<net name='m' version='11'></net>\n")
    files["nobin"] = root / "nobin.xml"
    (root / "a_file").write_text("I am a file\n")
    files["file"] = root / "a_file"
    (root / "empty").mkdir()
    files["empty"] = root / "empty"
    huge = root / "huge"
    huge.mkdir()
    Image.new("1", (15000, 15000)).save(huge / "n01440764_huge.png")  # 225 Mpixel: PIL's decompression-bomb limit
    files["huge"] = huge
    from t2tedge.models import create_model

    state = {k: v.to(torch.int32) for k, v in create_model("mobilenet_v2_100").state_dict().items()}
    torch.save(state, root / "int32.pth")
    files["int32"] = root / "int32.pth"
    torch.save({"state_dict": create_model("mobilenet_v2_100").state_dict(), "extra": Unpicklable()}, root / "pickle.pth")
    files["pickle"] = root / "pickle.pth"
    whole = (root / "pickle.pth").read_bytes()
    (root / "truncated.pth").write_bytes(whole[: len(whole) // 2])
    files["truncated"] = root / "truncated.pth"
    (root / "ckpt_dir").mkdir()
    files["ckpt_dir"] = root / "ckpt_dir"
    (root / "unknown_keys.json").write_text('{"method": "mse", "quantise_bias": false}')
    files["config"] = root / "unknown_keys.json"
    files.update(_external_data_models(root, files["mnv2"]))
    files.update(_damaged_plans(root))
    (root / "foreign.json").write_text('{"results": [{"model": "mobilenet_v2_100", "latency_ms": 3.1}]}\n')
    files["foreign"] = root / "foreign.json"
    return files


def _external_data_models(root: Path, fp32: Path) -> dict[str, Path]:
    """The same ONNX model saved as large exports are, weights in `m.onnx.data` beside it: whole, without its data
    file, and with the data file cut short."""
    files = {}
    for kind in ("ext", "ext_missing", "ext_cut"):
        (root / kind).mkdir()
        onnx.save(onnx.load(str(fp32)), str(root / kind / "m.onnx"), save_as_external_data=True,
                  all_tensors_to_one_file=True, location="m.onnx.data", size_threshold=0)
        files[kind] = root / kind / "m.onnx"
    (root / "ext_missing" / "m.onnx.data").unlink()
    data = root / "ext_cut" / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:4096])
    return files


def _damaged_plans(root: Path) -> dict[str, Path]:
    """Quantization plans of MobileNetV2's stem convolution (32 channels), each damaged one way."""
    from t2tedge.quantize.config import QuantConfig
    from t2tedge.quantize.quantization_plan import LayerPlan, QuantPlan, arrays_path
    from t2tedge.quantize.records import CalibrationInfo

    def plan(weight_channels: int, scale: float) -> QuantPlan:
        layer = LayerPlan(op="Conv", channels=32, input_range=(-1.0, 1.0), output_range=(0.0, 6.0))
        arrays = {"features.0.0.weight": np.ones((weight_channels, 3, 3, 3), np.int8),
                  "features.0.0.scale": np.full(32, scale, np.float32)}
        return QuantPlan(model="mobilenet_v2_100", weights="", calibration=CalibrationInfo("photos", 8, 0),
                         recipe=QuantConfig(), layers={"features.0.0": layer}, arrays=arrays)

    (root / "plans").mkdir()
    files = {"plan_nan": root / "plans" / "nan.plan.json", "plan_shape": root / "plans" / "shape.plan.json",
             "plan_version": root / "plans" / "old.plan.json"}
    plan(32, float("nan")).save(files["plan_nan"])
    plan(16, 0.01).save(files["plan_shape"])
    plan(32, 0.01).save(files["plan_version"])
    old = json.loads(files["plan_version"].read_text())
    del old["schema"]
    files["plan_version"].write_text(json.dumps({**old, "version": 1}))
    assert arrays_path(files["plan_version"]).is_file()
    return files


def _out_with_good_artifacts(root: Path, name: str) -> Path:
    """An --out folder that already holds a good artifact under every name the failing command could write."""
    out = root / "outs" / name
    out.mkdir(parents=True)
    for artifact in ("mobilenet_v2_100.onnx", "mobilenet_v2_100_int8.onnx", "mobilenet_v2_100_int8.json",
                     "mobilenet_v2_100_int8_tensorrt.trt10.cache", "mobilenet_v2_100_int8.plan.json",
                     "mobilenet_v2_100_int8.plan.npz", "t2t_vit_7.onnx", "table4.json", "cell.json", "x.pth",
                     "mobilenet_v2_100.tflite", "mobilenet_v2_100.tflite.json", "mobilenet_v2_100_int8.tflite",
                     "mobilenet_v2_100_int8.tflite.json"):
        (out / artifact).write_bytes(GOOD)
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _inputs(root: Path) -> dict[str, tuple[int, int]]:
    """Every input file of the battery (outside the --out folders), by size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file() and "outs" not in p.relative_to(root).parts}


M = "mobilenet_v2_100"
CASES = [
    # 1. the model on the command line is checked against the artifact
    ("quantize names another model", ["quantize", M, "--onnx", "{t2t}", "--out", "{out}"], 1,
     "holds t2t_vit_7, but the command names mobilenet_v2_100"),
    ("eval names another model", ["eval", M, "--onnx", "{t2t}", "--limit", "2", "--data", "{val}"], 1,
     "holds t2t_vit_7, but the command names mobilenet_v2_100"),
    ("profile --model names another model", ["profile", "{t2t}", "--model", M, "--runs", "1", "--out", "{out}"], 1,
     "holds t2t_vit_7, but --model names mobilenet_v2_100"),
    ("parity names another model", ["parity", M, "--onnx", "{t2t}", "--limit", "2", "--data", "{val}"], 1,
     "holds t2t_vit_7"),
    ("parity FILEs of two models", ["parity", "{mnv2}", "{t2t}", "--limit", "2", "--data", "{val}"], 1,
     "t2t_vit_7.onnx holds t2t_vit_7, mobilenet_v2_100.onnx holds mobilenet_v2_100"),
    ("parity FILE whose runtime is missing", ["parity", "{t2t}", "{engine}", "--limit", "2", "--data", "{val}"], 2,
     "fewer than two of the files run here (m.engine: "),
    ("parity of a file that is no model", ["parity", "{t2t}", "{config}", "--data", "{val}"], 2,
     "unknown_keys.json is no model file parity runs"),
    ("parity one FILE only", ["parity", "{t2t}", "--data", "{val}"], 2,
     "parity compares two files or more, or one file with --reference MODEL.TAG"),
    ("parity --reference preprocesses otherwise", ["parity", "{t2t_prep}", "--reference", "t2t_vit_7", "--limit",
                                                   "2", "--data", "{val}"], 1,
     "--reference t2t_vit_7 preprocesses images otherwise than the files stamp (mean: "),
    ("parity --junit under a file", ["parity", "{t2t}", "{t2t_prep}", "--junit", "{file}/r.xml"], 2,
     "is a file, not a folder"),
    ("parity FILEs with --precision", ["parity", "{t2t}", "{t2t_prep}", "--precision", "int8"], 2,
     "--precision goes with the model form (t2tedge parity MODEL); files run as they are on disk"),
    ("parity MODEL with --blocks", ["parity", M, "--blocks"], 2, "--blocks goes with the file form"),
    ("parity --tolerance of no metric", ["parity", "{t2t}", "{t2t_prep}", "--tolerance", "int8:cosin=0.9"], 2,
     "--tolerance 'int8:cosin=0.9': expected [KEY:]METRIC=VALUE"),
    ("parity --png without --blocks", ["parity", "{t2t}", "{t2t_prep}", "--png", "{out}/b.png"], 2,
     "--png draws SQNR per block; add --blocks"),
    ("parity FILEs --checkpoint without --reference", ["parity", "{t2t}", "{t2t_prep}", "--checkpoint", "random",
                                                       "--data", "{val}"], 2,
     "--checkpoint gives the reference's weights; add --reference MODEL"),
    ("eval expects other classes", ["eval", "t2t_vit_7", "--onnx", "{t2t}", "--num-classes", "10", "--limit", "2",
                                    "--data", "{val}"], 1, "has 1000 classes, but the command expects 10"),
    ("eval of a text file named .onnx", ["eval", M, "--onnx", "{fake}", "--data", "{val}"], 1,
     "is not a readable ONNX model"),
    ("eval --onnx with --checkpoint", ["eval", M, "--onnx", "{mnv2}", "--checkpoint", "random"], 2,
     "drop --checkpoint"),
    # 2. counts are validated where they are parsed
    ("quantize --num-calib -5", ["quantize", M, "--num-calib", "-5", "--out", "{out}"], 2,
     "--num-calib: must be at least 1, not -5"),
    ("quantize --num-calib 0", ["quantize", M, "--num-calib", "0", "--out", "{out}"], 2, "must be at least 1, not 0"),
    ("quantize --num-calib text", ["quantize", M, "--num-calib", "many", "--out", "{out}"], 2,
     "'many' is not a whole number"),
    ("parity --limit 0", ["parity", M, "--limit", "0"], 2, "--limit: must be at least 1"),
    ("eval --batch 0", ["eval", M, "--batch", "0"], 2, "--batch: must be at least 1"),
    ("eval --threads -1", ["eval", M, "--threads", "-1"], 2, "--threads: must be at least 1"),
    ("eval --limit -1", ["eval", M, "--limit", "-1"], 2, "--limit: must be at least 1"),
    ("profile --runs 0", ["profile", "{mnv2}", "--runs", "0", "--out", "{out}"], 2, "--runs: must be at least 1"),
    ("profile --warmup -1", ["profile", "{mnv2}", "--warmup", "-1", "--out", "{out}"], 2, "--warmup: must be at least 0"),
    ("train --img-size 0", ["train", M, "--data", "{val}", "--img-size", "0", "--out", "{out}/x.pth"], 2,
     "--img-size: must be at least 32"),
    ("train --epochs 0", ["train", M, "--data", "{val}", "--epochs", "0", "--out", "{out}/x.pth"], 2,
     "--epochs: must be at least 1"),
    ("train --lr nan", ["train", M, "--data", "{val}", "--lr", "nan", "--out", "{out}/x.pth"], 2,
     "--lr: must be a positive number"),
    ("export onnx --num-classes 0", ["export", "onnx", M, "--num-classes", "0", "--out", "{out}"], 2,
     "--num-classes: must be at least 1"),
    ("export onnx --opset 99", ["export", "onnx", M, "--opset", "99", "--out", "{out}"], 2,
     "--opset: must be from 13 to 21"),
    ("quantize --target-agreement 1.5", ["quantize", M, "--target-agreement", "1.5", "--out", "{out}"], 2,
     "--target-agreement: must be in (0, 1]"),
    ("table4 --runs 0", ["table4", "--runs", "0", "--out", "{out}"], 2, "--runs: must be at least 1"),
    ("unknown --precision-hint", ["profile", "{mnv2}", "--precision-hint", "int4"], 2, "invalid choice: 'int4'"),
    ("--precision-hint without openvino", ["eval", M, "--onnx", "{mnv2}", "--precision-hint", "bf16", "--limit", "1",
                                           "--data", "{val}"], 2, "--precision-hint is an option of openvino, not of "
                                                                  "onnxruntime"),
    # 3. output problems surface before the work
    ("export onnx --out is a file", ["export", "onnx", M, "--out", "{file}"], 2, "is a file, not a folder"),
    ("export onnx --out under a file", ["export", "onnx", M, "--out", "{file}/sub"], 2, "is not a writable folder"),
    ("export onnx --out in /proc", ["export", "onnx", M, "--out", "/proc/t2tedge-out"], 2, "is not a writable folder"),
    ("quantize --out is a file", ["quantize", M, "--out", "{file}"], 2, "is a file, not a folder"),
    ("export openvino --out is a file", ["export", "openvino", M, "--out", "{file}"], 2, "is a file, not a folder"),
    ("profile --out under a file", ["profile", "{mnv2}", "--out", "{file}/cell.json"], 2, "is a file, not a folder"),
    ("table4 --out is a file", ["table4", "--out", "{file}"], 2, "is a file, not a folder"),
    ("parity --json under a file", ["parity", M, "--json", "{file}/r.json"], 2, "is a file, not a folder"),
    ("bundle --out is not .tar.gz", ["export", "bundle", "{mnv2}", "--out", "{out}/b.zip"], 2, "must end in .tar.gz"),
    ("train --out is a folder", ["train", M, "--data", "{val}", "--out", "{out}"], 2, "is a folder; name a file"),
    # 5. calibration data
    ("calibration folder empty", ["quantize", M, "--calib", "{empty}", "--out", "{out}"], 1, "no images"),
    ("calibration folder is a file", ["quantize", M, "--calib", "{file}", "--out", "{out}"], 2, "is a file, not an image folder"),
    ("oversized calibration image", ["quantize", M, "--onnx", "{mnv2}", "--calib", "{huge}", "--num-calib", "1",
                                     "--out", "{out}"], 1,
     "too large to decode safely"),
    ("oversized evaluation image", ["eval", M, "--data", "{huge}"], 1, "too large to decode safely"),
    # 6. silent acceptance
    ("int32 checkpoint", ["export", "onnx", M, "--checkpoint", "{int32}", "--out", "{out}"], 1, "integer tensors"),
    ("config with unknown keys", ["quantize", M, "--onnx", "{mnv2}", "--config", "{config}", "--out", "{out}"], 1,
     "unknown field(s) quantise_bias"),
    ("--exclude matching nothing", ["quantize", M, "--onnx", "{mnv2}", "--exclude", "Convv", "--num-calib", "2",
                                    "--out", "{out}"], 1, "--exclude Convv matches no op type or node name"),
    ("bundle of a text file named .onnx", ["export", "bundle", "{fake}", "--out", "{out}/b.tar.gz"], 1,
     "cannot bundle fake.onnx: {fake} is not a readable ONNX model"),
    # 7. messages that mislead
    ("untrusted pickle", ["export", "onnx", M, "--checkpoint", "{pickle}", "--out", "{out}"], 1,
     "holds Python objects (test_bad_input.Unpicklable) besides tensors"),
    ("OpenVINO IR without its .bin", ["profile", "{nobin}", "--out", "{out}"], 1,
     "OpenVINO IR nobin.xml needs its weights nobin.bin beside it"),
    ("bundle of OpenVINO IR without its .bin", ["export", "bundle", "{nobin}", "--out", "{out}/b.tar.gz"], 1,
     "nobin.xml needs nobin.bin beside it"),
    ("OpenVINO IR with a truncated .bin", ["profile", "{cut_ir}", "--out", "{out}"], 1,
     "Incorrect weights in bin file!"),
    ("bundle of OpenVINO IR with a truncated .bin", ["export", "bundle", "{cut_ir}", "--out", "{out}/b.tar.gz"], 1,
     "cannot bundle mobilenet_v2_100.xml: OpenVINO cannot read"),
    ("truncated checkpoint", ["export", "onnx", M, "--checkpoint", "{truncated}", "--out", "{out}"], 1,
     "is truncated or damaged"),
    ("checkpoint is a folder", ["export", "onnx", M, "--checkpoint", "{ckpt_dir}", "--out", "{out}"], 1,
     "is a folder, not a file"),
    ("export openvino of a missing file", ["export", "openvino", "{root}/missing.onnx", "--out", "{out}"], 1,
     "ONNX file not found"),
    ("export openvino with --checkpoint for a file", ["export", "openvino", "{mnv2}", "--checkpoint", "random",
                                                      "--out", "{out}"], 2, "--checkpoint goes with a model name"),
    ("profile of a missing artifact", ["profile", "{root}/missing.onnx", "--out", "{out}"], 1, "artifact not found"),
    ("eval of a missing data folder", ["eval", M, "--data", "{root}/nowhere"], 1, "data folder not found"),
    ("unknown model", ["export", "onnx", "resnet50", "--out", "{out}"], 2, "unknown model"),
    ("info of an unknown model", ["info", "resnet50"], 2, "unknown model"),
    ("export coreml --out is a file", ["export", "coreml", M, "--out", "{file}"], 2, "is a file, not a folder"),
    ("export coreml --num-calib 0", ["export", "coreml", M, "--num-calib", "0", "--out", "{out}"], 2,
     "--num-calib: must be at least 1"),
    ("export tensorrt --out is a file", ["export", "tensorrt", "{mnv2}", "--out", "{file}"], 2,
     "is a file, not a folder"),
    ("export tensorrt --max-batch 0", ["export", "tensorrt", "{mnv2}", "--max-batch", "0", "--out", "{out}"], 2,
     "--max-batch: must be at least 1"),
    ("export ort of a text file named .onnx", ["export", "ort", "{fake}", "--out", "{out}"], 1, "{fake}"),
    ("check-trt of a text file named .onnx", ["check-trt", "{fake}"], 1, "cannot read ONNX file"),
    # LiteRT: everything is checked before the conversion starts
    ("export litert --out is a file", ["export", "litert", M, "--out", "{file}"], 2, "is a file, not a folder"),
    ("export litert --precision int4", ["export", "litert", M, "--precision", "int4", "--out", "{out}"], 2,
     "invalid choice: 'int4'"),
    ("export litert --layout nchw4", ["export", "litert", M, "--layout", "nchw4", "--out", "{out}"], 2,
     "invalid choice: 'nchw4'"),
    ("export litert --num-calib 0", ["export", "litert", M, "--precision", "int8", "--num-calib", "0",
                                     "--out", "{out}"], 2, "--num-calib: must be at least 1"),
    ("export litert calibration folder empty", ["export", "litert", M, "--precision", "int8", "--calib", "{empty}",
                                                "--out", "{out}"], 1, "no images"),
    ("export litert --calib without int8", ["export", "litert", M, "--precision", "w8", "--calib", "{val}",
                                            "--out", "{out}"], 2, "--calib goes with --precision int8; litert w8"),
    ("export litert of an unknown model", ["export", "litert", "resnet50", "--out", "{out}"], 2, "unknown model"),
    ("profile of a text file named .tflite", ["profile", "{fake_tflite}", "--model", M, "--runs", "1",
                                              "--out", "{out}"], 1, "LiteRT cannot load"),
    ("bundle of a text file named .tflite", ["export", "bundle", "{fake_tflite}", "--out", "{out}/b.tar.gz"], 1,
     "is not a LiteRT model"),
    # ExecuTorch: everything is checked before torch.export starts
    ("export executorch --out is a file", ["export", "executorch", M, "--out", "{file}"], 2, "is a file, not a folder"),
    ("export executorch --delegate vulkan", ["export", "executorch", M, "--delegate", "vulkan", "--out", "{out}"], 2,
     "invalid choice: 'vulkan'"),
    ("export executorch --precision int4", ["export", "executorch", M, "--precision", "int4", "--out", "{out}"], 2,
     "invalid choice: 'int4'"),
    ("export executorch coreml int8", ["export", "executorch", M, "--delegate", "coreml", "--precision", "int8",
                                      "--out", "{out}"], 2, "--delegate coreml takes --precision fp32"),
    ("export executorch --num-calib 0", ["export", "executorch", M, "--precision", "int8", "--num-calib", "0",
                                         "--out", "{out}"], 2, "--num-calib: must be at least 1"),
    ("export executorch calibration folder empty", ["export", "executorch", M, "--precision", "int8", "--calib",
                                                    "{empty}", "--out", "{out}"], 1, "no images"),
    ("export executorch --calib without int8", ["export", "executorch", M, "--precision", "w8", "--calib", "{val}",
                                                "--out", "{out}"], 2, "--calib goes with --precision int8"),
    ("export executorch of an unknown model", ["export", "executorch", "resnet50", "--out", "{out}"], 2,
     "unknown model"),
    ("profile of a text file named .pte", ["profile", "{fake_pte}", "--model", M, "--runs", "1", "--out", "{out}"], 1,
     "ExecuTorch cannot read"),
    ("bundle of a text file named .pte", ["export", "bundle", "{fake_pte}", "--out", "{out}/b.tar.gz"], 1,
     "is not an ExecuTorch program"),
    # optimize: the source is read and --out checked before anything is written
    ("optimize of a text file named .onnx", ["optimize", "{fake}", "--out", "{out}/x.onnx"], 1, "cannot read"),
    ("optimize of a missing file", ["optimize", "{root}/missing.onnx", "--out", "{out}/x.onnx"], 1,
     "ONNX file not found"),
    ("optimize of a .tflite", ["optimize", "{fake_tflite}", "--out", "{out}/x.onnx"], 2, "is not an .onnx file"),
    ("optimize --out is a folder", ["optimize", "{mnv2}", "--out", "{folder_onnx}"], 2, "is a folder; name a file"),
    ("optimize --out not .onnx", ["optimize", "{mnv2}", "--out", "{out}/x.txt"], 2, "must end in .onnx"),
    ("optimize --int8-weights int4", ["optimize", "{mnv2}", "--int8-weights", "int4", "--out", "{out}/x.onnx"], 2,
     "invalid choice: 'int4'"),
    ("optimize of an optimized file", ["optimize", "{optimized}", "--out", "{out}/x.onnx"], 2,
     "is already optimized for ONNX Runtime"),
    # 8. options that do not apply to what the command will do: one line, exit 2, before any work
    ("profile .onnx --compute-units", ["profile", "{mnv2}", "--compute-units", "CPU_ONLY", "--out", "{out}"], 2,
     "--compute-units is an option of coreml, not of onnxruntime"),
    ("profile .pte --engine-precision", ["profile", "{fake_pte}", "--engine-precision", "int8", "--out", "{out}"], 2,
     "--engine-precision is an option of tensorrt, not of executorch"),
    ("profile .onnx --precision-hint", ["profile", "{mnv2}", "--precision-hint", "bf16", "--out", "{out}"], 2,
     "--precision-hint is an option of openvino, not of onnxruntime"),
    ("profile .tflite --provider", ["profile", "{fake_tflite}", "--provider", "xnnpack", "--out", "{out}"], 2,
     "--provider is an option of onnxruntime, not of litert"),
    ("profile --limit without --data", ["profile", "{mnv2}", "--limit", "4", "--out", "{out}"], 2,
     "--limit counts images of --data"),
    ("profile --ops with --data", ["profile", "{mnv2}", "--ops", "--data", "{val}", "--out", "{out}"], 2,
     "accuracy (--data, --limit) is a plain `t2tedge profile`"),
    ("profile --ops with --model", ["profile", "{mnv2}", "--ops", "--model", M, "--out", "{out}"], 2,
     "--model and --force go with a plain profile"),
    ("profile without an artifact", ["profile", "--out", "{out}"], 2, "name an artifact to profile"),
    ("profile --compare with an artifact", ["profile", "{mnv2}", "--compare", "{file}", "{file}"], 2,
     "it takes no artifact and no --ops"),
    ("profile --compare of a file that is no record", ["profile", "--compare", "{file}", "{file}", "--out", "{out}"],
     1, "cannot read"),
    ("parity --compute-units without coreml", ["parity", M, "--compute-units", "ALL", "--limit", "2"], 2,
     "--compute-units is an option of coreml, not of torch, onnxruntime"),
    ("parity --onnx with litert", ["parity", M, "--runtimes", "torch,litert", "--onnx", "{mnv2}", "--limit", "2"], 2,
     "--onnx goes with runtimes that run ONNX files; litert"),
    ("parity --num-calib without int8", ["parity", M, "--num-calib", "256", "--limit", "2"], 2,
     "--calib and --num-calib go with --precision int8"),
    ("parity int8 with torch", ["parity", M, "--precision", "int8", "--runtimes", "torch,onnxruntime", "--limit", "2"],
     2, "leave out torch and --onnx"),
    ("export --plan with --calib", ["export", "executorch", M, "--precision", "int8", "--plan", "{file}", "--calib",
                                    "{val}", "--out", "{out}"], 2, "--calib and --plan exclude each other"),
    ("export --plan without int8", ["export", "litert", M, "--plan", "{file}", "--out", "{out}"], 2,
     "--plan applies to litert --precision int8"),
    ("export --plan of a missing file", ["export", "executorch", M, "--precision", "int8", "--plan",
                                         "{root}/absent.plan.json", "--out", "{out}"], 1,
     "quantization plan not found"),
    ("export --plan that is no plan", ["export", "litert", M, "--precision", "int8", "--plan", "{file}",
                                       "--out", "{out}"], 1, "cannot read quantization plan"),
    ("eval --runtime litert --provider", ["eval", M, "--runtime", "litert", "--provider", "cpu", "--limit", "1"], 2,
     "--provider is an option of onnxruntime, not of litert"),
    ("eval --onnx on torch", ["eval", M, "--onnx", "{mnv2}", "--runtime", "torch", "--limit", "1"], 2,
     "--onnx needs a runtime that runs ONNX files"),
    ("export litert --num-calib without int8", ["export", "litert", M, "--num-calib", "16", "--out", "{out}"], 2,
     "--num-calib goes with --precision int8; litert fp32 needs no calibration"),
    ("export executorch --num-calib without int8", ["export", "executorch", M, "--precision", "w8", "--num-calib",
                                                    "16", "--out", "{out}"], 2, "--num-calib goes with --precision int8"),
    ("export coreml --calib without int8", ["export", "coreml", M, "--calib", "{val}", "--out", "{out}"], 2,
     "--calib goes with --precision int8; coreml fp16 needs no calibration"),
    ("export coreml --palettize with w8", ["export", "coreml", M, "--precision", "w8", "--palettize", "6",
                                           "--out", "{out}"], 2, "--palettize applies to coreml --precision fp16 or fp32"),
    ("export coreml int8 for iOS16", ["export", "coreml", M, "--precision", "int8", "--deployment-target", "iOS16",
                                      "--out", "{out}"], 2, "w8a8 needs activation quantization"),
    ("export onnx --calib without int8", ["export", "onnx", M, "--calib", "{val}", "--out", "{out}"], 2,
     "--calib goes with --precision fp16 or int8; onnxruntime fp32 needs no calibration"),
    ("export onnx fp16 calibration folder empty", ["export", "onnx", M, "--precision", "fp16", "--calib", "{empty}",
                                                   "--out", "{out}"], 1, "no images"),
    ("export tensorrt int8 FILE.onnx as fp16", ["export", "tensorrt", "{qdq}", "--precision", "fp16", "--out", "{out}"],
     2, "is int8; a file keeps its precision"),
    ("export tensorrt fp32 FILE.onnx as int8 without a cache", ["export", "tensorrt", "{mnv2}", "--precision", "int8",
                                                               "--out", "{out}"], 2, "mobilenet_v2_100.onnx is fp32"),
    ("export tensorrt fp16 FILE.onnx --calib", ["export", "tensorrt", "{fp16}", "--precision", "fp16", "--calib",
                                                "{val}", "--out", "{out}"], 2,
     "--calib: mobilenet_v2_100_fp16.onnx is already fp16, so nothing is converted or checked"),
    ("check-trt --limit without --data", ["check-trt", "{mnv2}", "--limit", "4"], 2,
     "--limit counts the --data images the fp16 range check reads; add --data DIR"),
    ("check-trt --data missing", ["check-trt", "{mnv2}", "--data", "{root}/missing"], 1, "image folder not found"),
    ("check-trt --data on a file without our metadata", ["check-trt", "{bare}", "--data", "{val}"], 1,
     "carries no t2tedge.model metadata"),
    ("export onnx --batch with --dynamic-batch", ["export", "onnx", M, "--batch", "2", "--dynamic-batch",
                                                  "--out", "{out}"], 2, "--batch and --dynamic-batch exclude each other"),
    ("export openvino FILE.onnx --num-classes", ["export", "openvino", "{mnv2}", "--num-classes", "10",
                                                 "--out", "{out}"], 2, "--num-classes goes with a model name"),
    ("export openvino FILE.onnx --num-calib", ["export", "openvino", "{mnv2}", "--precision", "int8", "--num-calib",
                                               "8", "--out", "{out}"], 2, "--num-calib goes with a model name"),
    ("export openvino fp32 FILE.onnx as int8", ["export", "openvino", "{mnv2}", "--precision", "int8",
                                                "--out", "{out}"], 2, "mobilenet_v2_100.onnx is fp32; a file keeps"),
    ("export tensorrt --calib-cache without int8", ["export", "tensorrt", "{mnv2}", "--precision", "fp16",
                                                    "--calib-cache", "{file}", "--out", "{out}"], 2,
     "--calib-cache applies to tensorrt --precision int8"),
    ("export litert of an .onnx file", ["export", "litert", "{mnv2}", "--out", "{out}"], 2,
     "litert builds from a model name, not from mobilenet_v2_100.onnx"),
    ("quantize --max-float without a search", ["quantize", M, "--max-float", "3", "--out", "{out}"], 2,
     "--max-float goes with --sensitivity or --target-agreement"),
    ("quantize --num-heldout without a search", ["quantize", M, "--num-heldout", "100", "--out", "{out}"], 2,
     "--num-heldout goes with --sensitivity or --target-agreement"),
    ("quantize --max-float with --sensitivity alone", ["quantize", M, "--sensitivity", "--max-float", "3",
                                                       "--out", "{out}"], 2, "--max-float bounds --target-agreement"),
    ("table4 --merge with --limit", ["table4", "--merge", "{file}", "--limit", "4", "--out", "{out}"], 2,
     "--merge joins measured files and measures nothing; drop --limit"),
    ("table4 --merge with --ray", ["table4", "--merge", "{file}", "--ray", "auto", "--out", "{out}"], 2,
     "--merge joins measured files and measures nothing; drop --ray"),
    ("table4 --shard-images without --ray", ["table4", "--shard-images", "64", "--out", "{out}"], 2,
     "--shard-images goes with --ray; without it the grid runs in this process"),
    ("table4 --ray-cpus without --ray", ["table4", "--ray-cpus", "2", "--out", "{out}"], 2,
     "--ray-cpus goes with --ray; without it the grid runs in this process"),
    ("table4 --ray-cpus with a cluster address", ["table4", "--ray", "127.0.0.1:6379", "--ray-cpus", "2", "--out",
                                                  "{out}"], 2, "--ray-cpus sizes the local instance of --ray auto"),
    ("table4 --artifacts is a file", ["table4", "--artifacts", "{file}", "--out", "{out}"], 2,
     "--artifacts {file} is a file, not a folder"),
    ("table4 --ray not an address", ["table4", "--ray", "head-node", "--out", "{out}"], 2,
     "--ray head-node: expected auto or a cluster's HOST:PORT"),
    ("table4 --ray where nothing listens", ["table4", "--ray", "127.0.0.1:9", "--out", "{out}"], 2,
     "cannot reach the Ray cluster at 127.0.0.1:9"),
    # 9. one precision vocabulary: a precision a target does not build is refused with the reason
    ("export onnx --precision w8", ["export", "onnx", M, "--precision", "w8", "--out", "{out}"], 2,
     "onnxruntime builds fp32, fp16, int8, not w8: ONNX Runtime's dynamic int8 is not built here"),
    ("export executorch --precision fp16", ["export", "executorch", M, "--precision", "fp16", "--out", "{out}"], 2,
     "executorch builds fp32, w8, int8, not fp16"),
    ("export openvino --precision w8", ["export", "openvino", M, "--precision", "w8", "--out", "{out}"], 2,
     "openvino builds fp32, fp16, int8, not w8"),
    ("export --target-agreement without auto", ["export", "onnx", M, "--precision", "int8", "--target-agreement",
                                                "0.99", "--out", "{out}"], 2,
     "--target-agreement only applies to --precision auto"),
    ("export auto --candidates of a precision not built", ["export", "onnx", M, "--precision", "auto", "--candidates",
                                                           "fp32,w8", "--out", "{out}"], 2,
     "--candidates w8: onnxruntime does not build it"),
    ("export auto --target-agreement above 1", ["export", "onnx", M, "--precision", "auto", "--target-agreement",
                                                "1.5", "--out", "{out}"], 2, "--target-agreement"),
    ("table4 --precisions int4", ["table4", "--precisions", "int4", "--out", "{out}"], 2,
     "unknown precision int4; the vocabulary is fp32, fp16, w8, int8"),
    ("table4 --runtimes tensorflow", ["table4", "--runtimes", "tensorflow", "--out", "{out}"], 2,
     "unknown target 'tensorflow'"),
    ("export tensorrt without TensorRT", ["export", "tensorrt", M, "--out", "{out}"], 2,
     "TensorRT is not installed"),
    # 10. ONNX models that keep their weights in a data file beside them
    ("eval of an ONNX whose data file is missing", ["eval", M, "--onnx", "{ext_missing}", "--limit", "1", "--data",
                                                    "{val}"], 1, "m.onnx keeps its weights in m.onnx.data, which is "
                                                                 "not beside it"),
    ("profile of an ONNX whose data file is missing", ["profile", "{ext_missing}", "--runs", "1", "--out",
                                                       "{out}/cell.json"], 1, "which is not beside it"),
    ("quantize of an ONNX whose data file is cut", ["quantize", M, "--onnx", "{ext_cut}", "--out", "{out}"], 1,
     "m.onnx.data is truncated: 4096 bytes"),
    ("bundle of an ONNX whose data file is cut", ["export", "bundle", "{ext_cut}", "--out", "{out}/b.tar.gz"], 1,
     "m.onnx.data is truncated"),
    ("optimize of an ONNX whose data file is missing", ["optimize", "{ext_missing}", "--out", "{out}/x.onnx"], 1,
     "which is not beside it"),
    ("export ort of an ONNX whose data file is cut", ["export", "ort", "{ext_cut}", "--out", "{out}"], 1,
     "m.onnx.data is truncated"),
    ("export openvino of an ONNX whose data file is missing", ["export", "openvino", "{ext_missing}", "--out",
                                                               "{out}"], 1, "which is not beside it"),
    # 11. quantization plans are checked before anything is built from them
    ("export litert --plan with a NaN scale", ["export", "litert", M, "--precision", "int8", "--plan", "{plan_nan}",
                                               "--out", "{out}"], 1,
     "nan.plan.json: layer features.0.0: a scale is not finite or not positive"),
    ("export executorch --plan of the wrong shapes", ["export", "executorch", M, "--precision", "int8", "--plan",
                                                      "{plan_shape}", "--out", "{out}"], 1,
     "layer features.0.0: weights int8 [16, 3, 3, 3], expected int8 with 32 output channels"),
    ("export litert --plan of another version", ["export", "litert", M, "--precision", "int8", "--plan",
                                                 "{plan_version}", "--out", "{out}"], 1,
     "is a plan of version 1; this t2t-edge reads t2tedge.quant-plan/2"),
    # 12. files we did not make, and names that name nothing
    ("table4 --merge of a file we did not make", ["table4", "--merge", "{foreign}", "--out", "{out}"], 1,
     "is not a Table 4 result or profile record"),
    ("table4 --models of an unknown model", ["table4", "--models", "resnet50", "--out", "{out}"], 2,
     "unknown model 'resnet50'"),
    ("an unknown pretrained tag", ["export", "onnx", "t2t_vit_7.in22k", "--out", "{out}"], 2,
     "unknown pretrained tag 't2t_vit_7.in22k'"),
    ("export litert --calib is a file", ["export", "litert", M, "--precision", "int8", "--calib", "{file}", "--out",
                                         "{out}"], 2, "is a file, not a folder of images"),
    ("table4 --weights official with the imagenette suite", ["table4", "--suite", "imagenette", "--weights",
                                                             "official", "--out", "{out}"], 2,
     "--weights official chooses the imagenet suite's weights; the imagenette suite trains its own"),
    ("table4 --labels missing", ["table4", "--labels", "{root}/missing.txt", "--out", "{out}"], 2,
     "--labels {root}/missing.txt: no such file"),
    ("table4 --labels with class folders", ["table4", "--labels", "{file}", "--data", "{val}", "--out", "{out}"], 2,
     "--labels labels a flat ImageNet val folder"),
    ("table4 --calib is a file", ["table4", "--calib", "{file}", "--out", "{out}"], 2,
     "--calib {file} is a file, not a folder of images"),
    ("table4 --merge with --weights", ["table4", "--merge", "{file}", "--weights", "official", "--out", "{out}"], 2,
     "--merge joins measured files and measures nothing; drop --weights"),
    ("export --out name too long", ["export", "onnx", M, "--out", "{out}/" + "a" * 300], 2,
     "longer than the file system allows"),
    ("profile --out name too long", ["profile", "{mnv2}", "--runs", "1", "--out", "{out}/" + "b" * 300 + ".json"], 2,
     "longer than the file system allows"),
]


@pytest.mark.parametrize("argv,code,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(argv, code, message, world, capsys, request):
    out = _out_with_good_artifacts(world["root"], request.node.callspec.id.replace(" ", "_").replace("/", "_"))
    before, inputs = _snapshot(out), _inputs(world["root"])
    argv = [a.format(out=out, **world) for a in argv]
    try:
        returned = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        returned = exc.code
    err = capsys.readouterr().err.split("\r")[-1].strip()  # after a progress bar's last redraw, if one was drawn
    assert returned == code, err
    assert err.startswith("t2tedge: error: ") and "\n" not in err and "Traceback" not in err, err
    assert message.format(out=out, **world) in err and "\x1b[" not in err, err
    assert _snapshot(out) == before  # nothing written, nothing half-written, the good artifacts untouched
    assert _inputs(world["root"]) == inputs  # and nothing beside the inputs


def test_table4_on_ray_without_the_cluster_extra(world, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where the extra is absent
    out = world["root"] / "ray-absent"
    assert main(["table4", "--models", M, "--runtimes", "onnxruntime", "--precisions", "fp32", "--limit", "1",
                 "--ray", "auto", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "t2tedge: error: --ray needs Ray, the cluster extra: pip install 't2t-edge[cluster]'"
    assert not out.exists()


def test_the_battery_covers_every_command():
    commands = {c[1][0] if c[1][0] != "export" else f"export {c[1][1]}" for c in CASES}
    assert {"quantize", "eval", "profile", "parity", "train", "table4", "info", "check-trt", "export onnx",
            "export coreml", "export tensorrt", "export ort", "export openvino", "export litert", "export executorch",
            "export bundle", "optimize"} <= commands
    assert len(CASES) >= 40


def test_calibration_takes_any_folder_of_photos(world, tmp_path, capsys):
    """No labels, nested folders, macOS ._ files beside the photos, more images asked for than there are."""
    photos = tmp_path / "my photos"
    (photos / "holiday" / "day 1").mkdir(parents=True)
    from t2tedge.data import discover

    sources = [sample.path for sample in discover(world["val"])[:5]]
    for i, source in enumerate(sources):
        folder = photos / "holiday" / "day 1" if i % 2 else photos
        (folder / f"IMG_{i:04d}.jpg").write_bytes(source.read_bytes())
        (folder / f"._IMG_{i:04d}.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (photos / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    out = tmp_path / "out"
    assert main(["quantize", M, "--onnx", str(world["mnv2"]), "--calib", str(photos), "--num-calib", "5000",
                 "--method", "minmax", "--weight-rounding", "nearest", "--bias-correction", "off",
                 "--out", str(out)]) == 0
    assert "calibrating on all 5 images" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["mobilenet_v2_100_int8.json", "mobilenet_v2_100_int8.onnx",
                                                     "mobilenet_v2_100_int8.plan.json", "mobilenet_v2_100_int8.plan.npz"]
    report = json.loads((out / "mobilenet_v2_100_int8.json").read_text())
    assert report["calibration"]["images"] == 5 and report["layer_sqnr"]["scored_on"].startswith("calibration")
    evaluation = tmp_path / "val"
    evaluation.mkdir()
    for source in sources[:2]:
        (evaluation / source.name).write_bytes(source.read_bytes())
        (evaluation / f"._{source.name}").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    assert main(["eval", M, "--onnx", str(world["mnv2"]), "--data", str(evaluation)]) == 0
    assert "(2 images from" in capsys.readouterr().out


def test_artifact_set_is_published_together_or_not_at_all(tmp_path, monkeypatch):
    """A full disk (here: the second rename fails) leaves the previous model, cache and report as they were."""
    from t2tedge.fileio import publish_together

    staging, out = tmp_path / "staging", tmp_path / "out"
    staging.mkdir()
    out.mkdir()
    names = ("m.onnx", "m.trt.cache", "m.json")
    for name in names:
        (staging / name).write_text(f"new {name}")
        (out / name).write_text(f"old {name}")
    real_replace, calls = os.replace, []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 4:  # backup 1, move 1, backup 2, then the second move fails
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        publish_together({staging / n: out / n for n in names})
    monkeypatch.setattr(os, "replace", real_replace)
    assert {n: (out / n).read_text() for n in names} == {n: f"old {n}" for n in names}
    publish_together({staging / n: out / n for n in names})
    assert {n: (out / n).read_text() for n in names} == {n: f"new {n}" for n in names}


def test_unforeseen_errors_are_one_line_unless_debug(world, monkeypatch, capsys):
    import t2tedge.cli.model_commands as cli

    failure = OSError(28, "No space left on device", "/data/out/model.onnx")

    def broken(args):
        raise failure

    monkeypatch.setattr(cli, "cmd_list", broken)
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left on the device being written (/data/out/model.onnx)" in err
    for code, words in ((13, "permission denied"), (1, "operation not permitted"), (30, "file system is read-only")):
        failure = OSError(code, "", "/data/out/model.onnx")
        assert main(["list"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{words}" in err and "(/data/out/model.onnx)" in err
    failure = OSError(5, "Input/output error", "/data/out/model.onnx")
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Input/output error (/data/out/model.onnx)" in err and "--debug" in err
    with pytest.raises(OSError):
        main(["--debug", "list"])


@pytest.mark.parametrize("interruption, code, word", [("Terminated", 143, "terminated"),
                                                       ("KeyboardInterrupt", 130, "interrupted")])
def test_an_interruption_inside_a_c_extensions_import_is_still_one(monkeypatch, capsys, interruption, code, word):
    """SIGTERM or Ctrl-C while a C extension initialises comes back as its ImportError("initialization failed")."""
    import t2tedge.cli.app as app
    import t2tedge.cli.model_commands as cli

    def importing(args):
        try:
            raise app.Terminated() if interruption == "Terminated" else KeyboardInterrupt()
        except BaseException as exc:
            raise ImportError("initialization failed") from exc

    monkeypatch.setattr(cli, "cmd_list", importing)
    assert main(["list"]) == code
    assert capsys.readouterr().err.strip() == f"t2tedge: {word}"


def test_a_reader_that_stops_early_gets_no_error():
    """`t2tedge list | head -1`: the pipe closes under the listing, which ends quietly as piped Unix tools do."""
    process = subprocess.Popen([sys.executable, "-m", "t2tedge.cli", "list"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    first = process.stdout.readline()
    process.stdout.close()  # what `head -1` does after its line; the listing is still being written
    stderr = process.communicate()[1].decode()
    assert first.startswith(b"model") and process.returncode in (0, 141), (process.returncode, stderr)
    assert stderr == ""


def test_sigterm_during_quantize_cleans_up(world, tmp_path, sample_dir):
    temp, out = tmp_path / "tmp", tmp_path / "out"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "t2tedge.cli", "quantize", M, "--onnx", str(world["mnv2"]),
                                "--calib", str(sample_dir), "--num-calib", "64", "--out", str(out)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    # Wait until the work has made its staging folder in --out (the calibrators' files are in there too).
    while time.monotonic() < deadline and not (out.is_dir() and any(out.rglob("*.onnx"))):
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err.decode()
    assert "t2tedge: terminated" in err.decode() and b"Traceback" not in err
    # No folder is left behind (a finished run leaves only a library's small session-ID file in TMPDIR too).
    assert [p for p in temp.iterdir() if p.is_dir()] == [] and list(out.iterdir()) == []


def test_quantize_writes_nothing_beside_its_source(world, tmp_path, sample_dir):
    """ORT's quantizer writes `<model>-inferred.onnx` beside the model it gets: it gets a copy in our staging folder,
    so the user's folder (read-only, or shared by two runs) holds exactly what it held."""
    import shutil

    source = tmp_path / "mine" / "mobilenet_v2_100.onnx"
    source.parent.mkdir()
    shutil.copy(world["mnv2"], source)
    before = _snapshot(source.parent)
    assert main(["quantize", M, "--onnx", str(source), "--calib", str(sample_dir), "--num-calib", "2",
                 "--method", "minmax", "--weight-rounding", "nearest", "--bias-correction", "off",
                 "--out", str(tmp_path / "out")]) == 0
    assert _snapshot(source.parent) == before


def test_the_next_run_removes_what_a_killed_run_left(world, tmp_path, sample_dir):
    """kill -9 leaves a quantize run's staging folder in --out (its calibration files are in there, not in TMPDIR);
    the next command on that --out removes it, and never a staging folder whose process is alive."""
    temp, out = tmp_path / "tmp", tmp_path / "out"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    process = subprocess.Popen([sys.executable, "-m", "t2tedge.cli", "quantize", M, "--onnx", str(world["mnv2"]),
                                "--calib", str(sample_dir), "--num-calib", "64", "--out", str(out)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out.is_dir() and any(out.rglob("*.onnx"))):
        assert process.poll() is None
        time.sleep(0.2)
    process.kill()
    process.wait(timeout=60)
    left = [p.name for p in out.iterdir()]
    assert left and all(name.startswith(".t2tedge-staging-") for name in left)
    assert not [p for p in temp.iterdir() if p.is_dir()]  # nothing of the calibration went to TMPDIR
    alive = out / f".t2tedge-staging-{os.getppid()}-export.abc"  # a live process's: kept
    alive.mkdir()
    assert main(["profile", str(world["mnv2"]), "--runs", "1", "--warmup", "0", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([alive.name, "mobilenet_v2_100.onnx_onnxruntime.json"])


def test_an_error_under_a_progress_bar_starts_its_own_line(monkeypatch, capsys):
    import t2tedge.cli.model_commands as cli
    from tqdm import tqdm

    from t2tedge.errors import DataError

    def failing(args):
        bar = tqdm(total=10, desc="eval", leave=False)
        bar.update(3)
        raise DataError("cannot read image x.jpg: truncated")

    monkeypatch.setattr(cli, "cmd_list", failing)
    assert main(["list"]) == 1
    last = capsys.readouterr().err.split("\r")[-1]
    assert last.lstrip("\x1b[A ").startswith("t2tedge: error: cannot read image x.jpg")


def test_an_external_data_model_goes_through_export_quantize_profile_and_a_bundle(world, tmp_path, sample_dir,
                                                                                   capsys):
    """`m.onnx` + `m.onnx.data`: converted, quantized and profiled as it is, and a bundle carries both files, lists
    both in its manifest, and profiles the model on the "device" (no torch there)."""
    import shutil
    import tarfile

    source = world["ext"]
    assert main(["export", "openvino", str(source), "--out", str(tmp_path / "ir")]) == 0
    assert main(["quantize", M, "--onnx", str(source), "--num-calib", "4", "--calib", str(sample_dir), "--out",
                 str(tmp_path / "int8")]) == 0
    assert main(["profile", str(source), "--runs", "2", "--warmup", "1", "--out", str(tmp_path / "cell.json")]) == 0
    bundle = tmp_path / "device.tar.gz"
    assert main(["export", "bundle", str(source), "--out", str(bundle)]) == 0
    with tarfile.open(bundle) as tar:
        assert {"artifacts/m.onnx", "artifacts/m.onnx.data"} <= set(tar.getnames())
        tar.extractall(tmp_path / "device", filter="data")
    manifest = json.loads((tmp_path / "device" / "manifest.json").read_text())
    assert [f["path"] for f in manifest["artifacts"][0]["files"]] == ["artifacts/m.onnx", "artifacts/m.onnx.data"]
    (tmp_path / "device" / "torch").mkdir()
    (tmp_path / "device" / "torch" / "__init__.py").write_text("raise ImportError('no torch on this device')\n")
    env = {**os.environ, "PYTHON": sys.executable, "RUNS": "2"}
    done = subprocess.run(["sh", "profile.sh"], cwd=tmp_path / "device", env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "device" / "results").glob("m.onnx*.json")), done.stdout
    # The device's check names a data file that did not arrive whole.
    shutil.copy(tmp_path / "device" / "artifacts" / "m.onnx", tmp_path / "device" / "artifacts" / "m.onnx.data")
    done = subprocess.run(["sh", "profile.sh"], cwd=tmp_path / "device", env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1 and "artifacts/m.onnx.data missing or changed" in done.stderr


def test_a_file_we_did_not_make_runs_as_the_named_model_and_says_so(world, capsys):
    """The one rule for files without our metadata: a command that names a model runs the file as that model and
    says so in one line; `profile`, which names none, asks for --model."""
    assert main(["eval", M, "--onnx", str(world["bare"]), "--limit", "1", "--data", str(world["val"])]) == 0
    note = f"note: bare.onnx carries no t2tedge metadata; it is run as {M}, with {M}'s preprocessing and class order"
    assert note in capsys.readouterr().err
    assert main(["parity", M, "--onnx", str(world["bare"]), "--limit", "1", "--data", str(world["val"])]) == 0
    assert note in capsys.readouterr().err
    assert main(["profile", str(world["bare"]), "--runs", "1", "--out", str(world["root"] / "outs" / "p.json")]) == 1
    assert "--model" in capsys.readouterr().err


def test_a_damaged_table4_cache_is_rebuilt_with_a_warning(world, tmp_path, capsys):
    argv = ["table4", "--models", M, "--runtimes", "onnxruntime", "--precisions", "fp32", "--limit", "2", "--runs",
            "2", "--data", str(world["val"]), "--out", str(tmp_path)]
    assert main(argv) == 0
    (built,) = tmp_path.rglob("built.json")
    (cell,) = (tmp_path / "cache").glob("*.json")
    built.write_text('{"artifact": "mobilenet')  # cut short, as a full disk or a killed run leaves it
    cell.write_text("{")
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"warning: cache entry {built} is unreadable" in err and "building the file again" in err
    assert "measuring the cell again" in err
    table = json.loads((tmp_path / "table4.json").read_text())
    assert [c["status"] for c in table["cells"]] == ["measured"] and json.loads(built.read_text())["artifact"]


def test_a_merge_names_the_toolkit_versions_of_its_cells(tmp_path, capsys):
    from t2tedge import __version__
    from t2tedge.results import DataInfo, LatencyStats, MachineInfo, Table4Cell, Table4Result

    machine = MachineInfo(cpu="x", cores=2, system="Linux", python="3.11", hostname_hash="abc")
    latency = LatencyStats(min_ms=1.0, p50_ms=1.5, p90_ms=2.0, p99_ms=2.5, mean_ms=1.6, runs=5, warmup=1)
    old = Table4Result(version="0.0.9", machine=machine, data=DataInfo(folder="val", images=2), cells=[Table4Cell(
        model=M, runtime="onnxruntime", precision="fp32", family="MobileNetV2", weights="trained", status="measured",
        top1=0.5, images=2, latency_b1=latency, version="0.0.9")])
    (tmp_path / "old.json").write_text(old.to_json())
    assert main(["table4", "--merge", str(tmp_path / "old.json"), "--out", str(tmp_path / "merged")]) == 0
    line = f"Merged from toolkit versions 0.0.9 (each cell's is in table4.json); this toolkit is {__version__}"
    assert line in capsys.readouterr().out and line in (tmp_path / "merged" / "table4.md").read_text()


@pytest.fixture
def small_full_disk(tmp_path):
    """A 3 MB file system of its own (tmpfs), so a LiteRT file cannot fit: needs root, as CI and sessions run."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_litert_on_a_full_disk_says_so_and_leaves_nothing(small_full_disk, capsys):
    """LLVM (inside the converter) ends the process without a word when its output fails; the converter writes to
    a scratch folder and our copy meets the full disk instead."""
    out = small_full_disk / "out"
    assert main(["export", "litert", M, "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("t2tedge: error: no space left on the device being written") and str(out) in err
    assert list(out.iterdir()) == []
