#!/usr/bin/env bash
# Build the peer: llama.cpp from the sources vendored in the llama-cpp-python sdist (one release
# for every benchmark), as shared libraries (which llama-cpp-python loads through
# LLAMA_CPP_LIB_PATH) and `llama-server`, for one instruction set:
#
#     bash benchmarks/build_llama_cpp.sh native   # this CPU (GGML_NATIVE=ON)
#     bash benchmarks/build_llama_cpp.sh avx2     # AVX2/FMA/F16C only (GGML_NATIVE=OFF, no AVX-512)
#
# Prints the build's bin/ directory: llama-server, libllama.so and the ggml libraries.
# Nothing lands in the repository. Slow on purpose (nice): other work shares the machine.
set -euo pipefail
ISA="${1:-native}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${CODEGEMMA_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/codegemma-bench}"
SRC="$CACHE/llama_cpp_python-$VERSION"
BUILD="$CACHE/llama.cpp-$VERSION-$ISA"
case "$ISA" in
    native) FLAGS=(-DGGML_NATIVE=ON) ;;
    avx2) FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
                 -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF) ;;
    *) echo "usage: $0 native|avx2" >&2; exit 2 ;;
esac
if [[ -x "$BUILD/bin/llama-server" && -e "$BUILD/bin/libllama.so" ]]; then
    echo "$BUILD/bin"
    exit 0
fi
mkdir -p "$CACHE"
if [[ ! -d "$SRC" ]]; then
    pip download --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$CACHE" >&2
    tar -xzf "$CACHE/llama_cpp_python-$VERSION.tar.gz" -C "$CACHE"
fi
nice -n 19 cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release "${FLAGS[@]}" \
    -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF >&2
nice -n 19 cmake --build "$BUILD" --target llama llama-server -j"${JOBS:-2}" >&2
echo "$BUILD/bin"
