#!/usr/bin/env bash
# Build llama.cpp's CPU backend alone (libggml-cpu) without llamafile's tinyBLAS, from the
# sources in the pinned llama-cpp-python sdist: the batch-invariant kernels that
# `tokenmill serve --deterministic` runs (src/tokenmill/runner/kernels.py). The rest of
# llama.cpp comes from the wheel; this takes under a minute on 2 cores, skipped when OUT exists.
# Usage: scripts/build_cpu_kernels.sh VERSION OUT
set -euo pipefail
version=$1
out=$2
if [ -f "$out" ]; then
  echo "$out already built"; exit 0
fi
pip=${PIP:-python3 -m pip}
work=$(mktemp -d /tmp/tokenmill-kernels.XXXXXX)
trap 'rm -rf "$work"' EXIT
$pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work"
tar -xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work"
# The wheel's configuration (llama-cpp-python's CMakeLists on Linux: shared libraries, the
# defaults for everything else, native CPU flags and OpenMP among them) but for tinyBLAS.
cmake -S "$work/llama_cpp_python-$version/vendor/llama.cpp" -B "$work/build" \
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_LLAMAFILE=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
  -DLLAMA_BUILD_SERVER=OFF > "$work/configure.log"
cmake --build "$work/build" --target ggml-cpu -j"$(nproc)"
lib=$(find "$work/build" -name 'libggml-cpu.so.0' | head -1)
mkdir -p "$(dirname "$out")"
cp -L "$lib" "$out.tmp" && mv "$out.tmp" "$out"
echo "built $out"
