"""The quantize layer's records that have a JSON Schema file in docs/schemas (scripts/write_schemas.py writes them
beside t2tedge.results.RESULT_TYPES; tests/test_results.py keeps both equal to the classes)."""

from t2tedge.quantize.config import QuantConfig
from t2tedge.quantize.quantization_plan import QuantPlan
from t2tedge.quantize.records import QuantizationSummary, QuantizeReport

QUANTIZE_RECORDS = (QuantizeReport, QuantizationSummary, QuantConfig, QuantPlan)
