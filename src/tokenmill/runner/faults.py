"""Fault injection: a runner wrapper whose next decodes fail on purpose.

Tests arm it to prove what no real model does on demand: a decode that raises fails only
the requests in that batch, a stalled step turns liveness red until it ends, and a KV cache
found full mid-decode makes the batch recompute rather than fail. ``tokenmill serve
--fault-injection`` wraps the real runner in it and opens an admin-only route to arm it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from tokenmill.runner.base import Batch, KVCacheFull, ModelRunner

FaultKind = Literal["decode_error", "stall", "kv_full", "crash"]
KINDS: tuple[str, ...] = get_args(FaultKind)


class InjectedFault(RuntimeError):
    """What an armed ``decode_error`` raises."""


class InjectedCrash(BaseException):
    """What an armed ``crash`` raises: not an ``Exception``, so no guard in the engine loop
    catches it and the engine thread dies, as it would on a bug in the loop itself."""


@dataclass
class _Armed:
    kind: str
    count: int  # decodes left to hit
    seconds: float  # for stalls
    skip: int  # decodes to let through first


class FaultInjector:
    """A ``ModelRunner`` that delegates to ``inner`` except for the faults armed on it."""

    def __init__(self, inner: ModelRunner) -> None:
        self.inner = inner
        self.info = inner.info
        self.fired: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._armed: list[_Armed] = []
        self._lock = threading.Lock()  # armed from the event loop, fired on the engine thread

    def arm(self, kind: str, count: int = 1, seconds: float = 0.0, skip: int = 0) -> None:
        """Make ``count`` decodes, after ``skip`` good ones, fail with ``kind``."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault {kind!r}: use one of {', '.join(KINDS)}")
        with self._lock:
            self._armed.append(_Armed(kind, count, seconds, skip))

    def disarm(self) -> None:
        with self._lock:
            self._armed.clear()

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        return self.inner.tokenize(text, add_special, parse_special)

    def trim(self, slot: int, keep: int) -> None:
        self.inner.trim(slot, keep)

    def copy(self, src: int, dst: int) -> None:
        self.inner.copy(src, dst)

    def save(self, slot: int, entry: int) -> None:
        self.inner.save(slot, entry)

    def restore(self, entry: int, slot: int) -> None:
        self.inner.restore(entry, slot)

    def drop(self, entry: int) -> None:
        self.inner.drop(entry)

    def decode(self, batch: Batch) -> npt.NDArray[np.float32]:
        fault = self._take()
        if fault is not None:
            self.fired[fault.kind] += 1
            if fault.kind == "decode_error":
                raise InjectedFault("injected decode failure")
            if fault.kind == "kv_full":
                raise KVCacheFull("injected: no KV cells for this batch")
            if fault.kind == "crash":
                raise InjectedCrash("injected engine crash")
            time.sleep(fault.seconds)  # a stall: the step then goes on as usual
        return self.inner.decode(batch)

    def _take(self) -> _Armed | None:
        with self._lock:
            if not self._armed:
                return None
            fault = self._armed[0]
            if fault.skip > 0:
                fault.skip -= 1
                return None
            fault.count -= 1
            if fault.count <= 0:
                self._armed.pop(0)
            return fault
