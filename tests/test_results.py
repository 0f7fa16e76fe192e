"""Typed results (t2tedge.results): the JSON round trip, errors that name the field, schema files that match the
classes, and one spelling of every metadata key."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import jsonschema
import pytest

from conftest import assert_matches_schema
from t2tedge import metadata_keys
from t2tedge.quantize.schemas import QUANTIZE_RECORDS
from t2tedge.results import (RESULT_TYPES, DataInfo, LatencyStats, MachineInfo, ProfileRecord, ResultFormatError,
                             Table4Cell, Table4Result, json_schema, read_measurements, schema_file_name)

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "docs" / "schemas"
MACHINE = MachineInfo(cpu="AMD EPYC", cores=2, system="Linux 6.1", python="3.11.7", hostname_hash="a1b2c3d4e5f6")
LATENCY = LatencyStats(min_ms=1.0, p50_ms=1.5, p90_ms=2.0, p99_ms=2.5, mean_ms=1.6, runs=5, warmup=1)


def measured_cell(**changes) -> Table4Cell:
    values = dict(model="mobilenet_v2_100", runtime="onnxruntime", precision="int8", family="MobileNet",
                  weights="trained", status="measured", top1=0.75, top5=0.9, images=4, predictions=[1, 2, 3, 4],
                  latency_b1=LATENCY, throughput_b8_ips=800.0, runtime_info={"threads": 2}, artifact_bytes=3_600_000)
    return Table4Cell(**{**values, **changes})


@pytest.mark.parametrize("cls", RESULT_TYPES + QUANTIZE_RECORDS, ids=lambda c: c.__name__)
def test_the_schema_files_are_the_classes(cls):
    """A field changed in t2tedge.results without `python scripts/write_schemas.py` fails here."""
    checked_in = json.loads((SCHEMAS / schema_file_name(cls)).read_text())
    assert checked_in == json_schema(cls)
    jsonschema.Draft202012Validator.check_schema(checked_in)


def test_a_profile_record_round_trips_and_merges_as_a_table(tmp_path):
    record = ProfileRecord(version="0.1.0", machine=MACHINE, data=DataInfo(folder=None, images=0), cell=measured_cell())
    path = tmp_path / "record.json"
    path.write_text(record.to_json())
    data = json.loads(path.read_text())
    assert data["schema"] == "t2tedge.profile/1" and "reason" not in data["cell"]  # unset fields are not written
    assert_matches_schema(data, ProfileRecord)
    assert ProfileRecord.read(path) == record
    table = read_measurements(path)
    assert isinstance(table, Table4Result) and table.cells == [record.cell] and table.machine == MACHINE


@pytest.mark.parametrize("change, message", [
    (lambda d: d["cell"].update(top1="75%"), "record.json.cell.top1: expected a number, got '75%'"),
    (lambda d: d["cell"]["latency_b1"].pop("p50_ms"), "record.json.cell.latency_b1: missing field 'p50_ms'"),
    (lambda d: d["cell"].update(top_1=0.7), "record.json.cell: unknown field(s) top_1"),
    (lambda d: d["cell"].update(predictions=[1, True]), "record.json.cell.predictions[1]: expected an integer"),
    (lambda d: d.update(schema="t2tedge.profile/2"), "schema 't2tedge.profile/2', expected 't2tedge.profile/1'"),
])
def test_a_wrong_field_is_named(tmp_path, change, message):
    data = ProfileRecord(version="0.1.0", machine=MACHINE, data=DataInfo(folder=None, images=0),
                         cell=measured_cell()).to_dict()
    change(data)
    (tmp_path / "record.json").write_text(json.dumps(data))
    with pytest.raises(ResultFormatError) as caught:
        ProfileRecord.read(tmp_path / "record.json")
    assert message in str(caught.value)
    with pytest.raises(jsonschema.ValidationError):  # the schema file refuses it too
        assert_matches_schema(data, ProfileRecord)


def test_a_skipped_cell_needs_no_measurements():
    cell = Table4Cell(model="t2t_vit_7", runtime="coreml", precision="fp32", family="T2T-ViT", weights="untrained",
                      status="skipped", reason="Core ML predicts only on macOS")
    table = Table4Result(version="0.1.0", machine=MACHINE, data=None, cells=[cell, measured_cell()])
    assert_matches_schema(table.to_dict(), Table4Result)
    assert Table4Result.from_dict(table.to_dict()) == table and not cell.measured


def test_every_metadata_key_is_spelt_in_one_module():
    """The package writes and reads `t2tedge.*` metadata keys through t2tedge.metadata_keys only."""
    modules = {"t2tedge", "t2tedge.cli", "t2tedge.models", "t2tedge.export", "t2tedge.quantize", "t2tedge.runtimes",
               "t2tedge.targets", "t2tedge.harness"}
    spelt = []
    for folder in ("core", "models", "export", "quantize", "runtimes", "targets", "harness"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "metadata_keys.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                        and re.fullmatch(r"t2tedge\.[a-z_0-9]+", node.value) and node.value not in modules:
                    spelt.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value}")
    assert spelt == []
    assert len(set(metadata_keys.ALL)) == len(metadata_keys.ALL) and metadata_keys.MODEL in metadata_keys.ALL
