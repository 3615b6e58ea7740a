"""What the engine needs from a model: a tokenizer and a batched forward pass over KV slots."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class Batch:
    """One ``llama_decode`` worth of tokens; ``want_logits`` marks the rows to return."""

    tokens: npt.NDArray[np.int32]
    positions: npt.NDArray[np.int32]
    slots: npt.NDArray[np.int32]
    want_logits: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about the loaded model, read once at start-up."""

    vocab_size: int
    n_ctx: int  # the longest prompt + completion of one sequence
    kv_cells: int  # KV cells of all slots together
    n_ctx_train: int
    token_pieces: list[bytes]  # the bytes each token id renders to (empty for control tokens)
    eog_ids: frozenset[int]  # end of generation: EOS, end of turn, ...
    bos_id: int | None
    eos_id: int | None
    add_bos: bool
    chat_template: str | None
    fingerprint: str  # stable per model file, tokenmill version and kernels
    special_texts: dict[int, str] = field(default_factory=dict)  # control tokens' own text
    kernels: str = "deterministic"  # "fast" or "deterministic" (bit-exact however batched)
    kv_bytes_per_token: int = 0  # host memory one token's saved KV takes (0: cannot save)

    def token_bytes(self, token_id: int) -> bytes:
        """A token's bytes; control tokens render as their own name (``<|im_end|>``)."""
        piece = self.token_pieces[token_id]
        if not piece and token_id in self.special_texts:
            return self.special_texts[token_id].encode()
        return piece

    def detokenize(self, token_ids: list[int]) -> str:
        """Text of a token sequence, specials included (for echoing token-id prompts)."""
        return b"".join(self.token_bytes(t) for t in token_ids).decode("utf-8", "replace")

    def token_text(self, token_id: int) -> str:
        """The text of a single token, for logprobs: control tokens show their own name."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")


class Tokenizer(Protocol):
    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]: ...


class ModelRunner(Tokenizer, Protocol):
    """Owned by the engine thread; only ``tokenize`` may be called from other threads."""

    info: ModelInfo

    def trim(self, slot: int, keep: int) -> None:
        """Drop a slot's KV from position ``keep`` on (0 empties it)."""

    def copy(self, src: int, dst: int) -> None:
        """Make ``dst``'s KV a copy of ``src``'s (applied before the next decode writes)."""

    def save(self, slot: int, entry: int) -> None:
        """Copy ``slot``'s KV to host memory as ``entry`` (replacing an entry of that id)."""

    def restore(self, entry: int, slot: int) -> None:
        """Make ``slot``'s KV a copy of host ``entry`` (which stays saved)."""

    def drop(self, entry: int) -> None:
        """Free host ``entry`` (unknown ids are ignored)."""

    def decode(self, batch: Batch) -> npt.NDArray[np.float32]:
        """Run the batch; return logits of the rows marked in ``want_logits``, in order.

        Raises ``KVCacheFull`` when llama.cpp finds no room for the batch.
        """
        ...


class KVCacheFull(RuntimeError):
    """The model found no free KV cells for a batch; the engine preempts and retries."""
