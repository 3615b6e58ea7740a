"""The llama.cpp model runner: the only module that imports ``llama_cpp``.

It drives llama.cpp's low-level API directly: one context, one ``llama_decode`` per engine
step, and one KV stream per slot (each running sequence is a llama.cpp sequence id). Separate
streams, rather than one unified pool, keep every sequence's cells laid out exactly as if it
ran alone: with a shared pool, the interleaved layout changes rounding in attention.

Which kernels run is chosen per process before this module is imported (runner/kernels.py).
The default, fast ones are llama.cpp's stock build: llamafile's tinyBLAS, which takes a
matmul once it has several rows (a sequence's attention in a prompt chunk or a draft, the
output matrix in a busy step), and flash attention as llama.cpp's ``auto`` decides, whose CPU
kernel picks a tiled, a per-row or a split-KV path by chunk shape. Both round differently by
batch shape, so a sequence's logits move a little with what shares its step, as they do in
llama-server, vLLM and SGLang by default. ``--deterministic`` loads a CPU backend built
without tinyBLAS and turns flash attention off: then a sequence's logits are bit-identical
whether its tokens come one per step, in prompt chunks of any size, or as speculative drafts,
next to anything else in the batch (benchmarks/batch_invariance.py).

The batch struct points at NumPy arrays we own, so filling it is a few vectorised copies
rather than per-token ctypes calls.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import llama_cpp as L
import numpy as np
import numpy.typing as npt

from tokenmill import __version__
from tokenmill.config import FlashAttn, Kernels
from tokenmill.runner.base import Batch, KVCacheFull, ModelInfo

log = logging.getLogger(__name__)

_backend_ready = False
_FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}  # enum llama_flash_attn_type
_GGML_LOG_WARN, _GGML_LOG_ERROR = 3, 4  # ggml_log_level; 5 is "continue previous line"


@L.llama_log_callback
def _log_callback(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    # llama.cpp narrates every load and graph reservation on stderr; keep warnings and errors.
    if level in (_GGML_LOG_WARN, _GGML_LOG_ERROR) and text:
        log.warning("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())


def _init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        L.llama_log_set(_log_callback, ctypes.c_void_p(0))
        L.llama_backend_init()
        _backend_ready = True


def llamafile_enabled() -> bool:
    """Was llama.cpp built with llamafile's tinyBLAS? Then a sequence's attention uses one
    kernel for a single token and another for several, and logits depend on batching."""
    info: bytes = L.llama_print_system_info()
    return b"LLAMAFILE = 1" in info


def _flash_attn_for(kernels: Kernels, flash_attn: FlashAttn, tinyblas: bool) -> FlashAttn:
    """The flash attention setting ``kernels`` allow, after checking what llama.cpp loaded."""
    if kernels == "fast":
        if not tinyblas:
            log.warning("llama.cpp has no tinyBLAS here: the fast kernels run without it")
        return flash_attn
    if tinyblas or flash_attn == "on":
        raise RuntimeError(
            "deterministic kernels asked for, but llama.cpp loaded with tinyBLAS or flash "
            "attention (select them with tokenmill.runner.kernels before importing llama_cpp)"
        )
    return "off"


class LlamaRunner:
    """A GGUF model loaded in llama.cpp, decoding batches over ``n_seq_max`` KV slots."""

    def __init__(
        self,
        path: str,
        n_ctx: int,
        n_threads: int,
        n_seq_max: int,
        n_batch: int,
        kernels: Kernels = "fast",
        flash_attn: FlashAttn = "auto",
    ) -> None:
        _init_backend()
        tinyblas = llamafile_enabled()
        flash_attn = _flash_attn_for(kernels, flash_attn, tinyblas)
        mparams = L.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self._model = L.llama_model_load_from_file(path.encode(), mparams)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self._vocab = L.llama_model_get_vocab(self._model)
        cparams = L.llama_context_default_params()
        cparams.n_ctx = n_ctx * n_seq_max  # llama.cpp splits this evenly across the streams
        cparams.n_batch = n_batch
        cparams.n_ubatch = min(n_batch, 512)
        cparams.n_seq_max = n_seq_max
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.kv_unified = False  # one stream per slot: batch-invariant outputs (see above)
        cparams.no_perf = True
        # LLAMA_FLASH_ATTN_TYPE_AUTO/DISABLED/ENABLED: off when deterministic (see above).
        cparams.flash_attn_type = _FLASH_ATTN[flash_attn]
        self._ctx = L.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self._mem = L.llama_get_memory(self._ctx)
        self.n_batch = n_batch
        self._alloc_batch(n_batch)
        self.kernels = kernels
        self._host: dict[int, npt.NDArray[np.uint8]] = {}  # saved KV states by entry id
        self.info = self._read_info(path, L.llama_n_ctx_seq(self._ctx), n_seq_max)
        log.info(
            "loaded %s: vocab %d, context %d per sequence, %d slots, %d threads, %s kernels "
            "(tinyBLAS %s, flash attention %s)",
            Path(path).name, self.info.vocab_size, self.info.n_ctx, n_seq_max, n_threads,
            kernels, "on" if tinyblas else "off", flash_attn,
        )  # fmt: skip

    # -- model facts ------------------------------------------------------------------------

    def _read_info(self, path: str, n_ctx: int, n_seq_max: int) -> ModelInfo:
        n_vocab = L.llama_vocab_n_tokens(self._vocab)
        pieces = [self._piece(t) for t in range(n_vocab)]
        special = {
            t: (L.llama_vocab_get_text(self._vocab, t) or b"").decode("utf-8", "replace")
            for t in range(n_vocab)
            if L.llama_vocab_is_control(self._vocab, t) or L.llama_vocab_is_eog(self._vocab, t)
        }
        eog = frozenset(t for t in range(n_vocab) if L.llama_vocab_is_eog(self._vocab, t))
        bos = L.llama_vocab_bos(self._vocab)
        eos = L.llama_vocab_eos(self._vocab)
        template = L.llama_model_chat_template(self._model, None)
        return ModelInfo(
            vocab_size=n_vocab,
            n_ctx=n_ctx,
            kv_cells=n_ctx * n_seq_max,
            n_ctx_train=L.llama_model_n_ctx_train(self._model),
            token_pieces=pieces,
            eog_ids=eog,
            bos_id=bos if bos >= 0 else None,
            eos_id=eos if eos >= 0 else None,
            add_bos=bool(L.llama_vocab_get_add_bos(self._vocab)),
            chat_template=template.decode() if template else None,
            fingerprint=_fingerprint(path, self.kernels),
            special_texts=special,
            kernels=self.kernels,
            kv_bytes_per_token=self._kv_bytes_per_token(),
        )

    def _kv_bytes_per_token(self) -> int:
        """Bytes of one token's K and V over all layers, as a saved state holds them (f16,
        llama.cpp's default cache type), plus the cell's position and sequence id."""
        m = self._model
        head_dim = L.llama_model_n_embd(m) // max(L.llama_model_n_head(m), 1)
        per_layer = 2 * L.llama_model_n_head_kv(m) * head_dim * 2
        return L.llama_model_n_layer(m) * per_layer + 12

    def _piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = L.llama_token_to_piece(self._vocab, token, buf, 64, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
        return buf.raw[: max(n, 0)]

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        return _tokenize(self._vocab, text, add_special, parse_special)

    # -- KV slots ---------------------------------------------------------------------------

    def trim(self, slot: int, keep: int) -> None:
        L.llama_memory_seq_rm(self._mem, slot, keep, -1)

    def copy(self, src: int, dst: int) -> None:
        # Through a sequence state rather than llama_memory_seq_cp: across streams that copies
        # whole streams (every cell, used or not) and only at the start of the next decode, so
        # a save or restore of either slot before then would see the wrong buffers. A state
        # holds just the used cells and is written now.
        self._write_state(self._read_state(src), dst)

    def save(self, slot: int, entry: int) -> None:
        self._host[entry] = self._read_state(slot)

    def restore(self, entry: int, slot: int) -> None:
        self._write_state(self._host[entry], slot)

    def drop(self, entry: int) -> None:
        self._host.pop(entry, None)

    def _read_state(self, slot: int) -> npt.NDArray[np.uint8]:
        size = L.llama_state_seq_get_size(self._ctx, slot)
        buf = np.empty(size, dtype=np.uint8)
        n = L.llama_state_seq_get_data(self._ctx, _u8p(buf), size, slot)
        if n != size:
            raise RuntimeError(f"llama.cpp saved {n} of {size} bytes of slot {slot}")
        return buf

    def _write_state(self, buf: npt.NDArray[np.uint8], slot: int) -> None:
        if L.llama_state_seq_set_data(self._ctx, _u8p(buf), buf.size, slot) == 0:
            L.llama_memory_seq_rm(self._mem, slot, -1, -1)  # whatever was half restored
            raise RuntimeError(f"llama.cpp could not restore {buf.size} bytes into slot {slot}")

    # -- decoding ---------------------------------------------------------------------------

    def _alloc_batch(self, n: int) -> None:
        self._tok = np.zeros(n, dtype=np.int32)
        self._pos = np.zeros(n, dtype=np.int32)
        self._nseq = np.ones(n, dtype=np.int32)
        self._seq = np.zeros(n, dtype=np.int32)
        self._out = np.zeros(n, dtype=np.int8)
        base = self._seq.ctypes.data
        i32p = ctypes.POINTER(ctypes.c_int32)
        self._seq_ptrs = (i32p * n)(*[ctypes.cast(base + 4 * i, i32p) for i in range(n)])
        # Typed as Any: llama-cpp-python declares these fields as arrays, we set pointers.
        b: Any = L.llama_batch()
        b.token = self._tok.ctypes.data_as(i32p)
        b.embd = ctypes.POINTER(ctypes.c_float)()
        b.pos = self._pos.ctypes.data_as(i32p)
        b.n_seq_id = self._nseq.ctypes.data_as(i32p)
        b.seq_id = ctypes.cast(self._seq_ptrs, type(b.seq_id))
        b.logits = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self._batch = b

    def decode(self, batch: Batch) -> npt.NDArray[np.float32]:
        """Run the whole batch in one ``llama_decode``, ordered by slot.

        llama.cpp puts only consecutive sequence ids into one ubatch: in slot order, the
        sequences decode in one pass instead of one pass per gap (measured at batch 8:
        55 ms/step in slot order, 92 ms in reverse order).
        """
        n = len(batch)
        if n > self.n_batch:
            raise ValueError(f"batch of {n} tokens exceeds n_batch {self.n_batch}")
        order = np.argsort(batch.slots, kind="stable")  # stable: each sequence stays in order
        rows = self._decode(batch, order)
        # Rows come back in slot order; put them back in the order the batch asked for them.
        want_rank = np.cumsum(batch.want_logits) - 1  # output row of each wanted token
        out = np.empty_like(rows)
        out[want_rank[order[batch.want_logits[order]]]] = rows
        return out

    def _decode(self, batch: Batch, idx: npt.NDArray[np.intp]) -> npt.NDArray[np.float32]:
        n = int(idx.size)
        want = batch.want_logits[idx]
        self._tok[:n] = batch.tokens[idx]
        self._pos[:n] = batch.positions[idx]
        self._seq[:n] = batch.slots[idx]
        self._out[:n] = want
        self._batch.n_tokens = n
        rc = L.llama_decode(self._ctx, self._batch)
        if rc == 1:
            raise KVCacheFull("llama.cpp found no KV slot for the batch")
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        n_out = int(np.count_nonzero(want))
        if n_out == 0:
            return np.zeros((0, self.info.vocab_size), dtype=np.float32)
        ptr = L.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_out, self.info.vocab_size)).copy()

    def close(self) -> None:
        if self._ctx:
            L.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            L.llama_model_free(self._model)
            self._model = None


class LlamaVocab:
    """A model's tokenizer alone (llama.cpp's ``vocab_only``: no weights, no context), for
    a process that prepares requests for engines running elsewhere (the Ray ingress)."""

    def __init__(self, path: str) -> None:
        _init_backend()
        mparams = L.llama_model_default_params()
        mparams.vocab_only = True
        self._model = L.llama_model_load_from_file(path.encode(), mparams)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load the vocabulary of {path}")
        self._vocab = L.llama_model_get_vocab(self._model)

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        return _tokenize(self._vocab, text, add_special, parse_special)


def _tokenize(vocab: Any, text: str, add_special: bool, parse_special: bool) -> list[int]:
    data = text.encode("utf-8")
    cap = len(data) + 8
    out = (L.llama_token * cap)()
    n = L.llama_tokenize(vocab, data, len(data), out, cap, add_special, parse_special)
    if n < 0:
        cap = -n
        out = (L.llama_token * cap)()
        n = L.llama_tokenize(vocab, data, len(data), out, cap, add_special, parse_special)
    return list(out[:n])


def _u8p(buf: npt.NDArray[np.uint8]) -> Any:
    return buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))


def _fingerprint(path: str, kernels: str) -> str:
    """Stable for one model file, tokenmill version and set of kernels (outputs differ between
    the two), without hashing gigabytes."""
    h = hashlib.sha256(f"{__version__} {kernels}".encode())
    size = os.path.getsize(path)
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(size - (1 << 20))
            h.update(f.read(1 << 20))
    return "fp_" + h.hexdigest()[:12]
