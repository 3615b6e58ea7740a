"""Start tokenmill and the peer (llama.cpp's llama-server) on the same model and settings."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

BENCH_KEY = "tm-bench-key"


@dataclass(frozen=True)
class ServerSettings:
    model_path: str
    threads: int
    ctx_size: int  # per sequence
    slots: int  # sequences decoded together


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tokenmill_cmd(s: ServerSettings, port: int, extra: list[str] | None = None) -> list[str]:
    return [
        sys.executable, "-m", "tokenmill", "serve", "--port", str(port),
        "--model", s.model_path, "--served-model-name", "bench-model",
        "--threads", str(s.threads), "--ctx-size", str(s.ctx_size),
        "--max-num-seqs", str(s.slots), "--api-key", BENCH_KEY, "--log-level", "warning",
        *(extra or []),
    ]  # fmt: skip


def llama_server_cmd(binary: str, s: ServerSettings, port: int) -> list[str]:
    # -c is split evenly across -np slots, so each slot gets ctx_size like ours.
    return [
        binary, "-m", s.model_path, "--port", str(port), "-t", str(s.threads),
        "-tb", str(s.threads), "-c", str(s.ctx_size * s.slots), "-np", str(s.slots),
        "--api-key", BENCH_KEY, "--alias", "bench-model", "--log-disable",
    ]  # fmt: skip


@contextlib.contextmanager
def running(cmd: list[str], name: str) -> Iterator[str]:
    """Start a server, wait until it is ready, yield its /v1 URL, then stop it.

    tokenmill's ``/health`` is liveness (200 while the model loads); ``/ready`` is what
    says it serves. llama-server's ``/health`` answers 503 until its model is loaded."""
    port = int(cmd[cmd.index("--port") + 1])
    log = Path(f"/tmp/tokenmill-bench-{name}.log").open("w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        root = f"http://127.0.0.1:{port}"
        probe = "/ready" if "tokenmill" in cmd else "/health"
        deadline = time.time() + 180
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {log.name}")
            try:
                if httpx.get(f"{root}{probe}", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            raise RuntimeError(f"{name} did not become healthy; see {log.name}")
        yield f"{root}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def new_port() -> int:
    return _free_port()
