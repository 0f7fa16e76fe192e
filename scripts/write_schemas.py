"""Write docs/schemas/*.schema.json from the record classes (t2tedge.results, t2tedge.quantize.schemas;
tests/test_results.py keeps them equal). Run after changing a record class: python scripts/write_schemas.py"""

from __future__ import annotations

import json
from pathlib import Path

from t2tedge.quantize.schemas import QUANTIZE_RECORDS
from t2tedge.results import RESULT_TYPES, json_schema, schema_file_name

OUT = Path(__file__).resolve().parent.parent / "docs" / "schemas"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for cls in RESULT_TYPES + QUANTIZE_RECORDS:
        path = OUT / schema_file_name(cls)
        path.write_text(json.dumps(json_schema(cls), indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
