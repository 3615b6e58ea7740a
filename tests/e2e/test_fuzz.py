"""Property-based fuzzing of POST /v1/chat/completions and /v1/completions with schemathesis.

Two runs on one real server: cases generated from OpenAI's published OpenAPI description
(vendored, trimmed: tests/e2e/fuzz/README.md) and from our own /openapi.json. Each run has a
fixed time budget (``TOKENMILL_FUZZ_SECONDS``, 60 by default: the count of cases varies with
the machine). Checks: no 5xx, no request over the timeout (a hang), every 4xx and 5xx in
OpenAI's error shape, streams that end cleanly (tests/e2e/fuzz/hooks.py), and afterwards the
server still alive and answering a normal request.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import API_KEY, MODEL, Server, start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
FUZZ = Path(__file__).resolve().parent / "fuzz"
SECONDS = int(os.environ.get("TOKENMILL_FUZZ_SECONDS", "60"))
CHECKS = "not_a_server_error,openai_error_shape,stream_ends_cleanly,Tally"
# Fewer would mean the run was cut short or most cases never got an answer.
MIN_CASES = 200

pytestmark = pytest.mark.timeout(2 * SECONDS + 600)


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[Server]:
    s = start_server("--api-key", API_KEY, "--max-num-seqs", "4")
    yield s
    stop_server(s)


def run_schemathesis(location: str, base_url: str, out: Path) -> tuple[dict[str, Any], str]:
    """Run the CLI (in a scratch directory: it keeps caches in the working directory) and
    return its JSON report and printed output."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "TOKENMILL_FUZZ_STATS": str(out / "statuses.json"),
    }
    cmd = [
        sys.executable, "-m", "schemathesis.cli",
        "--config-file", str(FUZZ / "schemathesis.toml"),
        "run", location,
        "--url", base_url,
        "--header", f"Authorization: Bearer {API_KEY}",
        # The two generation endpoints, /v1 or not as the spec has them (a method filter
        # would add every other POST).
        "--include-path-regex", "^(/v1)?/(chat/)?completions$",
        "--checks", CHECKS,
        "--max-time", str(SECONDS),
        "--generation-database", "none",
        "--report", "json", "--report-json-path", str(out / "report.json"),
        "--output-sanitize", "false",  # it hides max_tokens values ("tokens" looks secret)
        "--no-color",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=out, env=env, capture_output=True, text=True, timeout=SECONDS + 300
    )
    report = json.loads((out / "report.json").read_text())
    return report, proc.stdout + proc.stderr


def summary(name: str, report: dict[str, Any], out: Path) -> str:
    stats_file = out / "statuses.json"
    statuses = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    cases = report["test_cases"]
    return (
        f"{name}: {cases['generated']} cases in {report['running_time']:.0f}s, "
        f"{cases['with_failures']} with failures, {cases['errored']} errored; "
        f"responses {statuses}; seed {report['seed']}"
    )


def assert_alive(server: Server) -> None:
    assert server.proc.poll() is None, "the server exited"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    r = httpx.post(f"{server.base_url}/chat/completions", json=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["openai", "ours"])
def test_fuzz(
    fuzz_server: Server, spec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if spec == "openai":  # its paths are /chat/completions under its server's /v1
        location, base_url = str(FUZZ / "openai-completions.yaml"), fuzz_server.base_url
    else:
        location, base_url = f"{fuzz_server.root}/openapi.json", fuzz_server.root
    report, output = run_schemathesis(location, base_url, tmp_path)
    line = summary(spec, report, tmp_path)
    with capsys.disabled():  # the numbers belong in every run's log, CI's too
        print(f"\nfuzz {line}")
    assert report["exit_code"] == 0, f"{line}\n{output[-6000:]}"
    assert report["operations"]["tested"] == 2, line
    assert report["test_cases"]["generated"] >= MIN_CASES, line
    statuses = json.loads((tmp_path / "statuses.json").read_text())
    assert statuses.get("200", 0) >= 20, f"too few cases reached the engine: {line}"
    assert_alive(fuzz_server)
