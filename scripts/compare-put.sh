#!/usr/bin/env bash
# Upload throughput, same run, same server: `shmfetch put` with N workers
# against `aws s3 cp` (PyPI awscli: multipart, 10 threads by default), both
# storing the same file in the same s3s-fs server on this machine,
# alternating, medians.
#
#   scripts/compare-put.sh [SIZE_MIB=1024] [RUNS=3] [WORKERS=8]
#
# Installs awscli into target/awscli-venv (once) and builds shmfetch in
# release mode; s3s-fs comes from scripts/test.sh's install.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
RUNS=${2:-3}
WORKERS=${3:-8}
AWSCLI_VERSION=1.46.3

venv=target/awscli-venv
if [ ! -x "$venv/bin/aws" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "awscli==$AWSCLI_VERSION"
fi
cargo build -q --release --bin shmfetch
s3s=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
[ -x "$s3s" ] || { echo "s3s-fs missing: run ./scripts/test.sh once (it installs it)" >&2; exit 1; }

work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir "$work/root" "$work/root/bench"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$s3s" --host 127.0.0.1 --port "$port" --access-key AKIDBENCH --secret-key secretbench "$work/root" >"$work/s3s.log" 2>&1 &
pid=$!
export AWS_ACCESS_KEY_ID=AKIDBENCH AWS_SECRET_ACCESS_KEY=secretbench AWS_REGION=us-east-1
ep=http://127.0.0.1:$port
for _ in $(seq 50); do curl -s -o /dev/null "$ep" && break; sleep 0.1; done
head -c $((SIZE_MIB << 20)) /dev/urandom >"$work/src.bin"
want=$(sha256sum <"$work/src.bin" | cut -d' ' -f1)

ms() { python3 -c 'import time; print(int(time.monotonic()*1000))'; }
aws_t=() shm_t=()
for i in $(seq "$RUNS"); do
  t0=$(ms); "$venv/bin/aws" --endpoint-url "$ep" s3 cp --only-show-errors "$work/src.bin" "s3://bench/aws-$i"; t1=$(ms)
  aws_t+=($((t1 - t0)))
  got=$(sha256sum <"$work/root/bench/aws-$i" | cut -d' ' -f1); [ "$got" = "$want" ] || { echo "aws s3 cp stored other bytes" >&2; exit 1; }
  rm -f "$work/root/bench/aws-$i"
  t0=$(ms); target/release/shmfetch -q put "$work/src.bin" "s3://bench/shm-$i" --endpoint-url "$ep" -w "$WORKERS"; t1=$(ms)
  shm_t+=($((t1 - t0)))
  got=$(sha256sum <"$work/root/bench/shm-$i" | cut -d' ' -f1); [ "$got" = "$want" ] || { echo "shmfetch put stored other bytes" >&2; exit 1; }
  rm -f "$work/root/bench/shm-$i"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
a=$(median "${aws_t[@]}"); s=$(median "${shm_t[@]}")
echo "# $(date -u +%F) $(nproc) cores, s3s-fs on 127.0.0.1, ${SIZE_MIB} MiB file, $RUNS runs alternating, median (sha256 of every stored object checked)"
printf '%-34s %8s %8s %7s\n' tool ms MiB/s ratio
printf '%-34s %8d %8.0f %6.2fx\n' "aws s3 cp (awscli $AWSCLI_VERSION)" "$a" "$(echo "$SIZE_MIB*1000/$a" | bc -l)" 1
printf '%-34s %8d %8.0f %6.2fx\n' "shmfetch put -w $WORKERS" "$s" "$(echo "$SIZE_MIB*1000/$s" | bc -l)" "$(echo "$a/$s" | bc -l)"
