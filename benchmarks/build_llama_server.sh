#!/usr/bin/env bash
# Build llama.cpp's `llama-server` (the peer of benchmarks/keystroke_replay.py) from the
# llama.cpp sources vendored in the llama-cpp-python sdist, so the peer is the same llama.cpp
# that benchmarks/speed.py measures. Nothing lands in the repository: sources and binary live
# in a cache directory. Slow on purpose (nice, one job): other work shares the machine.
#
#     bash benchmarks/build_llama_server.sh          # prints the path of llama-server
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${CODEGEMMA_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/codegemma-bench}"
SRC="$CACHE/llama_cpp_python-$VERSION"
BUILD="$CACHE/llama-server-$VERSION"
BIN="$BUILD/bin/llama-server"
if [[ -x "$BIN" ]]; then
    echo "$BIN"
    exit 0
fi
mkdir -p "$CACHE"
if [[ ! -d "$SRC" ]]; then
    pip download --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$CACHE" >&2
    tar -xzf "$CACHE/llama_cpp_python-$VERSION.tar.gz" -C "$CACHE"
fi
nice -n 19 cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF >&2
nice -n 19 cmake --build "$BUILD" --target llama-server -j1 >&2
echo "$BIN"
