"""Check both sets of llama.cpp kernels after an install (see runner/kernels.py): the default
ones carry llamafile's tinyBLAS, the deterministic ones do not. Each is loaded in its own
process, as a server would load it.

Usage: python -m tokenmill.runner.check_build
"""

from __future__ import annotations

import subprocess
import sys

_PROBE = (
    "import sys; from tokenmill.runner import kernels; kernels.select(sys.argv[1]); "
    "from tokenmill.runner.llama_cpp import llamafile_enabled; print(int(llamafile_enabled()))"
)
EXPECTED_TINYBLAS = {"fast": "1", "deterministic": "0"}


def tinyblas(kernels: str) -> str:
    """Whether a process that selected ``kernels`` sees tinyBLAS ("1" or "0"), or why the
    probe failed."""
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, kernels], capture_output=True, text=True, timeout=120
    )
    return r.stdout.strip() if r.returncode == 0 else r.stderr.strip()[-400:]


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
