#!/usr/bin/env bash
# Installs what building, running and testing Sluice need on Debian, when missing.
# Safe to run repeatedly; runs `apt-get update` only when something is to be installed.
set -euo pipefail

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# command -> Debian package
for pair in clang:clang llvm-strip:llvm ip:iproute2 iperf3:iperf3 iptables:iptables nft:nftables ping:iputils-ping \
            nc:netcat-openbsd ps:procps curl:curl prometheus:prometheus sockperf:sockperf \
            etcd:etcd-server protoc:protobuf-compiler containerd:containerd wrk:wrk; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  have_cmd "$cmd" || need+=("$pkg")
done
# libprotobuf-dev: protoc's well-known types (google/protobuf/*.proto), which etcd-client's
# build imports; protobuf-compiler alone, without recommends, lacks them.
# busybox-static: the containerd test builds its container image from the static busybox.
for pkg in libclang-dev libbpf-dev libprotobuf-dev linux-libc-dev containernetworking-plugins fonts-dejavu-core busybox-static; do
  have_pkg "$pkg" || need+=("$pkg")
done

if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! have_cmd cargo; then
  echo "error: cargo (Rust stable) is required and was not found on PATH" >&2
  exit 1
fi
