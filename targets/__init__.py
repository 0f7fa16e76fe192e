"""The target registry (t2tedge.targets.registry) and one module per built-in target, each registering itself."""

from t2tedge.targets.registry import (APPLIES_PLAN, CALIBRATED, CALIBRATES, DEFAULT_NUM_CALIB, PRECISION_MEANINGS,
                                      PRECISIONS, READS_QDQ, BuildRequest, Option, Target, all_load_options,
                                      build_artifact, get_target, int8_origin, int8_prerequisite, int8_request, known_suffixes,
                                      plan_target, register, target_for_file, target_for_runtime, targets,
                                      unregister)

__all__ = ["APPLIES_PLAN", "CALIBRATED", "CALIBRATES", "DEFAULT_NUM_CALIB", "PRECISION_MEANINGS", "PRECISIONS",
           "READS_QDQ", "BuildRequest", "Option", "Target", "all_load_options", "build_artifact", "get_target",
           "int8_origin", "int8_prerequisite", "int8_request", "known_suffixes", "plan_target", "register", "target_for_file",
           "target_for_runtime", "targets", "unregister"]
