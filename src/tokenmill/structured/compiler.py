"""Compiling constraints into matchers: validated once, cached, and bounded.

A grammar comes from a client, so compiling it must neither hang nor exhaust the server:

- time and memory: llguidance's parser limits (``LIMITS``) put fuel on building the lexer
  and on every mask step, and cap lexer states (about 1-2 kB each) and grammar size. The
  caller also waits at most ``timeout`` seconds; a compile still running then is reported as
  too complex, and finishes (fuel-bounded) on its own.
- stack: llguidance recurses over a grammar's rule chain (an 8 MB stack overflows at about
  3,000 chained rules, killing the process), so compiles run on a thread with a large stack
  and grammar text is capped at ``MAX_GRAMMAR_CHARS``, which keeps any chain well inside it.
- CPU: one compile at a time (``max_concurrent``), so a burst of expensive grammars takes one
  core at most from the engine; cache hits never wait.
- lexers that only blow up once text arrives (``a{1000000}`` builds fine, then fails on its
  second token; ``a{50000}`` takes ~45 ms per mask): a compile walks a few tokens of the
  grammar (``_probe``) and refuses it if a mask fails or is slow. Deeper in a grammar the
  matcher guards itself at generation time (see ``matcher.py``).

Both compiled grammars and errors are cached (LRU, keyed by grammar text), so a repeated
pathological request is refused at once.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TypeVar

import llguidance
import llguidance.numpy as llnp
import numpy as np

from tokenmill.structured.calllist import CallWatcher
from tokenmill.structured.constraints import Constraint
from tokenmill.structured.errors import CompilerBusy, InvalidConstraint, StructuredError
from tokenmill.structured.matcher import Bitmask, Matcher

T = TypeVar("T")
_Key = str | tuple[str, ...]

MAX_GRAMMAR_CHARS = 256 * 1024
COMPILE_STACK_BYTES = 256 * 1024 * 1024  # address space; only the pages touched are used
LIMITS = {
    # Default 1M: (a{1000}){1000} then takes 1.5-2.5 s to build its lexer (0.2 s at 200k);
    # an 80-property schema with formats, patterns and enums needs under 30k.
    "initial_lexer_fuel": 200_000,
    "step_lexer_fuel": 200_000,  # ~15 ms of lexer work per mask at most
    "step_max_items": 50_000,  # ~3 ms of Earley items per mask at most
    "max_lexer_states": 50_000,  # default 250k: up to ~500 MB for one matcher
    "max_grammar_size": 500_000,
    "verbose_errors": False,  # errors go to clients: no parser state dumps
}

PROBE_STEPS = 4
# CPU time (so a busy machine does not fail good grammars); measured: JSON masks take
# 0.01-1 ms, free text up to ~1.5 ms.
MAX_MASK_SECONDS = 0.015

_stack_lock = threading.Lock()


def parser_limits() -> llguidance.LLParserLimits:
    return llguidance.LLParserLimits(**LIMITS)  # type: ignore[arg-type]


@dataclass
class CompiledGrammar:
    """A validated grammar; ``matcher()`` gives each new sequence its own state.

    ``decode`` (token ids -> bytes) is set for tool calls: their matchers then watch for a
    repeated call, which ends the list (``calllist.py``).
    """

    grammar: str
    _template: llguidance.LLMatcher
    _eos_ids: tuple[int, ...]
    decode: Callable[[list[int]], bytes] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def matcher(self) -> Matcher:
        calls = CallWatcher(self.decode) if self.decode is not None else None
        # A copy of a matcher that already computed its first mask: no grammar rebuild, and
        # the lexer states it built are reused (measured: 50 us vs 1.5 ms for a fresh one).
        with self._lock:
            return Matcher(self._template.deep_copy(), self._eos_ids, calls)


class GrammarCompiler:
    """Compiles constraints for one model's tokenizer, with a bounded LRU cache.

    On a cache miss ``compile`` blocks while it waits for the compile slot (up to ``timeout``
    seconds, then 503) and while it compiles (up to ``timeout`` more, then 400): call it off
    the event loop (``await asyncio.to_thread(compiler.compile, constraint)``).
    """

    def __init__(
        self,
        tokenizer: llguidance.LLTokenizer,
        max_entries: int = 256,
        timeout: float = 2.0,
        max_concurrent: int = 1,
    ) -> None:
        self.tokenizer = tokenizer
        self.max_entries = max_entries
        self.timeout = timeout
        self._cache: OrderedDict[_Key, CompiledGrammar | _Failure] = OrderedDict()
        self._inflight: dict[_Key, Future[CompiledGrammar | _Failure]] = {}
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_concurrent)
        # Bytes in each token, for probes (24 ms for a 49k vocabulary, once).
        self._lengths = np.array(
            [len(tokenizer.decode_bytes([t])) for t in range(tokenizer.vocab_size)],
            dtype=np.int64,
        )
        self.hits = self.misses = 0

    def compile(self, constraint: Constraint) -> CompiledGrammar:
        """The compiled grammar, or ``InvalidConstraint`` naming the field at fault."""
        # Errors name fields, so they are cached per grammar *and* the fields it came from
        # (the same schema may come as guided_json or as response_format).
        ok_key, err_key = _ok_key(constraint), _error_key(constraint)
        with self._lock:
            cached = self._cache.get(ok_key) or self._cache.get(err_key)
            if cached is not None:
                self._cache.move_to_end(ok_key if isinstance(cached, CompiledGrammar) else err_key)
                self.hits += 1
                return _unwrap(cached)
            self.misses += 1
            future = self._inflight.get(err_key)
            owner = future is None
            if future is None:
                future = self._inflight[err_key] = Future()
        if owner:
            self._run(constraint, future)
        try:
            return _unwrap(future.result(timeout=2 * self.timeout + 1))
        except FutureTimeout:
            raise CompilerBusy("grammar compilation is busy; retry shortly") from None

    def matcher(self, constraint: Constraint) -> Matcher:
        return self.compile(constraint).matcher()

    def _run(self, constraint: Constraint, future: Future[CompiledGrammar | _Failure]) -> None:
        err_key = _error_key(constraint)
        result: CompiledGrammar | _Failure
        try:
            result = self._compile_bounded(constraint)
        except StructuredError as e:
            result = _Failure(type(e), e.message, e.param)
        except BaseException as e:  # never leave waiters hanging
            with self._lock:
                self._inflight.pop(err_key, None)
            future.set_exception(e)
            raise
        with self._lock:
            self._inflight.pop(err_key, None)
            if isinstance(result, CompiledGrammar):
                self._cache[_ok_key(constraint)] = result
            elif result.kind is not CompilerBusy:  # busy says nothing about the grammar
                self._cache[err_key] = result
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        future.set_result(result)

    def _compile_bounded(self, constraint: Constraint) -> CompiledGrammar:
        if len(constraint.grammar) > MAX_GRAMMAR_CHARS:
            raise InvalidConstraint(
                f"{constraint.param} is too large: its grammar has {len(constraint.grammar):,} "
                f"characters, at most {MAX_GRAMMAR_CHARS:,} are allowed",
                constraint.param,
            )
        # Waiting for a slot is the server's business (503); the compile's own time, counted
        # once it has the slot, is the grammar's (400, cached).
        if not self._slots.acquire(timeout=self.timeout):
            raise CompilerBusy("grammar compilation is busy; retry shortly")
        # The slot is released by the worker when it finishes, even after we stop waiting,
        # so abandoned compiles still count against the concurrency bound.
        outcome = _on_big_stack(lambda: self._build_checked(constraint), self._slots.release)
        try:
            return outcome.result(timeout=self.timeout)
        except FutureTimeout:
            raise InvalidConstraint(
                f"{constraint.param} is too complex: compiling it took over {self.timeout:g} s",
                constraint.param,
            ) from None

    def _build_checked(self, constraint: Constraint) -> CompiledGrammar:
        template, error = self._build(constraint.grammar)
        if template is not None and not error:
            eos = tuple(self.tokenizer.eos_tokens)
            decode = self.tokenizer.decode_bytes if constraint.kind == "tools" else None
            return CompiledGrammar(constraint.grammar, template, eos, decode)
        # Blame the first part that fails on its own, else the constraint as a whole.
        for param, part in constraint.parts:
            _, part_error = self._build(part)
            if part_error:
                keep = param == "guided_grammar"  # positions in the client's own text
                raise InvalidConstraint(f"invalid {param}: {_clean(part_error, keep)}", param)
        keep = constraint.kind == "grammar"
        raise InvalidConstraint(
            f"invalid {constraint.param}: {_clean(error, keep)}", constraint.param
        )

    def _build(self, grammar: str) -> tuple[llguidance.LLMatcher | None, str]:
        """A matcher that computed its first mask, or the error llguidance gave."""
        m = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0, limits=parser_limits())
        if m.is_error():
            return None, m.get_error() or "grammar error"
        mask = llnp.allocate_token_bitmask(1, self.tokenizer.vocab_size)
        llnp.fill_next_token_bitmask(m, mask, 0)
        if m.is_error():
            return None, m.get_error() or "grammar error"
        if not mask.any():
            return None, "the grammar matches nothing"
        return m, self._probe(m.deep_copy(), mask)

    def _probe(self, m: llguidance.LLMatcher, mask: Bitmask) -> str:
        """Walk a few tokens: some lexers blow up (or crawl) only once text arrives.

        Each step takes the longest allowed token, which drives a lexer furthest (``a{1000000}``
        fails on its second mask after "aaaaaaaa", not after "a"). Fuel does not bound every
        case: ``a{50000}`` spends ~45 ms on each mask within its fuel, which would slow every
        sequence in the batch; grammars that slow are refused.
        """
        eos = self.tokenizer.eos_tokens
        lengths = self._lengths
        for _ in range(PROBE_STEPS):
            bits = np.unpackbits(mask[0].view(np.uint8), bitorder="little", count=lengths.size)
            bits[eos] = 0
            if not bits.any():
                break
            token = int(np.argmax(np.where(bits, lengths, -1)))
            m.consume_token(token)  # allowed by the mask: failing means a limit was hit
            if m.is_error():
                return m.get_error() or "grammar error"
            if m.is_stopped():
                break
            started = time.thread_time()
            llnp.fill_next_token_bitmask(m, mask, 0)
            took = time.thread_time() - started
            if m.is_error():
                return m.get_error() or "grammar error"
            if took > MAX_MASK_SECONDS:
                return f"too complex: one token mask took {took * 1000:.0f} ms"
        return ""


def _on_big_stack(fn: Callable[[], T], done: Callable[[], None]) -> Future[T]:
    """Run ``fn`` on a new thread with a ``COMPILE_STACK_BYTES`` stack."""
    future: Future[T] = Future()

    def target() -> None:
        try:
            future.set_result(fn())
        except BaseException as e:
            future.set_exception(e)
        finally:
            done()

    with _stack_lock:  # stack_size() is process-wide: set it only around our own start()
        old = threading.stack_size(COMPILE_STACK_BYTES)
        try:
            threading.Thread(target=target, name="tokenmill-grammar", daemon=True).start()
        finally:
            threading.stack_size(old)
    return future


_POSITION = re.compile(r"^at \d+\(\d+\): ")
# llguidance quoting grammar lines (with carets), and its "<non-verbose/>" marker.
_EXCERPT = re.compile(r"^\s*(\d+ \| .*|\^+|<non-verbose/>)$")
# Messages of llguidance's resource limits (see LIMITS).
_LIMIT_HIT = re.compile(r"too many|fuel|too large|too complex|TooComplex|grammar size")


def _clean(error: str, keep_position: bool = False) -> str:
    """llguidance's message without its grammar excerpts (the grammar may be our wrapper)."""
    text = error.strip() if keep_position else _POSITION.sub("", error.strip())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = " ".join(line for line in lines if not _EXCERPT.match(line))[:500]
    if _LIMIT_HIT.search(text) and not text.startswith("too complex"):
        text = f"too complex for this server's grammar limits ({text})"
    return text


@dataclass(frozen=True)
class _Failure:
    """A cached error: raised anew each time (re-raising one object grows its traceback)."""

    kind: type[StructuredError]
    message: str
    param: str | None


def _ok_key(constraint: Constraint) -> _Key:
    # Tool calls' matchers watch for repeats: never shared with the same text as a grammar.
    return ("tools", constraint.grammar) if constraint.kind == "tools" else constraint.grammar


def _error_key(constraint: Constraint) -> tuple[str, ...]:
    return (constraint.grammar, constraint.param, *(param for param, _ in constraint.parts))


def _unwrap(result: CompiledGrammar | _Failure) -> CompiledGrammar:
    if isinstance(result, _Failure):
        raise result.kind(result.message, result.param)
    return result
