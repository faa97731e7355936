#!/usr/bin/env bash
# System packages the build and the local stack need (Debian). Idempotent: installs only what
# is missing. rdkafka builds its bundled librdkafka with cmake; rocksdb needs libclang.
set -euo pipefail
need=()
for pkg in build-essential cmake pkg-config clang libclang-dev libssl-dev libsasl2-dev zlib1g-dev libzstd-dev \
           libcurl4-openssl-dev openssl curl time python3 maven openjdk-17-jdk-headless lua5.1; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "[deps] installing: ${need[*]}" >&2
  SUDO=; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "[deps] Rust (cargo) is required: https://rustup.rs" >&2; exit 1; }
command -v go >/dev/null || { echo "[deps] Go is required to build the local stack's servers" >&2; exit 1; }
