#!/usr/bin/env bash
# The whole test suite: lints, unit tests, BPF_PROG_RUN tests and the privileged lab tests.
# Run as root on Debian. Under CI=true a privileged test that cannot run fails.
set -euo pipefail
cd "$(dirname "$0")/.."

# Lints first, so a lint failure costs seconds rather than a whole build and test run.
echo "==> lint: cargo fmt --check"
if ! cargo fmt --version >/dev/null 2>&1; then
  echo "error: rustfmt is missing; install it with 'rustup component add rustfmt'" >&2
  exit 1
fi
if ! cargo fmt --all --check; then
  echo "error: lint failed: the code above is not formatted as rustfmt.toml says; run 'cargo fmt --all' and commit the result" >&2
  exit 1
fi

bash scripts/install-deps.sh

echo "==> lint: cargo clippy --workspace --all-targets -- -D warnings"
if ! cargo clippy --version >/dev/null 2>&1; then
  echo "error: clippy is missing; install it with 'rustup component add clippy'" >&2
  exit 1
fi
if ! cargo clippy --workspace --all-targets --quiet -- -D warnings; then
  echo "error: lint failed: clippy reported the warnings above, and CI denies every one; fix them (or allow one where it is wrong, with the reason beside it)" >&2
  exit 1
fi

if [ "$(id -u)" != 0 ]; then
  echo "warning: not root: privileged tests will be skipped (and fail under CI=true)" >&2
fi

echo "==> building"
cargo build --workspace --bins --quiet

# Nothing may depend on this machine's sysctls: each test sets what it needs inside the network
# namespaces it makes. A new namespace copies the root namespace's IPv4 forwarding setting, so a
# test that forgot to turn it on passed wherever the host had it on and failed on a fresh machine
# (where it is off). The tests therefore run with forwarding off in the root namespace; the
# previous values, per interface, are put back however the run ends.
saved_forwarding=()
restore_forwarding() {
  local entry
  for entry in "${saved_forwarding[@]}"; do
    # An interface made and removed by the tests no longer has a file; skip it.
    [ -e "${entry%=*}" ] && echo "${entry##*=}" >"${entry%=*}" 2>/dev/null || true
  done
  saved_forwarding=()
}
if [ "$(id -u)" = 0 ]; then
  # `all` first: writing it sets every interface; the per-interface values are restored after it.
  for file in /proc/sys/net/ipv4/conf/all/forwarding /proc/sys/net/ipv6/conf/all/forwarding; do
    if [ -w "$file" ]; then saved_forwarding+=("$file=$(cat "$file")"); fi
  done
  for file in /proc/sys/net/ipv4/conf/*/forwarding /proc/sys/net/ipv6/conf/*/forwarding; do
    case "$file" in */conf/all/forwarding) continue ;; esac
    if [ -w "$file" ]; then saved_forwarding+=("$file=$(cat "$file")"); fi
  done
  trap restore_forwarding EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  for file in /proc/sys/net/ipv4/conf/all/forwarding /proc/sys/net/ipv6/conf/all/forwarding; do
    if [ -w "$file" ]; then echo 0 >"$file"; fi
  done
  echo "==> root namespace: net.ipv4.ip_forward=0 and net.ipv6.conf.all.forwarding=0 for the tests (restored afterwards)"
fi

echo "==> testing"
if cargo nextest --version >/dev/null 2>&1; then
  # Each lab test builds its own lab; two at a time suit a small machine.
  cargo nextest run --workspace --test-threads 2 --no-fail-fast
else
  cargo test --workspace --no-fail-fast -- --test-threads 2
fi
