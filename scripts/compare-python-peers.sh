#!/usr/bin/env bash
# Side-by-side, from Python, in one run (README "From Python and PyTorch",
# "Peers"): 
#  1. DCP loads of a 1.1 GiB checkpoint (saved once here by torch's own
#     FileSystemWriter: 220 tensors of mixed sizes and dtypes in 4 files)
#     from nginx as an unsigned path-style S3 endpoint, unlimited and
#     per-stream limited (limit_rate 100m, sendfile_max_chunk 512k): the S3
#     connector for PyTorch 1.5.0's S3StorageReader (dcp_optimized and
#     sequential readers) vs shmfetch.dcp.StorageReader (dcp_optimized, N
#     workers); a full load and a 10% partial load (every 10th tensor).
#  2. The AIStore Python SDK 2.0.0's obj.get_reader(num_workers=N).read_all()
#     vs shmfetch.ParallelReader(..., workers=N).read_all() of a 1 GiB object
#     on the nginx AIStore rig (scripts/nginx-ais.sh), N = 2, 4, 8, 16 (the SDK refuses 1).
# Every measurement runs in a fresh Python process, rounds alternate between
# tools, the figures are medians; round 1 checks every loaded tensor (sha256)
# and every buffer against the source.
#
#   scripts/compare-python-peers.sh [ROUNDS]   # default 3; results also in target/python-peers.json
#
# Uses the test command's venv (target/py-venv: torch, s3torchconnector) and
# adds aistore==2.0.0 to it; builds the extension with maturin develop --release.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
N=${N:-8}
PATH=$PATH:/usr/sbin
venv=target/py-venv
if [ ! -x "$venv/bin/maturin" ]; then
  echo "run ./scripts/test.sh once first (it makes $venv)"; exit 2
fi
"$venv/bin/python" -c 'import aistore' 2>/dev/null || "$venv/bin/pip" install -q aistore==2.0.0
( cd python && VIRTUAL_ENV="$PWD/../$venv" PATH="$PWD/../$venv/bin:$PATH" \
    CARGO_TARGET_DIR="$PWD/../target" maturin develop --release -q )

data=$(mktemp -d /var/tmp/shmfetch-pypeers.XXXXXX)
cleanup() {
  kill "$(cat "$data/s3run/nginx.pid" 2>/dev/null)" 2>/dev/null || true
  kill "$(cat "$data/run/nginx.pid" 2>/dev/null)" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
chmod 755 "$data"
mkdir -p "$data/bench" "$data/v1/objects/bench"
echo "== saving the checkpoint and generating a 1 GiB object in $data"
"$venv/bin/python" scripts/compare_python_peers.py make-checkpoint "$data/bench/ckpt"
head -c 1073741824 /dev/urandom > "$data/v1/objects/bench/obj1g"
cat "$data"/bench/ckpt/* "$data/v1/objects/bench/obj1g" > /dev/null   # page cache

port=52280 lport=52290
scripts/nginx-s3.sh "$data" "$port" "$lport"
gw=52380 lgw=52390
scripts/nginx-ais.sh "$data" "$gw" "$lgw" >/dev/null
sleep 0.5
"$venv/bin/python" scripts/compare_python_peers.py compare \
  --s3 "http://127.0.0.1:$port" --s3-limited "http://127.0.0.1:$lport" \
  --ais "http://127.0.0.1:$gw" --ckpt "$data/bench/ckpt" --object "$data/v1/objects/bench/obj1g" \
  --rounds "$rounds" --n "$N" --out target/python-peers.json
