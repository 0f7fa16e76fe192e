"""The `t2tedge` command line. Each command is a parser and a call into the library (`t2tedge.quantize.quantize_model`,
`t2tedge.harness.table4`, ...); the modules here only parse, check arguments and print."""

from t2tedge.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
