"""Measurement on top of the runtimes: evaluation, runtime parity, (later) the Table 4 grid."""
