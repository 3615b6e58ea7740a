"""Choosing llama.cpp's kernels (runner/kernels.py) without loading them: the library
directory ``install`` lays out, and what ``select`` tells llama-cpp-python."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tokenmill.runner import kernels

LIBS = ("libggml-base", "libggml-cpu", "libggml", "libllama", "libmtmd")


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A wheel's lib directory as pip installs it (real file, soname link, plain link) and an
    empty place for the deterministic one."""
    wheel, det = tmp_path / "wheel", tmp_path / "venv" / "deterministic"
    wheel.mkdir()
    for lib in LIBS:
        (wheel / f"{lib}.so.0.1.2").write_text(f"wheel {lib}")
        (wheel / f"{lib}.so.0").symlink_to(f"{lib}.so.0.1.2")
        (wheel / f"{lib}.so").symlink_to(f"{lib}.so.0")
    monkeypatch.setattr(kernels, "wheel_lib_dir", lambda: wheel)
    monkeypatch.setattr(kernels, "deterministic_dir", lambda: det)
    monkeypatch.delenv(kernels.ENV, raising=False)
    monkeypatch.delitem(sys.modules, "llama_cpp", raising=False)
    return wheel, det


def test_install_replaces_only_the_cpu_backend(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    _, det = dirs
    cpu = tmp_path / "built-libggml-cpu.so.0"
    cpu.write_text("invariant cpu")
    assert kernels.install(cpu) == det
    for lib in LIBS:
        soname = det / f"{lib}.so.0"
        assert soname.is_file() and not soname.is_symlink()  # a copy: the wheel may change
        assert (det / f"{lib}.so").resolve() == soname.resolve()
        expected = "invariant cpu" if lib == "libggml-cpu" else f"wheel {lib}"
        assert (det / f"{lib}.so").read_text() == expected
    kernels.install(cpu)  # again, over the old layout
    assert (det / "libggml-cpu.so").read_text() == "invariant cpu"


def test_select_points_llama_cpp_at_the_chosen_libraries(
    dirs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, det = dirs
    with pytest.raises(RuntimeError, match="make install"):
        kernels.select("deterministic")  # not installed yet
    cpu = tmp_path / "cpu.so"
    cpu.write_text("x")
    kernels.install(cpu)
    kernels.select("deterministic")
    assert kernels.os.environ[kernels.ENV] == str(det)
    kernels.select("fast")
    assert kernels.ENV not in kernels.os.environ  # the wheel's own libraries


def test_select_after_llama_cpp_loaded_must_agree(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", object())  # loaded with the wheel's kernels
    kernels.select("fast")  # what is loaded: fine
    with pytest.raises(RuntimeError, match="imported before"):
        kernels.select("deterministic")
