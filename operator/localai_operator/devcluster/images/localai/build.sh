#!/bin/bash
# Steps of the LocalAI image build that run inside the Debian build base (`buildah run`, chroot isolation), with
# LocalAI's source tree at /src, this directory at /recipe, and the persistent directories /build (CMake's, kept
# between runs so an interrupted or repeated build goes on where it stopped) and /out (what the image takes).
#   build.sh protos   the Go gRPC stubs (pkg/grpc/proto/*.pb.go, not committed upstream) with Debian's protoc and the
#                     protoc-gen-go / protoc-gen-go-grpc in /tools
#   build.sh backend  llama.cpp's grpc-server, AVX2 variant only, as LocalAI's `make llama-cpp-avx2` configures it
#                     (backend/cpp/llama-cpp/Makefile), then the backend directory /out/llama-cpp: upstream's
#                     run.sh, the binary as llama-cpp-fallback (what run.sh starts when no llama-cpp-cpu-all is
#                     there), and lib/ with the loader and every library it links (run.sh starts it through
#                     lib/ld.so), as upstream's backend images carry them
set -euo pipefail

case "$1" in
protos)
  mkdir -p /src/pkg/grpc/proto
  PATH=/tools:$PATH protoc --experimental_allow_proto3_optional -I/src/backend/ \
    --go_out=/src/pkg/grpc/proto/ --go_opt=paths=source_relative \
    --go-grpc_out=/src/pkg/grpc/proto/ --go-grpc_opt=paths=source_relative \
    /src/backend/backend.proto
  ;;
backend)
  cd /src/backend/cpp/llama-cpp
  if [[ ! -f llama.cpp/tools/grpc-server/llama_compat.h ]]; then
    mkdir -p llama.cpp/tools/grpc-server
    bash prepare.sh
  fi
  # CMAKE_ARGS of backend/cpp/llama-cpp/Makefile (NATIVE=false, SHARED_LIBS=OFF) and of its llama-cpp-avx2 target.
  # Debian's protobuf has no CMake package config: /recipe/protobuf-config.cmake wraps CMake's FindProtobuf.
  cmake -S llama.cpp -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DLLAMA_OPENSSL=OFF \
    -DGGML_AVX=on -DGGML_AVX2=on -DGGML_AVX512=off -DGGML_FMA=on -DGGML_F16C=on \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DProtobuf_DIR=/recipe >/build/configure.log
  ninja -C /build -j "${JOBS:-2}" grpc-server
  rm -rf /out/llama-cpp
  mkdir -p /out/llama-cpp/lib
  cp run.sh /out/llama-cpp/run.sh
  strip -o /out/llama-cpp/llama-cpp-fallback /build/bin/grpc-server
  source /src/scripts/build/package-system-libs.sh /out/llama-cpp/lib "" >/dev/null
  # Everything else it links (gRPC, protobuf, abseil, OpenSSL, c-ares, RE2, zlib...), from Debian's packages.
  ldd /build/bin/grpc-server | awk '/=> \// {print $3}' | while read -r lib; do
    name=$(basename "$lib")
    [[ -e /out/llama-cpp/lib/$name ]] || cp -L "$lib" "/out/llama-cpp/lib/$name"
  done
  chmod -R a+rX /out/llama-cpp
  ;;
*)
  echo "usage: build.sh protos|backend" >&2
  exit 2
  ;;
esac
