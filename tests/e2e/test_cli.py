"""``tokenmill serve`` flags that change what the server answers to."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import openai

from tests.e2e.conftest import start_server, stop_server
from tokenmill.config import embedded_model_path


def test_model_path_served_name_and_aliases() -> None:
    path = str(embedded_model_path())
    s = start_server(
        "--model", path, "--served-model-name", "house-model",
        "--model-alias", "gpt-4o-mini", "--model-alias", "team/llama",
        "--threads", "1", "--ctx-size", "1024", "--max-num-seqs", "2",
    )  # fmt: skip
    try:
        c = openai.OpenAI(base_url=s.base_url, api_key="open", max_retries=0)
        assert [m.id for m in c.models.list()] == ["house-model", "gpt-4o-mini", "team/llama"]
        for name in ("house-model", "gpt-4o-mini", "team/llama"):
            r = c.completions.create(model=name, prompt="Hi", max_tokens=2)
            assert r.model == name
        try:
            c.completions.create(model="smollm2-135m-instruct", prompt="Hi", max_tokens=2)
            raise AssertionError("the default id must not answer when renamed")
        except openai.NotFoundError as e:
            assert e.code == "model_not_found"
        # --max-num-seqs 2 bounds n; --ctx-size 1024 bounds prompt + completion.
        try:
            c.completions.create(model="house-model", prompt="Hi", max_tokens=2, n=3)
            raise AssertionError("n above --max-num-seqs must be refused")
        except openai.BadRequestError as e:
            assert e.param == "n"
        try:
            c.completions.create(model="house-model", prompt="Hi", max_tokens=1024)
            raise AssertionError("max_tokens beyond --ctx-size must be refused")
        except openai.BadRequestError as e:
            assert e.code == "context_length_exceeded"
    finally:
        stop_server(s)


def test_model_file_stem_is_the_default_id_for_a_custom_model() -> None:
    s = start_server("--model", str(embedded_model_path()), "--max-num-seqs", "1")
    try:
        c = openai.OpenAI(base_url=s.base_url, api_key="open", max_retries=0)
        assert [m.id for m in c.models.list()] == ["SmolLM2-135M-Instruct.Q4_1"]
    finally:
        stop_server(s)


def test_missing_model_file_is_a_clear_error() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "tokenmill", "serve", "--model", "/nonexistent.gguf"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert "model file not found" in r.stderr


def test_log_format_json_one_line_per_request_with_its_id() -> None:
    s = start_server("--log-format", "json", "--threads", "1", "--max-num-seqs", "2")
    try:
        r = httpx.post(
            f"{s.base_url}/chat/completions",
            json={"model": "smollm2-135m-instruct", "max_tokens": 3,
                  "messages": [{"role": "user", "content": "a confidential question"}]},
            headers={"x-request-id": "trace-7"}, timeout=60,
        )  # fmt: skip
        assert r.status_code == 200 and r.headers["x-request-id"] == "trace-7"
        time.sleep(0.5)  # the line is written as the request ends
        objects = [json.loads(line) for line in s.output if line.startswith("{")]
        (line,) = [o for o in objects if o.get("request_id") == "trace-7"]
        assert line["logger"] == "tokenmill.access" and line["status"] == 200
        assert line["path"] == "/v1/chat/completions" and line["id"] == r.json()["id"]
        assert line["completion_tokens"] == 3 and line["outcome"] == "finished"
        assert not any("confidential" in out for out in s.output)
    finally:
        stop_server(s)
