#!/usr/bin/env bash
# Packs `gptq serve` for the GPU machine into .device-serve/ (git-ignored; name it in `carry`
# instead of .device): the dynamic build of build/ (CUDA on, cpp-httplib's server: Debian ships that
# library only as a .so, so the static GPU build of gpu_pack.sh has no server) with the Debian
# libraries the GPU machine lacks (cpp-httplib, brotli, PCRE2, OpenBLAS and its Fortran runtime),
# llama-gutenberg-22m, and scripts/serve_load.py. Then one device call:
#   bash scripts/device/gpu_serve.sh        (carry .device-serve)
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD_DIR=${BUILD_DIR:-build} scripts/build.sh -DGPTQ_CUDA=ON >/dev/null
b=${BUILD_DIR:-build}
rm -rf .device-serve
mkdir -p .device-serve/lib
strip -o .device-serve/gptq "$b/gptq"
# Every library outside glibc, the C++/GCC runtime, OpenSSL, zlib and CUDA (all on the GPU machine).
ldd "$b/gptq" | awk '$3 ~ /^\// {print $3}' | while read -r so; do
  case "$(basename "$so")" in
    libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|libstdc++.so*|libgcc_s.so*|libssl.so*|libcrypto.so*|libz.so*) ;;
    libcu*|libnv*) ;;
    *) cp -L "$so" .device-serve/lib/ ;;
  esac
done
tar -C .device-serve -cf - gptq lib | xz -T0 -6 >.device-serve/serve.tar.xz
rm -rf .device-serve/gptq .device-serve/lib
tar -C ../shared -cf - models/llama-gutenberg-22m | xz -T0 -6 >.device-serve/model.tar.xz
cp scripts/serve_load.py .device-serve/
du -sh .device-serve
