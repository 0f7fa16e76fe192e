"""TensorRT 10 or 11 on an NVIDIA GPU: runs a serialized engine, or builds one from an ONNX file at load time.

Device buffers come from torch's CUDA allocator (a CUDA build of torch on the GPU machine), in the dtypes the engine
declares for its input and output (a strongly typed engine may take or give fp16); timing uses CUDA events on the
execution stream, as trtexec does.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from t2tedge.errors import T2TEdgeError
from t2tedge.runtimes.base import OpTrace, Runtime, RuntimeDescription, TracedOp, timed_runs


def io_tensor_names(engine: Any) -> tuple[str, str]:
    """(input, output) of a one-input, one-output engine, found by their I/O mode (not by index order)."""
    import tensorrt as trt

    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    if len(inputs) != 1 or len(outputs) != 1:
        raise T2TEdgeError(f"the engine has inputs {inputs} and outputs {outputs}; one image in, logits out expected")
    return inputs[0], outputs[0]


def torch_dtype(trt_dtype: Any):
    """The torch dtype of a TensorRT `DataType` (an engine's I/O tensor)."""
    import torch

    dtypes = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
              "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8}
    name = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    if name not in dtypes:
        raise T2TEdgeError(f"the engine's I/O dtype {name} has no torch buffer type here")
    return dtypes[name]


class TensorRT(Runtime):
    name = "tensorrt"
    consumes = "onnx"  # an .onnx (built here with `engine_precision=`) or a prebuilt .engine / .plan
    op_profiler = "TensorRT IProfiler on the execution context (per-layer times, execute_v2)"
    libraries = ("tensorrt", "torch")

    def __init__(self, engine, path: str, precision: str) -> None:
        import torch

        self.engine = engine
        self.path = path
        self.precision = precision
        self.context = engine.create_execution_context()
        self.input_name, self.output_name = io_tensor_names(engine)
        self.input_dtype = torch_dtype(engine.get_tensor_dtype(self.input_name))
        self.output_dtype = torch_dtype(engine.get_tensor_dtype(self.output_name))
        self.stream = torch.cuda.Stream()
        self.last_gpu_ms: float | None = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            from t2tedge.export.tensorrt_engine import INSTALL_HINT

            return INSTALL_HINT
        try:
            import torch

            if not torch.cuda.is_available():
                return "TensorRT needs a CUDA GPU and a CUDA build of torch for device buffers; none found"
        except ImportError:
            return "torch is not installed"
        return None

    @classmethod
    def load(cls, artifact: str | os.PathLike, *, threads: int | None = None, engine_precision: str | None = None,
             **options: Any) -> "TensorRT":
        import tensorrt as trt

        from t2tedge.export.tensorrt_engine import EngineOptions, build_engine, engine_source

        path = Path(artifact)
        if path.suffix == ".onnx":
            with tempfile.TemporaryDirectory() as tmp:
                source, precision = engine_source(path, engine_precision, Path(tmp))
                built = build_engine(source, Path(tmp) / "model.engine", EngineOptions(precision=precision, **options))
                data = built.engine_path.read_bytes()
                engine_precision = built.precision
        elif path.is_file():
            data = path.read_bytes()
        else:
            raise T2TEdgeError(f"TensorRT engine or ONNX file not found: {path}")
        logger = trt.Logger(trt.Logger.WARNING)
        engine = trt.Runtime(logger).deserialize_cuda_engine(data)
        if engine is None:
            raise T2TEdgeError(f"TensorRT cannot deserialize {path} (built by another TensorRT version or GPU?)")
        if engine_precision is None:  # a prebuilt engine: `export tensorrt` names it MODEL_PRECISION.engine
            engine_precision = next((p for p in ("fp32", "fp16", "int8") if path.stem.endswith(f"_{p}")), "unknown")
        return cls(engine, str(path), engine_precision)

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        images = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).cuda().to(self.input_dtype)
        self.context.set_input_shape(self.input_name, tuple(images.shape))
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        output = torch.empty(out_shape, dtype=self.output_dtype, device="cuda")
        self.context.set_tensor_address(self.input_name, images.data_ptr())
        self.context.set_tensor_address(self.output_name, output.data_ptr())
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(self.stream):
            start.record(self.stream)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise T2TEdgeError("TensorRT execution failed")
            end.record(self.stream)
        self.stream.synchronize()
        self.last_gpu_ms = start.elapsed_time(end)
        return output.float().cpu().numpy()

    @classmethod
    def trace_ops(cls, artifact: Any, batch: np.ndarray, *, runs: int, warmup: int, threads: int | None = None,
                  **options: Any) -> OpTrace:
        """Per-layer times from an `IProfiler` on the context (TensorRT reports them after each synchronous run);
        a fused layer is named by the ONNX nodes in it (`/blocks.3/attn/qkv/MatMul + /blocks.3/attn/Add`), the
        first of which gives its module path. Precision: unknown (the engine inspector would say; not read)."""
        import tensorrt as trt

        from t2tedge.op_blocks import module_path

        instance = cls.load(artifact, threads=threads, **options)
        totals: dict[str, float] = {}

        class LayerTimes(trt.IProfiler):
            recording = False

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                if self.recording:
                    totals[layer_name] = totals.get(layer_name, 0.0) + ms

        profiler = LayerTimes()
        instance.context.profiler = profiler
        for _ in range(warmup):
            instance.run(batch)
        profiler.recording = True
        wall = timed_runs(lambda: instance.run(batch), runs, 0)
        ops = [TracedOp(name, "layer", "unknown", ms / runs, module_path(name.split(" + ")[0]))
               for name, ms in totals.items()]
        return OpTrace(profiler=cls.op_profiler, ops=ops, wall_ms=1e3 * float(np.mean(wall)), runs=runs,
                       outside_ops="host-device copies of input and logits, stream synchronisation")

    def describe(self) -> RuntimeDescription:
        import tensorrt as trt
        import torch

        return RuntimeDescription(
            runtime=self.name, version=trt.__version__, precision=self.precision,
            device=torch.cuda.get_device_name(), threads=None,
            details={"engine": self.path, "last_gpu_ms": self.last_gpu_ms})
