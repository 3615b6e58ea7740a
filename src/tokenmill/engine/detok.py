"""Incremental detokenization and stop strings, constant work per token.

Token pieces are raw bytes (byte-level BPE may split a UTF-8 character across tokens), so
text comes out of an incremental UTF-8 decoder. Text that could be the start of a stop string
is held back until it either completes the stop string (and is dropped) or cannot (and is
released), so a stream never shows part of a stop string.
"""

from __future__ import annotations

import codecs


class Detokenizer:
    """Turns one sequence's token ids into text deltas and spots its stop strings."""

    __slots__ = ("_decoder", "_max_hold", "_pending", "_pieces", "_stops")

    def __init__(self, pieces: list[bytes], stops: tuple[str, ...]) -> None:
        self._pieces = pieces
        self._stops = tuple(s for s in stops if s)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._max_hold = max((len(s) for s in self._stops), default=0)

    def push(self, token_id: int) -> tuple[str, str | None]:
        """Add a token; return the text now safe to emit and the stop string it completed."""
        new = self._decoder.decode(self._pieces[token_id])
        if not self._stops:
            return new, None
        buf = self._pending + new
        # A stop string can only start inside held-back or new text: anything emitted earlier
        # was checked not to begin one.
        hit = self._earliest_stop(buf)
        if hit is not None:
            pos, stop = hit
            self._pending = ""
            return buf[:pos], stop
        hold = self._held_suffix(buf)
        self._pending = buf[len(buf) - hold :]
        return buf[: len(buf) - hold], None

    def flush(self) -> str:
        """The sequence ended for another reason: release whatever was held back."""
        rest = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return rest

    def _earliest_stop(self, buf: str) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for stop in self._stops:
            pos = buf.find(stop)
            if pos != -1 and (best is None or pos < best[0]):
                best = (pos, stop)
        return best

    def _held_suffix(self, buf: str) -> int:
        """Length of the longest tail of ``buf`` that some stop string starts with."""
        for n in range(min(len(buf), self._max_hold - 1), 0, -1):
            tail = buf[-n:]
            if any(stop.startswith(tail) for stop in self._stops):
                return n
        return 0
