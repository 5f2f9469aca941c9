#!/usr/bin/env bash
# The project's test command (README "Tests"); CI runs exactly this.
# Installs what the tests need (nginx from Debian's packages), checks
# formatting and lints, runs every test, then checks that nothing leaked:
# no shmfetch segment in /dev/shm, no worker process left running.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "== installing nginx (needed by the integration tests)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx-light >/dev/null 2>&1 \
    || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx
fi

# The network-fault tests (tests/it/netem.rs) need ip and tc (iproute2)
# and iptables in the test's own network namespace.
missing=""
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing="$missing iproute2"
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || missing="$missing iptables"
if [ -n "$missing" ]; then
  echo "== installing$missing (needed by the network-fault tests)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets --all-features -- -D warnings"
cargo clippy --all-targets --all-features -- -D warnings
echo "== the library alone: cargo build --no-default-features"
cargo build --no-default-features
echo "== RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps --all-features"
RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps --all-features
echo "== cargo test"
before=$(ls -A /dev/shm | grep -c 'shmfetch-' || true)
cargo test --all-targets
cargo test --doc --all-features

echo "== leak check"
left=$(ls -A /dev/shm | grep 'shmfetch-' || true)
if [ -n "$left" ] && [ "$(echo "$left" | wc -l)" -gt "$before" ]; then
  echo "FAIL: segments left in /dev/shm:"; echo "$left"; exit 1
fi
procs=$(ps -eo pid,comm | awk '$2 == "shmfetch-wrk" {print $1}')
if [ -n "$procs" ]; then
  echo "FAIL: worker processes left running: $procs"; exit 1
fi
echo "no leaked segments or worker processes"
