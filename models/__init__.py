"""Model zoo: lite T2T-ViT (official checkpoint layout) and MobileNet baselines."""

from t2tedge.models.checkpoint import check_state_dict, load_checkpoint, read_state_dict
from t2tedge.models.registry import (
    ModelSpec,
    PreprocessConfig,
    TrainedSubject,
    create_model,
    default_checkpoint,
    get_spec,
    list_models,
    trained_subject,
)
from t2tedge.models.t2t_vit import set_export_form

__all__ = [
    "ModelSpec", "PreprocessConfig", "TrainedSubject", "check_state_dict", "create_model", "default_checkpoint", "get_spec", "list_models",
    "load_checkpoint", "read_state_dict", "set_export_form",
    "trained_subject",
]
