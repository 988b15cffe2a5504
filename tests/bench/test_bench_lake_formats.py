"""bench/bench_lake_formats.py runs, and its figures are the ones the files it wrote give."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_lake_formats.py"


def test_bench_lake_formats_small(tmp_path: Path) -> None:
    pytest.importorskip("duckdb")
    spec = importlib.util.spec_from_file_location("bench_lake_formats", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_lake_formats"] = module
    spec.loader.exec_module(module)
    out = tmp_path / "formats.json"
    assert module.main(["--events", "4000", "--machines", "60", "--repeats", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    sizes = report["sizes"]
    assert sizes["events"]["rows"] > 3000 and sizes["sessions"]["rows"] > 60
    for size in sizes.values():
        # The column chunks add up to less than the files (which hold footers and headers too).
        assert 0 < sum(size["gzip_column_bytes"].values()) < size["gzip_parquet_bytes"]
    for name, question in report["questions"].items():
        assert question["parquet_scan_bytes"] < question["parquet_view_scan_bytes"], name
        assert question["table_s"] > 0 and question["view_s"] > 0, name
