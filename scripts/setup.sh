#!/usr/bin/env bash
# Installs the build dependencies from Debian/Ubuntu packages when they are missing.
set -euo pipefail
pkgs=(build-essential cmake ninja-build ccache pkg-config git
      nlohmann-json3-dev libcli11-dev libpcre2-dev libopenblas-dev liblapacke-dev libssl-dev
      libgtest-dev libgmock-dev libbenchmark-dev libcpp-httplib-dev prometheus-cpp-dev
      python3-jinja2  # the reference renderer of tests/test_chat_template.cpp
      clang libclang-rt-14-dev)  # clang + its libFuzzer runtime: scripts/fuzz.sh
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The official openai client from the npm registry, for Serve.OfficialOpenAiNodeClient (which is
# skipped, saying why, when node, npm or the registry is not there).
npm_dir="$(cd "$(dirname "$0")/.." && pwd)/build/npm"
if command -v npm >/dev/null 2>&1 && [ ! -f "$npm_dir/node_modules/openai/package.json" ]; then
  mkdir -p "$npm_dir"
  timeout 180 npm install --prefix "$npm_dir" --no-audit --no-fund --silent openai@6.49.0 >/dev/null 2>&1 ||
    echo "setup: could not install the npm openai client (Serve.OfficialOpenAiNodeClient will be skipped)" >&2
fi
