#!/usr/bin/env bash
# Peers for the benchmarks; deliberately not dependencies of the package.
# llama-cpp-python compiles llama.cpp from source (about 10 minutes on 2 cores).
set -euo pipefail
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}" pip install "llama-cpp-python==0.3.36" "transformers>=4.42"
