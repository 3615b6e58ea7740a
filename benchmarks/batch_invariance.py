"""Are a sequence's logits independent of how its tokens are batched? (They must be.)

Usage: .venv/bin/python benchmarks/batch_invariance.py [--kernels fast|deterministic]
    [--flash-attn auto|on|off]
Compares, on the embedded model, the logits of the same tokens computed one per step, as one
whole prompt, in chunks of 7, and inside one llama_decode that mixes one-token decodes with
9-token chunks of other sequences; then, at a 400-token context (where llama.cpp's kernels
start splitting the KV), one token decoded alone and next to three other sequences. Prints
the largest absolute difference of each against its reference: 0.0 everywhere with the
deterministic kernels (the default here: no tinyBLAS, flash attention off).
"""

from __future__ import annotations

import argparse
from typing import Any, get_args

import numpy as np
import numpy.typing as npt

from tokenmill.config import FlashAttn, Kernels, embedded_model_path
from tokenmill.runner import kernels
from tokenmill.runner.base import Batch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernels", choices=get_args(Kernels), default="deterministic")
    ap.add_argument("--flash-attn", choices=get_args(FlashAttn), default="off")
    args = ap.parse_args()
    kernels.select(args.kernels)  # before llama_cpp is imported
    from tokenmill.runner.llama_cpp import LlamaRunner, llamafile_enabled

    print("llamafile (tinyBLAS) compiled in:", llamafile_enabled())
    r = LlamaRunner(
        str(embedded_model_path()),
        4096,
        2,
        8,
        512,
        kernels=args.kernels,
        flash_attn=args.flash_attn,
    )
    rng = np.random.default_rng(1)
    prompts = [rng.integers(100, 40000, n).astype(np.int32) for n in (37, 90, 150, 64)]

    def run(slot: int, p: npt.NDArray[np.int32], sizes: list[int]) -> npt.NDArray[np.float32]:
        r.trim(slot, 0)
        at, outs = 0, []
        for size in sizes:
            n = min(size, len(p) - at)
            if n <= 0:
                break
            pos = np.arange(at, at + n, dtype=np.int32)
            batch = Batch(p[at : at + n], pos, np.full(n, slot, np.int32), np.ones(n, np.bool_))
            outs.append(r.decode(batch))
            at += n
        return np.concatenate(outs)

    ref = [run(0, p, [1] * len(p)) for p in prompts]  # one token per step
    for name, sizes in (("whole prompt", [10_000]), ("chunks of 7", [7] * 100)):
        diffs = [
            float(np.abs(run(0, p, sizes) - f).max()) for p, f in zip(prompts, ref, strict=True)
        ]
        print(f"{name:>13} vs one per step: {diffs}")
    # Slots 0 and 2 decode one token per step next to prompt chunks of 9 in slots 1 and 3,
    # all in one llama_decode per step.
    for s in range(4):
        r.trim(s, 0)
    at, outs = [0] * 4, [[] for _ in range(4)]  # type: ignore[var-annotated]
    while any(at[s] < len(p) for s, p in enumerate(prompts)):
        toks, pos, slots, sizes = [], [], [], []
        for s, p in enumerate(prompts):
            n = min(1 if s % 2 == 0 else 9, len(p) - at[s])
            toks += p[at[s] : at[s] + n].tolist()
            pos += list(range(at[s], at[s] + n))
            slots += [s] * n
            sizes.append(n)
        batch = Batch(
            np.array(toks, np.int32), np.array(pos, np.int32), np.array(slots, np.int32),
            np.ones(len(toks), np.bool_),
        )  # fmt: skip
        rows = r.decode(batch)
        k = 0
        for s, n in enumerate(sizes):
            outs[s].append(rows[k : k + n])
            k += n
            at[s] += n
    diffs = [float(np.abs(np.concatenate(o) - f).max()) for o, f in zip(outs, ref, strict=True)]
    print(f"{'mixed batch':>13} vs one per step: {diffs}")
    long_context(r, rng)


def long_context(r: Any, rng: np.random.Generator) -> None:
    """The next token of a 400-token context, decoded alone and next to three others."""
    n = 400
    prompts = [rng.integers(100, 40000, n).astype(np.int32) for _ in range(4)]
    for s, p in enumerate(prompts):
        r.trim(s, 0)
        r.decode(Batch(p[:-1], np.arange(n - 1, dtype=np.int32), np.full(n - 1, s, np.int32),
                       np.zeros(n - 1, np.bool_)))  # fmt: skip
    last = np.array([p[-1] for p in prompts], np.int32)
    pos = np.full(4, n - 1, np.int32)
    together = r.decode(Batch(last, pos, np.arange(4, dtype=np.int32), np.ones(4, np.bool_)))
    r.trim(0, n - 1)
    alone = r.decode(Batch(last[:1], pos[:1], np.zeros(1, np.int32), np.ones(1, np.bool_)))
    diff = float(np.abs(alone[0] - together[0]).max())
    print(f"{'400 context':>13}, alone vs next to three others: {diff}")


if __name__ == "__main__":
    main()
