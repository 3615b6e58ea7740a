"""A deterministic toy model for fast tests: the next token is a function of the whole history.

Each slot is a KV stream of ``n_ctx`` cells, as in the llama.cpp runner, holding the token
history; tests catch wrong positions, stale KV, bad copies and preemption bugs the same way a
real model's output would change.
"""

from __future__ import annotations

import zlib

import numpy as np
import numpy.typing as npt

from tokenmill.runner.base import Batch, KVCacheFull, ModelInfo

EOS = 1
VOCAB = 64  # ids 2..63 render as single lowercase letters / digits / punctuation below
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 .,!?-_:;ABCDEFGHIJKLMNOPQRSTUV"


def _pieces() -> list[bytes]:
    return [b"", b""] + [_ALPHABET[i - 2].encode() for i in range(2, VOCAB)]


class FakeRunner:
    """Logits peak at a token derived from a hash of the slot's full history."""

    def __init__(
        self,
        n_ctx: int = 512,
        eos_after: int | None = None,
        kv_cells: int | None = None,
        repeat_period: int | None = None,
    ) -> None:
        self.info = ModelInfo(
            vocab_size=VOCAB,
            n_ctx=n_ctx,
            kv_cells=kv_cells or n_ctx * 8,
            n_ctx_train=n_ctx,
            token_pieces=_pieces(),
            eog_ids=frozenset({EOS}),
            bos_id=None,
            eos_id=EOS,
            add_bos=False,
            chat_template=None,
            fingerprint="fp_fake",
            kv_bytes_per_token=1024,
        )
        self.eos_after = eos_after  # emit EOS once a slot holds this many tokens
        # Mostly repeat the token ``repeat_period`` back (text that copies its context, where
        # prompt-lookup drafts pay off), with a hash-chosen token now and then.
        self.repeat_period = repeat_period
        self.kv: dict[int, list[int]] = {}
        self.host: dict[int, list[int]] = {}  # saved KV by entry id
        self.copies = self.restores = 0
        self.decode_calls = 0
        self.batch_sizes: list[int] = []

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        # Characters past the vocabulary (the alphabet is longer than it) become "a", as
        # unknown ones do: every id stays a real token.
        ids = (_ALPHABET.find(ch) + 2 for ch in text)
        return [i if 2 <= i < VOCAB else 2 for i in ids]

    def trim(self, slot: int, keep: int) -> None:
        hist = self.kv.get(slot, [])
        del hist[keep:]

    def copy(self, src: int, dst: int) -> None:
        self.kv[dst] = list(self.kv.get(src, []))
        self.copies += 1

    def save(self, slot: int, entry: int) -> None:
        self.host[entry] = list(self.kv.get(slot, []))

    def restore(self, entry: int, slot: int) -> None:
        self.kv[slot] = list(self.host[entry])
        self.restores += 1

    def drop(self, entry: int) -> None:
        self.host.pop(entry, None)

    def decode(self, batch: Batch) -> npt.NDArray[np.float32]:
        self.decode_calls += 1
        self.batch_sizes.append(len(batch))
        rows = []
        for tok, pos, slot, want in zip(
            batch.tokens.tolist(),
            batch.positions.tolist(),
            batch.slots.tolist(),
            batch.want_logits.tolist(),
            strict=True,
        ):
            hist = self.kv.setdefault(slot, [])
            assert pos == len(hist), f"slot {slot}: position {pos} but KV holds {len(hist)}"
            if pos >= self.info.n_ctx:
                raise KVCacheFull(f"slot {slot} is full")
            hist.append(tok)
            if want:
                rows.append(self._logits(hist))
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), VOCAB)

    def _logits(self, hist: list[int]) -> list[float]:
        h = zlib.crc32(bytes(t % 256 for t in hist))
        if self.eos_after is not None and len(hist) >= self.eos_after:
            peak = EOS
        elif self.repeat_period and len(hist) >= self.repeat_period and h % 5:
            peak = hist[-self.repeat_period]
        else:
            peak = 2 + h % (VOCAB - 2)
        logits = [float((i * 7 + len(hist)) % 5) * 0.1 for i in range(VOCAB)]
        logits[peak] = 5.0
        return logits
