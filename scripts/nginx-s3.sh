#!/usr/bin/env bash
# Starts nginx on loopback as an unsigned, path-style S3 endpoint: GET/HEAD
# /<bucket>/<key> serves DIR/<bucket>/<key> with Range support (sendfile),
# on PORT; with LIMITED_PORT, the same files at most 100 MB/s per request
# there (limit_rate 100m, sendfile_max_chunk 512k: like one disk per
# stream). Its pid file and logs are in DIR/s3run (scripts/nginx-ais.sh
# uses DIR/run, so both can serve one DIR).
#
#   scripts/nginx-s3.sh DIR PORT [LIMITED_PORT]
#   scripts/nginx-s3.sh stop DIR
set -euo pipefail
PATH=$PATH:/usr/sbin
if [ "${1:-}" = stop ]; then
  kill "$(cat "$2/s3run/nginx.pid")" && echo "stopped"; exit 0
fi
dir=$(realpath "${1:?usage: $0 DIR PORT [LIMITED_PORT]}")
port=${2:?usage: $0 DIR PORT [LIMITED_PORT]}
lport=${3:-}
run=$dir/s3run
mkdir -p "$run/tmp"
chmod 755 "$dir"   # nginx workers do not run as root
limited=""
if [ -n "$lport" ]; then
  limited="server { listen 127.0.0.1:$lport; root $dir; limit_rate 100m; sendfile_max_chunk 512k; location / { } }"
fi
cat > "$run/nginx.conf" <<CONF
daemon on;
worker_processes 2;
pid $run/nginx.pid;
error_log $run/error.log;
events { worker_connections 1024; }
http {
  access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
  client_body_temp_path $run/tmp/body; proxy_temp_path $run/tmp/proxy;
  fastcgi_temp_path $run/tmp/fcgi; uwsgi_temp_path $run/tmp/uwsgi; scgi_temp_path $run/tmp/scgi;
  default_type application/octet-stream;
  server { listen 127.0.0.1:$port; root $dir; location / { } }
  $limited
}
CONF
nginx -p "$run" -c "$run/nginx.conf" -e "$run/error.log"
