"""Which CPU kernels llama.cpp runs: the fast ones (the default) or batch-invariant ones.

The pinned llama-cpp-python wheel is llama.cpp's stock build, llamafile's tinyBLAS included:
the fastest matmuls it has here, but a sequence's logits then depend on what shares its step
(tinyBLAS takes a matmul once it has several rows, with another rounding than ggml's own
dot products). ``--deterministic`` needs the other kernels, so ``make install`` also builds
llama.cpp's CPU backend alone (``libggml-cpu``, under a minute) from the same sources without
tinyBLAS, and ``install`` below lays out a second library directory beside the wheel's: the
wheel's own libraries with that one replaced. llama-cpp-python loads its libraries from
``LLAMA_CPP_LIB_PATH`` when set, and each of them finds its neighbours through
``RUNPATH=$ORIGIN``, so pointing that variable at the second directory before ``llama_cpp``
is first imported switches the whole process to the invariant kernels. The choice is made
once per process, at start-up; ``runner/check_build.py`` checks what each choice loads.

Usage: ``python -m tokenmill.runner.kernels install LIBGGML_CPU`` (the Makefile runs it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

from tokenmill.config import Kernels

ENV = "LLAMA_CPP_LIB_PATH"
_CPU_LIB = "libggml-cpu.so"


def wheel_lib_dir() -> Path:
    """The wheel's own library directory (``llama_cpp/lib``), found without importing it."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise RuntimeError("llama-cpp-python is not installed (run make install)")
    return Path(spec.origin).parent / "lib"


def deterministic_dir() -> Path:
    """Where ``install`` puts the batch-invariant library directory: inside the venv, next to
    the wheel it was assembled from, so a reinstalled wheel never meets stale kernels."""
    return Path(sys.prefix) / "lib" / "tokenmill-kernels" / "deterministic"


def select(kernels: Kernels) -> None:
    """Make the next ``import llama_cpp`` load ``kernels``; call before anything imports it."""
    if "llama_cpp" in sys.modules:
        loaded = os.environ.get(ENV)
        wanted = str(deterministic_dir()) if kernels == "deterministic" else None
        if loaded != wanted:
            raise RuntimeError(f"llama_cpp was imported before the {kernels} kernels were chosen")
        return
    if kernels == "fast":
        os.environ.pop(ENV, None)
        return
    lib_dir = deterministic_dir()
    if not (lib_dir / f"{_CPU_LIB}.0").exists():
        raise RuntimeError(
            f"--deterministic needs the batch-invariant CPU kernels in {lib_dir}; "
            "run make install to build them"
        )
    os.environ[ENV] = str(lib_dir)


def install(cpu_lib: Path) -> Path:
    """Lay out the deterministic library directory: the wheel's libraries, with ``cpu_lib``
    (a ``libggml-cpu.so`` built from the same sources without tinyBLAS) in place of its own."""
    src, dst = wheel_lib_dir(), deterministic_dir()
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    # Each library under its soname (``libX.so.0``, what the others link), and its plain
    # name (what llama-cpp-python opens) as a link to it.
    for item in src.glob("*.so.0"):
        source = cpu_lib if item.name.startswith(_CPU_LIB) else item
        shutil.copy2(source, dst / item.name, follow_symlinks=True)
        (dst / item.name.removesuffix(".0")).symlink_to(item.name)
    return dst


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "install":
        print(f"tokenmill: deterministic kernels in {install(Path(argv[1]))}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
