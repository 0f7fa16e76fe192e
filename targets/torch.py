"""The torch reference: PyTorch eager in fp32, what every other runtime is compared with. Its file is the model's
state dict with a sidecar naming model and classes; not a file users ship (no export command, no bundle)."""

from __future__ import annotations

from pathlib import Path

from t2tedge import metadata_keys as keys
from t2tedge.errors import DataError
from t2tedge.fileio import staging_dir
from t2tedge.sidecar import publish_with_sidecar, read_sidecar, sidecar_files, sidecar_metadata
from t2tedge.targets.registry import BuildRequest, Target, register

CPU_FP16 = "fp16 arithmetic is measured on a GPU (TensorRT) or an Apple device (Core ML)"


def build(request: BuildRequest) -> Path:
    """The fp32 reference as a file: the model's state dict with a sidecar naming model and classes."""
    import torch

    from t2tedge.export.common import artifact_metadata
    from t2tedge.fileio import sha256_file
    from t2tedge.models import create_model
    from t2tedge.models.registry import RANDOM_INIT_SEED

    model = create_model(request.model, checkpoint=request.checkpoint, **request.overrides)
    weights = (f"sha256:{sha256_file(request.checkpoint)}" if request.checkpoint
               else f"untrained (random init, seed {RANDOM_INIT_SEED})")
    destination = request.out_dir / f"{request.model}.pth"
    with staging_dir(request.out_dir, "torch") as tmp:
        staged = tmp / destination.name
        torch.save({"state_dict": model.state_dict()}, staged)
        metadata = artifact_metadata(request.model, weights, "nchw", "fp32", request.num_classes,
                                     "NCHW float32, preprocessed as t2tedge.preprocess says")
        return publish_with_sidecar(staged, destination, metadata)


def open_reference(path: Path):
    from t2tedge.models import create_model

    meta = read_sidecar(path)
    if keys.MODEL not in meta:
        raise DataError(f"{path.name} has no sidecar {path.name}.json naming its model; build it with the torch "
                        f"target (or load it with create_model)")
    classes = len(meta.get(keys.CLASS_ORDER) or ()) or 1000
    return create_model(meta[keys.MODEL], checkpoint=path, **({"num_classes": classes} if classes != 1000 else {}))


register(Target(
    name="torch", runtime="torch", suffixes=(".pth",), reference=True,
    summary="PyTorch eager, the fp32 reference every other runtime is compared with",
    precisions={"fp32": None, "fp16": CPU_FP16, "w8": "INT8 is measured on the targets users ship",
                "int8": "INT8 is measured on the targets users ship"},
    build=build, read_metadata=sidecar_metadata, companions=sidecar_files, open_artifact=open_reference,
))
