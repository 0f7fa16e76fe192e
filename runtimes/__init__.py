"""Runtime adapters behind one interface: load an artifact, run a batch, describe."""

from t2tedge.runtimes.base import Runtime, RuntimeDescription, available_runtimes, get_runtime

__all__ = ["Runtime", "RuntimeDescription", "available_runtimes", "get_runtime"]
