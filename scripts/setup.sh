#!/usr/bin/env bash
# Installs the build dependencies from Debian/Ubuntu packages when they are missing.
set -euo pipefail
pkgs=(build-essential cmake ninja-build ccache pkg-config git
      nlohmann-json3-dev libcli11-dev libpcre2-dev libopenblas-dev liblapacke-dev libssl-dev
      libgtest-dev libgmock-dev libbenchmark-dev libcpp-httplib-dev
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
