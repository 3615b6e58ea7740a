"""Check both sets of llama.cpp kernels after an install (see runner/kernels.py): each runs the
embedded model, the default ones carry llamafile's tinyBLAS, the deterministic ones do not.
Each is loaded in its own process, as a server would load it.

Usage: python -m tokenmill.runner.check_build
"""

from __future__ import annotations

import subprocess
import sys

# Loads the embedded model and decodes a prompt chunk, so a build that crashes on this CPU (as
# llama.cpp's AMX kernels did on a Xeon with AMX: a segfault in the first matmul) fails here,
# at install, rather than in the first request.
_PROBE = """
import sys
import numpy as np
from tokenmill.runner import kernels
kernels.select(sys.argv[1])
from tokenmill.config import embedded_model_path
from tokenmill.runner.base import Batch
from tokenmill.runner.llama_cpp import LlamaRunner, llamafile_enabled
r = LlamaRunner(str(embedded_model_path()), 256, 1, 1, 64, kernels=sys.argv[1])
n = 16
want = np.zeros(n, dtype=np.bool_)
want[-1] = True
ids = np.arange(100, 100 + n, dtype=np.int32)
logits = r.decode(Batch(ids, np.arange(n, dtype=np.int32), np.zeros(n, np.int32), want))
assert logits.shape == (1, r.info.vocab_size) and np.isfinite(logits).all()
print(int(llamafile_enabled()))
"""
EXPECTED_TINYBLAS = {"fast": "1", "deterministic": "0"}


def tinyblas(kernels: str) -> str:
    """Whether a process that selected ``kernels`` sees tinyBLAS ("1" or "0"), or why the
    probe failed."""
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, kernels], capture_output=True, text=True, timeout=120
    )
    if r.returncode == 0:
        return r.stdout.strip().splitlines()[-1]
    return f"exit {r.returncode}: {r.stderr.strip()[-400:]}"


def main() -> int:
    bad = 0
    for kernels, expected in EXPECTED_TINYBLAS.items():
        got = tinyblas(kernels)
        if got != expected:
            print(
                f"tokenmill: the {kernels} kernels are wrong (tinyBLAS {got!r}, expected "
                f"{expected!r}); rerun make install",
                file=sys.stderr,
            )
            bad += 1
    if not bad:
        print("tokenmill: llama.cpp kernels OK (fast: tinyBLAS on; deterministic: off)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
