"""The target registry: one descriptor per deployment target (t2tedge.targets.registry)."""

from t2tedge.targets.registry import (CALIBRATED, DEFAULT_NUM_CALIB, PRECISION_MEANINGS, PRECISIONS, BuildRequest,
                                      Option, Target, all_load_options, get_target, known_suffixes, register, targets,
                                      plan_target, target_for_file, target_for_runtime, unregister)

__all__ = ["CALIBRATED", "DEFAULT_NUM_CALIB", "PRECISION_MEANINGS", "PRECISIONS", "BuildRequest", "Option", "Target",
           "all_load_options", "get_target", "known_suffixes", "register", "targets", "target_for_file",
           "plan_target", "target_for_runtime", "unregister"]
