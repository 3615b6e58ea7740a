"""A bare llama_decode loop on tokenmill's runner settings: the ceiling for single-stream decode.

Usage: .venv/bin/python benchmarks/bare_decode.py [--threads 2] [--steps 200]
    [--kernels fast|deterministic] [--flash-attn auto|on|off]
Prints ms/step and tokens/s for batches of 1, 2, 4 and 8 sequences at a short context, with no
HTTP, no scheduler and no sampling: compare with `tokenmill bench` inter-token latency.
"""

from __future__ import annotations

import argparse
import time
from typing import get_args

import numpy as np

from tokenmill.config import FlashAttn, Kernels, embedded_model_path
from tokenmill.runner import kernels
from tokenmill.runner.base import Batch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--context", type=int, default=100)
    ap.add_argument("--kernels", choices=get_args(Kernels), default="deterministic")
    ap.add_argument("--flash-attn", choices=get_args(FlashAttn), default="off")
    args = ap.parse_args()
    kernels.select(args.kernels)  # before llama_cpp is imported
    from tokenmill.runner.llama_cpp import LlamaRunner

    runner = LlamaRunner(
        str(embedded_model_path()),
        4096,
        args.threads,
        8,
        512,
        kernels=args.kernels,
        flash_attn=args.flash_attn,
    )
    rng = np.random.default_rng(0)
    for nseq in (1, 2, 4, 8):
        for s in range(8):
            runner.trim(s, 0)
        for s in range(nseq):
            prompt = rng.integers(100, 40000, args.context).astype(np.int32)
            want = np.zeros(args.context, dtype=np.bool_)
            want[-1] = True
            pos = np.arange(args.context, dtype=np.int32)
            runner.decode(Batch(prompt, pos, np.full(args.context, s, np.int32), want))
        tokens = np.full(nseq, 500, np.int32)
        slots = np.arange(nseq, dtype=np.int32)
        start = time.perf_counter()
        for k in range(args.steps):
            pos = np.full(nseq, args.context + k, np.int32)
            runner.decode(Batch(tokens, pos, slots, np.ones(nseq, np.bool_)))
        dt = (time.perf_counter() - start) / args.steps
        print(f"batch {nseq}: {dt * 1000:.1f} ms/step, {nseq / dt:.0f} tokens/s")


if __name__ == "__main__":
    main()
