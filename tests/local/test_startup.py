"""What a run costs before it reads: pyarrow's look for pandas is answered "not installed"."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

# A run in a fresh interpreter (what `sessionflow run` is), then pandas used through pyarrow as a
# caller might: the run must not have imported pandas, and pandas must still work afterwards.
PROGRAM = """
import json, sys
from pathlib import Path
from sessionflow.config import Config
from sessionflow.runtimes.local.runner import run
report = run([sys.argv[1]], Path(sys.argv[2]), Config(), workers=int(sys.argv[3]))
imported = "pandas" in sys.modules
import pyarrow as pa
import pandas
frame = pa.table({"n": [1, 2]}).to_pandas()
back = pa.Table.from_pandas(frame)
print(json.dumps({"imported": imported, "events": report.tally.events, "frame": type(frame).__name__,
                  "back": back.column("n").to_pylist(), "series": pa.array(pandas.Series([3])).to_pylist()}))
"""


@pytest.mark.skipif(find_spec("pandas") is None, reason="pandas is not installed: nothing to leave out")
@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_imports_no_pandas_and_leaves_it_usable(tmp_path: Path, workers: int) -> None:
    feed = tmp_path / "feed.jsonl"
    lines = [
        {"event_id": f"e{n}", "machine_id": f"m{n % 3}", "event_type": "view", "timestamp": 1_700_000_000_000 + n}
        for n in range(20)
    ]
    feed.write_text("".join(json.dumps(line) + "\n" for line in lines))
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(feed), str(tmp_path / "lake"), str(workers)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout)
    assert result == {"imported": False, "events": 20, "frame": "DataFrame", "back": [1, 2], "series": [3]}
