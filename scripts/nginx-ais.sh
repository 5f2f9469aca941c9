#!/usr/bin/env bash
# Starts nginx on loopback laid out like an AIStore cluster: a gateway that
# answers object GETs with 301 and HEADs with 307 to one of three targets,
# which serve DIR/v1/objects/<bucket>/<object> with Range support (sendfile),
# and serves the cluster map of those targets (GET /v1/daemon?what=smap,
# from DIR/run/smap.json) for direct-to-target reads.
# With LIMITED_PORT, also a second gateway there whose one target serves the
# same files at most 100 MB/s per request (limit_rate 100m,
# sendfile_max_chunk 512k: like one disk per stream).
#
#   scripts/nginx-ais.sh DIR [GATEWAY_PORT [LIMITED_PORT]]   # prints AIS_ENDPOINT=...
#   scripts/nginx-ais.sh stop DIR
#
# Put objects at DIR/v1/objects/<bucket>/<object>. With ACCESS_LOG=1 every
# server logs each request to DIR/run/access.log: time, request time,
# server port, status, method and URI, Range.
set -euo pipefail
if [ "${1:-}" = stop ]; then
  kill "$(cat "$2/run/nginx.pid")" && echo "stopped"; exit 0
fi
dir=$(realpath "${1:?usage: $0 DIR [GATEWAY_PORT [LIMITED_PORT]]}")
gw=${2:-51080}
lgw=${3:-}
t1=$((gw + 1)); t2=$((gw + 2)); t3=$((gw + 3))
mkdir -p "$dir/v1/objects" "$dir/run/tmp"
chmod 755 "$dir"   # nginx workers do not run as root
# The cluster maps, as AIStore's gateway answers them (enough for our
# placement and the Python SDK's): the gateway as proxy, the three targets;
# the limited gateway and its one target.
smap() { # FILE GATEWAY_PORT TARGET_PORT...
  local f=$1 gwp=$2 sep="" p; shift 2
  local proxy="{\"daemon_id\": \"p$gwp\", \"daemon_type\": \"proxy\", \"public_net\": {\"direct_url\": \"http://127.0.0.1:$gwp\"}, \"flags\": 0}"
  { printf '{"version": 1, "uuid": "nginx-rig", "proxy_si": %s, "pmap": {"p%s": %s}, "tmap": {' "$proxy" "$gwp" "$proxy"
    for p in "$@"; do
      printf '%s"t%s": {"daemon_id": "t%s", "daemon_type": "target", "public_net": {"direct_url": "http://127.0.0.1:%s"}, "flags": 0}' "$sep" "$p" "$p" "$p"
      sep=", "
    done
    printf '}}\n'; } > "$f"
}
smap "$dir/run/smap.json" "$gw" "$t1" "$t2" "$t3"
daemon="location = /v1/daemon { default_type application/json; alias $dir/run/smap.json; }"
log="access_log off;"
[ "${ACCESS_LOG:-0}" = 1 ] && log="access_log $dir/run/access.log t;"
limited=""
if [ -n "$lgw" ]; then
  limited="
  server { listen 127.0.0.1:$lgw;
    location = /v1/daemon { default_type application/json; alias $dir/run/smap-limited.json; }
    location /v1/objects/ {
      if (\$request_method = HEAD) { return 307 http://127.0.0.1:$((lgw + 1))\$request_uri; }
      return 301 http://127.0.0.1:$((lgw + 1))\$request_uri;
    }
  }
  server { listen 127.0.0.1:$((lgw + 1)); root $dir; limit_rate 100m; sendfile_max_chunk 512k; location /v1/objects/ { } }"
  smap "$dir/run/smap-limited.json" "$lgw" "$((lgw + 1))"
fi
cat > "$dir/run/nginx.conf" <<CONF
daemon on;
worker_processes 2;
pid $dir/run/nginx.pid;
error_log $dir/run/error.log;
events { worker_connections 1024; }
http {
  log_format t '\$msec \$request_time \$server_port \$status "\$request" \$http_range';
  $log sendfile on; tcp_nopush on; keepalive_requests 100000;
  client_body_temp_path $dir/run/tmp/body; proxy_temp_path $dir/run/tmp/proxy;
  fastcgi_temp_path $dir/run/tmp/fcgi; uwsgi_temp_path $dir/run/tmp/uwsgi; scgi_temp_path $dir/run/tmp/scgi;
  default_type application/octet-stream;
  split_clients "\${request_id}" \$target { 33% 127.0.0.1:$t1; 33% 127.0.0.1:$t2; * 127.0.0.1:$t3; }
  server { listen 127.0.0.1:$gw;
    $daemon
    location /v1/objects/ {
      if (\$request_method = HEAD) { return 307 http://\$target\$request_uri; }
      return 301 http://\$target\$request_uri;
    }
  }
  server { listen 127.0.0.1:$t1; root $dir; location /v1/objects/ { } }
  server { listen 127.0.0.1:$t2; root $dir; location /v1/objects/ { } }
  server { listen 127.0.0.1:$t3; root $dir; location /v1/objects/ { } }$limited
}
CONF
nginx -p "$dir/run" -c "$dir/run/nginx.conf" -e "$dir/run/error.log"
echo "AIS_ENDPOINT=http://127.0.0.1:$gw${lgw:+ (limited: http://127.0.0.1:$lgw)}"
