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


def root_url(cmd: list[str]) -> str:
    """Where the server started by ``cmd`` (which has a ``--port``) listens."""
    return f"http://127.0.0.1:{cmd[cmd.index('--port') + 1]}"


@contextlib.contextmanager
def running(cmd: list[str], name: str) -> Iterator[str]:
    """Start a server, wait until it is ready, yield its /v1 URL, then stop it."""
    with started(cmd, name):
        yield root_url(cmd) + "/v1"


@contextlib.contextmanager
def started(
    cmd: list[str], name: str, log_path: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server, wait until it is ready, yield its process, then stop it (if the caller
    has not) however the block ends.

    tokenmill's ``/health`` is liveness (200 while the model loads); ``/ready`` is what
    says it serves. llama-server's ``/health`` answers 503 until its model is loaded."""
    log_path = log_path or Path(f"/tmp/tokenmill-bench-{name}.log")
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            probe = "/ready" if "tokenmill" in cmd else "/health"
            _wait_ready(proc, root_url(cmd) + probe, name, log_path)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], probe: str, name: str, log_path: Path) -> None:
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(probe, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{name} did not become ready; see {log_path}")


def new_port() -> int:
    return _free_port()
