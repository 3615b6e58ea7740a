#!/usr/bin/env bash
# Build the benchmark peer, llama.cpp's llama-server, from the llama.cpp sources inside the
# pinned llama-cpp-python sdist (the same kernels tokenmill runs; nothing else is downloaded).
# Result: benchmarks/.cache/llama-server. About 15 minutes on 2 cores; skipped when present.
set -euo pipefail
cd "$(dirname "$0")"
VERSION=$(grep -o 'llama-cpp-python==[0-9.]*' ../pyproject.toml | cut -d= -f3)
CACHE=.cache
mkdir -p "$CACHE"
if [ -x "$CACHE/llama-server" ]; then
  echo "$CACHE/llama-server already built"; exit 0
fi
PIP=${PIP:-../.venv/bin/pip}
[ -x "$PIP" ] || PIP="python3 -m pip"
$PIP download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$CACHE"
tar -xzf "$CACHE/llama_cpp_python-$VERSION.tar.gz" -C "$CACHE"
SRC="$CACHE/llama_cpp_python-$VERSION/vendor/llama.cpp"
# As tokenmill's own build (Makefile): no AMX, whose matmul segfaulted on a Xeon that has it.
if [ "$(uname -m)" = x86_64 ]; then
  export CFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16 ${CFLAGS:-}"
  export CXXFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16 ${CXXFLAGS:-}"
fi
cmake -S "$SRC" -B "$CACHE/build" -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF
cmake --build "$CACHE/build" --target llama-server -j"$(nproc)"
cp "$CACHE/build/bin/llama-server" "$CACHE/llama-server"
echo "built $CACHE/llama-server"
