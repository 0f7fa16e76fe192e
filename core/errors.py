"""Errors the command line reports as one line and a non-zero exit code."""


class T2TEdgeError(Exception):
    """A user-facing failure: bad input, missing data or a missing runtime."""

    exit_code = 1


class UsageError(T2TEdgeError):
    """Options that do not go together; argparse's own usage errors exit 2 as well."""

    exit_code = 2


class CheckpointError(T2TEdgeError):
    """A checkpoint that cannot be read or does not fit the model."""


class DataError(T2TEdgeError):
    """An image or dataset that cannot be read."""


class RuntimeUnavailable(T2TEdgeError):
    """An optional runtime (Core ML, TensorRT, ...) is not installed or cannot run here."""

    exit_code = 2
