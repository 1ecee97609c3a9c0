"""benchmarks/tiled.py runs end to end on a small image: whole and tiled rows, the table and the plot."""

import importlib.util
import json

from _util import ROOT


def test_the_tiled_benchmark_writes_rows_a_table_and_a_plot(tmp_path):
    spec = importlib.util.spec_from_file_location("tiled_benchmark", ROOT / "benchmarks" / "tiled.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--sizes", "40", "--tiles", "32,64", "--out", str(tmp_path / "tiled")])
    rows = [json.loads(line) for line in (tmp_path / "tiled.jsonl").read_text().splitlines()]
    assert [(r["size"], r["tile"]) for r in rows] == [(40, 0), (40, 32)]  # a tile of 64 >= 40 is the whole image
    assert rows[0]["labels"] == rows[1]["labels"] and sum(rows[0]["labels"]) == 40 * 40
    assert all(r["peak"] > 0 and r["rss"] > r["peak"] and r["seconds"] > 0 for r in rows)
    table = (tmp_path / "tiled.md").read_text()
    assert "| 40^2 | whole |" in table and "| 40^2 | 32 |" in table
    assert (tmp_path / "tiled.png").stat().st_size > 10_000
