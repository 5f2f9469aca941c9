#!/usr/bin/env bash
# Side-by-side throughput of shmfetch and the S3 peers, in one run (README
# "Performance", "Side by side with the S3 peers"). Starts nginx on loopback as an unsigned,
# path-style S3 endpoint (GET/HEAD /bench/obj1g -> a 1 GiB random file, Range
# support) twice: unlimited (sendfile on) and limited (limit_rate 100m,
# sendfile_max_chunk 512k per request, like scripts/nginx-ais.sh's limited
# gateway), then measures in alternating rounds and prints medians (MiB/s)
# and ratios:
#   curl -o /dev/null (one stream), aws s3 cp --no-sign-request (awscli,
#   default 10 and N concurrent requests) into /dev/shm, boto3
#   download_fileobj(TransferConfig(max_concurrency=N)) into BytesIO, the S3
#   connector for PyTorch 1.5.0 (S3Reader read() and readinto()), and
#   shmfetch read-all / iter of s3://bench/obj1g with N workers.
# Round 1 checks every peer's bytes against the source's sha256, later
# rounds their size.
#
#   scripts/compare-s3-peers.sh [ROUNDS]     # default 3; results also in target/s3-peers.json
#   N=4 scripts/compare-s3-peers.sh          # another N (default 8; awscli also runs at its default 10)
#
# Installs once: nginx (apt) and the venv target/s3-peers-venv with pinned
# awscli, boto3, s3torchconnector and the torch it needs (PyPI has no CPU-only
# torch for Linux x86_64, so this pulls the CUDA build and its nvidia-*
# wheels: about 2.9 GB to download, 5.6 GB installed; nothing here uses a
# GPU), and py-spy for profiles.
# Needs root for apt, Python 3 with venv, PyPI reachable.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
N=${N:-8}
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
PATH=$PATH:/usr/sbin
venv=target/s3-peers-venv
pins=(awscli==1.46.3 boto3==1.44.5 s3torchconnector==1.5.0 torch==2.15.0 py-spy==0.4.3)
if [ ! -f "$venv/.pins" ] || [ "$(cat "$venv/.pins")" != "${pins[*]}" ]; then
  echo "== installing ${pins[*]} into $venv (about 2.9 GB to download, once)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "${pins[@]}"
  echo "${pins[*]}" > "$venv/.pins"
fi
cargo build --release -q --bin shmfetch-bench --bin shmfetch

data=$(mktemp -d /var/tmp/shmfetch-s3peers.XXXXXX)
cleanup() {
  kill "$(cat "$data/s3run/nginx.pid" 2>/dev/null)" 2>/dev/null || true
  rm -rf "$data" /dev/shm/peer-s3-*
}
trap cleanup EXIT
trap 'exit 130' INT TERM
chmod 755 "$data"   # nginx workers do not run as root
mkdir -p "$data/bench"
echo "== generating a 1 GiB random object in $data"
head -c 1073741824 /dev/urandom > "$data/bench/obj1g"
sha=$(sha256sum "$data/bench/obj1g" | cut -d' ' -f1)   # also puts it in the page cache

port=52180 lport=52190
scripts/nginx-s3.sh "$data" "$port" "$lport"
sleep 0.5
"$venv/bin/python" scripts/compare_s3_peers.py --unlimited "http://127.0.0.1:$port" --limited "http://127.0.0.1:$lport" \
  --rounds "$rounds" --n "$N" --python "$venv/bin/python" --sha256 "$sha" --out target/s3-peers.json
