#!/usr/bin/env bash
# Packs the long fuzzing run for the device machine into DEVICE_DIR (default .device/fuzz,
# git-ignored; name it in `carry`): the fuzz targets of build-fuzz/ (scripts/fuzz.sh builds them),
# the shared libraries they need that a bare Ubuntu lacks (OpenBLAS, PCRE2, OpenSSL; the sanitizer
# runtimes are linked in), the seeds, the corpora grown so far, the dictionaries, the saved crash
# inputs and the tokenizer files of ../shared that fuzz_tokenize reads, plus fuzz_long.sh.
# Then, on the device: bash DEVICE_DIR/fuzz_long.sh (see there).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${BUILD_DIR:-build-fuzz}
out=${DEVICE_DIR:-.device/fuzz}
shared=${GPTQ_SHARED:-$(cd .. && pwd)/shared}
BUILD_DIR=$build GPTQ_SHARED=$shared scripts/fuzz.sh --seeds-only
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib" "$stage/regressions"
for f in "$build"/fuzz_*; do
  [ -f "$f" ] && [ -x "$f" ] && cp "$f" "$stage/bin/"
done
# Everything but glibc and the C++ runtime, which every Linux has.
for f in "$stage"/bin/*; do ldd "$f"; done | awk '/=> \// {print $3}' | sort -u |
  grep -v -E '/(libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s)\.so' | xargs -r cp -L -t "$stage/lib"
cp -r "$build/seeds" "$build/dicts" "$stage/"
mkdir -p "$stage/corpus"
[ -d "$build/corpus" ] && cp -r "$build/corpus/." "$stage/corpus/"
[ -d fuzz/regressions ] && cp -r fuzz/regressions/. "$stage/regressions/"
for m in llama-gutenberg-22m bytebpe-gpt2-style bytebpe-llama3-style; do
  mkdir -p "$stage/shared/models/$m"
  cp "$shared/models/$m"/tokenizer*.json "$stage/shared/models/$m/"
done
rm -rf "$out"
mkdir -p "$out"
tar -C "$stage" -cf - . | xz -T2 -6 >"$out/payload.tar.xz"
cp scripts/device/fuzz_long.sh "$out/"
du -sh "$out"
