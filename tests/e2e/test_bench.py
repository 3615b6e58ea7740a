"""``tokenmill bench`` against the real server: it runs and writes its three reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import API_KEY, Server


def test_bench_writes_table_json_and_plot(server: Server, tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable, "-m", "tokenmill", "bench", "--base-url", server.base_url,
            "--api-key", API_KEY, "--workload", "chat,autocomplete", "--concurrency", "1,2",
            "--requests", "2", "--max-tokens", "4", "--out", str(tmp_path),
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "results.json").read_text())
    rows = data["results"]["server"]["chat"]
    assert [row["concurrency"] for row in rows] == [1, 2]
    assert all(row["errors"] == 0 and row["output_tokens_per_s"] > 0 for row in rows)
    assert "### autocomplete — server" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").stat().st_size > 1000
