"""Fail the install when llama.cpp was built with llamafile's tinyBLAS (see the Makefile).

Usage: python -m tokenmill.runner.check_build
"""

from __future__ import annotations

import sys


def main() -> int:
    from tokenmill.runner.llama_cpp import llamafile_enabled

    if llamafile_enabled():
        print(
            "tokenmill: llama-cpp-python was built with GGML_LLAMAFILE=ON, which makes outputs "
            "depend on batching. Reinstall it built with CMAKE_ARGS=-DGGML_LLAMAFILE=OFF "
            "(make install does this).",
            file=sys.stderr,
        )
        return 1
    print("tokenmill: llama.cpp build OK (batch-invariant kernels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
