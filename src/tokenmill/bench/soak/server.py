"""The soak's server: a fresh database with two keys made by the ``tokenmill`` CLI, ``tokenmill
serve`` on it as a child process, and the ledger read back by the CLI once the server stopped.

The soak needs the process itself (its pid for /proc, its exit code after SIGTERM), so it
uses ``servers.started`` rather than ``servers.running``, and stops the server itself.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenmill.bench.servers import root_url, started

PROJECT = "soak"
# Low enough that the limited key's share of the mix is refused most of the time, even in a
# 20-second run: the window is 60 s, so it admits LIMITED_RPM requests per minute at most.
LIMITED_RPM = 5
# SIGTERM drains: running requests may finish (--shutdown-timeout, 30 s by default), then the
# ledger is finalized. Nothing runs when the soak stops it, so this is a generous bound.
STOP_TIMEOUT = 60.0


@dataclass(frozen=True)
class Key:
    secret: str
    key_id: str


@dataclass(frozen=True)
class Keys:
    normal: Key
    limited: Key


def cli(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``tokenmill ARGS --db DB``, as an operator would run it; raises if it fails."""
    r = subprocess.run(
        [sys.executable, "-m", "tokenmill", *args, "--db", db],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if r.returncode != 0:
        raise RuntimeError(f"tokenmill {' '.join(args)} failed: {r.stderr.strip()}")
    return r


def create_keys(db: str) -> Keys:
    """A project with a normal key and one limited to ``LIMITED_RPM`` requests per minute."""
    cli(db, "projects", "create", PROJECT)
    limited = _new_key(db, "--name", "soak-limited", "--rpm", str(LIMITED_RPM))
    return Keys(_new_key(db, "--name", "soak-normal"), limited)


def _new_key(db: str, *flags: str) -> Key:
    r = cli(db, "keys", "create", "--project", PROJECT, *flags)
    m = re.search(r"created (key_[0-9a-f]+)", r.stderr)
    if m is None:
        raise RuntimeError(f"tokenmill keys create printed no key id: {r.stderr.strip()}")
    return Key(r.stdout.strip(), m.group(1))


def ledger_csv(db: str) -> str:
    """Every row of the usage ledger, as ``tokenmill usage --requests --format csv`` prints it."""
    return cli(db, "usage", "--requests", "--format", "csv").stdout


def parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


class Served:
    """A running ``tokenmill serve``; ``stop`` sends SIGTERM once and returns the exit code."""

    def __init__(self, proc: subprocess.Popen[bytes], root: str) -> None:
        self.proc, self.root = proc, root
        self.pid = proc.pid
        self.exit_code: int | None = None
        self.stop_seconds: float | None = None
        self.killed = False

    def stop(self) -> int:
        if self.exit_code is not None:
            return self.exit_code
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.killed = True
            self.proc.kill()
            self.exit_code = self.proc.wait()
        self.stop_seconds = time.monotonic() - t0
        return self.exit_code


@contextlib.contextmanager
def serving(cmd: list[str], log_path: Path) -> Iterator[Served]:
    """Start ``cmd`` (a ``tokenmill serve`` command line), wait until it is ready, yield it,
    and stop it however the block ends: no server outlives the soak."""
    with started(cmd, "tokenmill", log_path) as proc:
        served = Served(proc, root_url(cmd))
        try:
            yield served
        finally:
            served.stop()
