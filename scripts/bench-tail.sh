#!/usr/bin/env bash
# The tail figures of the README (issue "busy until the last byte"): one
# stream against read-all and iter at N = 2, 4, 8, 16 workers, on a 256 MiB
# and a 1 GiB object behind nginx laid out like AIStore whose target serves
# each request at most 100 MB/s (scripts/nginx-ais.sh, limited gateway);
# and, in the same rounds, what the rig gives N curl streams that store
# nothing (each 1/N of the object, and each the whole object): the
# ceiling of this machine and server for N streams. Every configuration
# runs once per round, rounds alternate, medians shown (scripts/bench_tail.py);
# every round's figures go to stderr and target/tail.json.
#
#   scripts/bench-tail.sh [ROUNDS [WORKERS]]   # default 5 and 2,4,8,16
#
# Needs: nginx and curl (installed with apt when missing; root or sudo), python3.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
workers=${2:-2,4,8,16}
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release -q --features cli,dcp --bin shmfetch-bench
data=$(mktemp -d /var/tmp/shmfetch-tail.XXXXXX)
trap 'kill $(cat "$data/run/nginx.pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$data"' EXIT
mkdir -p "$data/v1/objects/bench"
head -c $((256 << 20)) /dev/urandom > "$data/v1/objects/bench/obj256m"
head -c $((1 << 30)) /dev/urandom > "$data/v1/objects/bench/obj1g"
cat "$data"/v1/objects/bench/* > /dev/null   # page cache
gw=52180 lgw=52190
scripts/nginx-ais.sh "$data" "$gw" "$lgw" >/dev/null
sleep 0.5
echo "# $(date -u '+%F %H:%M') UTC, $(nproc) cores, $(uname -r), nginx limit_rate 100m per request, $(git rev-parse --short HEAD)"
python3 scripts/bench_tail.py --endpoint "http://127.0.0.1:$lgw" --rounds "$rounds" --ns "$workers" \
  --objects "obj256m:$((256 << 20)),obj1g:$((1 << 30))" --out target/tail.json
