#!/usr/bin/env bash
# The whole test suite: unit tests, BPF_PROG_RUN tests and the privileged lab tests.
# Run as root on Debian. Under CI=true a privileged test that cannot run fails.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

if [ "$(id -u)" != 0 ]; then
  echo "warning: not root: privileged tests will be skipped (and fail under CI=true)" >&2
fi

echo "==> building"
cargo build --workspace --bins --quiet

echo "==> testing"
if cargo nextest --version >/dev/null 2>&1; then
  # Each lab test builds its own lab; two at a time suit a small machine.
  cargo nextest run --workspace --test-threads 2 --no-fail-fast
else
  cargo test --workspace --no-fail-fast -- --test-threads 2
fi
