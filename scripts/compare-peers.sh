#!/usr/bin/env bash
# Side-by-side throughput of shmfetch and its peers, in one run (README
# "Performance"). Starts nginx on loopback laid out like AIStore
# (scripts/nginx-ais.sh: a gateway redirecting to targets, sendfile on) with
# a 1 GiB random object, plus a per-stream-limited gateway for the same files
# (limit_rate 100m, sendfile_max_chunk 512k: like one disk per request),
# then measures in alternating rounds and prints medians and ratios:
#   curl -o /dev/null, curl -o /dev/shm/FILE, aria2c -x N -s N into /dev/shm,
#   the AIStore Python SDK 2.0.0 (read_all and iteration, num_workers=N),
#   shmfetch read-all and iter (same N), and 64 x 4 MiB objects per call;
#   the loopback ceiling: 8 curl ranges at once into /dev/null, and into
#   files in /dev/shm (the bytes stored in memory, as read-all stores them).
#
#   scripts/compare-peers.sh [ROUNDS]        # default 3; results also in target/peers.json
#
# Needs: root for apt (nginx, aria2, curl), Python 3 with venv (PyPI reachable).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v aria2c >/dev/null 2>&1 || need+=(aria2)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
venv=target/peers-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q aistore==2.0.0
fi
cargo build --release -q --bin shmfetch-bench --bin shmfetch

data=$(mktemp -d /var/tmp/shmfetch-peers.XXXXXX)
trap 'kill $(cat "$data/run/nginx.pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$data" /dev/shm/peer-*' EXIT
mkdir -p "$data/v1/objects/bench"
echo "== generating a 1 GiB random object and 64 x 4 MiB objects in $data"
head -c 1073741824 /dev/urandom > "$data/v1/objects/bench/obj1g"
for i in $(seq 0 63); do head -c 4194304 /dev/urandom > "$data/v1/objects/bench/small-$i"; done
cat "$data/v1/objects/bench/obj1g" > /dev/null   # page cache

gw=52080 lgw=52090
scripts/nginx-ais.sh "$data" "$gw" "$lgw"
sleep 0.5
"$venv/bin/python" scripts/compare_peers.py --gateway "http://127.0.0.1:$gw" --limited "http://127.0.0.1:$lgw" \
  --rounds "$rounds" --python "$venv/bin/python" --out target/peers.json
