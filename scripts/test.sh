#!/usr/bin/env bash
# The project's test command (README "Tests"); CI runs exactly this.
# Installs what the tests need (nginx from Debian's packages; s3s-fs,
# boto3 and moto for the S3 tests; torch, numpy, pytest, maturin and the
# S3 connector for PyTorch for the Python package's tests), checks
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

# The S3 tests (tests/it/s3rig.rs): s3s-fs, a file-backed S3 server that
# checks SigV4, into ~/.cargo/bin; boto3 and moto's server in a venv under
# target/. Each only when missing (s3s-fs builds for 5-12 minutes once).
S3S_FS_VERSION=0.14.1
if ! command -v s3s-fs >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" ]; then
  echo "== installing s3s-fs $S3S_FS_VERSION (the S3 tests' SigV4-checking server; cargo install, once)"
  cargo install --locked "s3s-fs@$S3S_FS_VERSION" --features binary
fi
S3_VENV=target/s3-venv
S3_PINS="boto3==1.44.5 moto[server]==5.2.5"
if [ ! -x "$S3_VENV/bin/moto_server" ] || [ "$(cat "$S3_VENV/.pins" 2>/dev/null)" != "$S3_PINS" ]; then
  echo "== installing $S3_PINS into $S3_VENV (the S3 tests' client and second server)"
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
  fi
  rm -rf "$S3_VENV"
  python3 -m venv "$S3_VENV"
  # shellcheck disable=SC2086 # the pins are separate words
  "$S3_VENV/bin/pip" install -q $S3_PINS
  echo "$S3_PINS" >"$S3_VENV/.pins"
fi

# The Python package's tests (python/tests): a venv with torch (CPU use of
# the default wheel), numpy, pytest, maturin, and s3torchconnector for the
# interoperability tests. About 1.5 minutes of downloads, once.
PY_VENV=target/py-venv
PY_PINS="torch==2.15.0 numpy==2.4.6 pytest==9.2.0 maturin==1.16.0"
PY_NODEPS_PINS="s3torchconnector==1.5.0 s3torchconnectorclient==1.5.0 tenacity==9.2.1"
if [ ! -x "$PY_VENV/bin/maturin" ] || [ "$(cat "$PY_VENV/.pins" 2>/dev/null)" != "$PY_PINS $PY_NODEPS_PINS" ]; then
  echo "== installing $PY_PINS and $PY_NODEPS_PINS into $PY_VENV (the Python package's tests)"
  rm -rf "$PY_VENV"
  python3 -m venv "$PY_VENV"
  # shellcheck disable=SC2086 # the pins are separate words
  "$PY_VENV/bin/pip" install -q $PY_PINS
  # The connector without its dependencies: it would pull another torch.
  # shellcheck disable=SC2086
  "$PY_VENV/bin/pip" install -q --no-deps $PY_NODEPS_PINS
  echo "$PY_PINS $PY_NODEPS_PINS" >"$PY_VENV/.pins"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --workspace --all-targets --all-features -- -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== the library alone: cargo build --no-default-features"
RUSTFLAGS="${RUSTFLAGS:-} -Dwarnings" cargo build --no-default-features --target-dir target/no-default
# Found in review: the file system's S3 operations did not build without
# the s3 feature; the binaries without S3 must build, warning-free.
echo "== the binaries without S3: cargo build --no-default-features --features cli,dcp"
RUSTFLAGS="${RUSTFLAGS:-} -Dwarnings" cargo build --no-default-features --features cli,dcp --target-dir target/no-default
echo "== RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps --all-features"
RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps --all-features
echo "== cargo test"
before=$(ls -A /dev/shm | grep -c 'shmfetch-' || true)
cargo test --all-targets
cargo test --doc --all-features

echo "== the Python package: maturin develop --release, then pytest python/tests"
# The test server the Python tests start (examples/test_server.rs).
cargo build --example test_server --features test-support
( cd python && VIRTUAL_ENV="$PWD/../$PY_VENV" PATH="$PWD/../$PY_VENV/bin:$PATH" \
    CARGO_TARGET_DIR="$PWD/../target" maturin develop --release -q )
SHMFETCH_REQUIRE_INTEROP=1 "$PY_VENV/bin/python" -m pytest -q python/tests

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
