#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind, for nginx
# proxy_pass and for Palisade with bench/palisade-bench.toml, in one run. Instruction counts do
# not depend on what else the machine is doing, so small changes show where requests per second
# are lost in noise. (Kernel time is not counted: both make the same syscalls per request.)
#
# Usage: bench/instructions.sh      (installs valgrind, wrk and nginx-light if missing)
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=bench/out
mkdir -p "$OUT"
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v valgrind >/dev/null || need+=(valgrind)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release -q -p palisade
BIN=$PWD/target/release/palisade

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); NG=$(free_port); PA=$(free_port); AD=$(free_port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 200); do (echo > /dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.2; done; echo "port $1 never opened" >&2; exit 1; }

"$BIN" sample-api --listen "127.0.0.1:$UP" --workers 1 2>"$OUT/upstream.log" & pids+=($!)
wait_port "$UP"

NGDIR=$(mktemp -d)
cat > "$NGDIR/nginx.conf" <<NGINX
worker_processes 1;
master_process off;
daemon off;
pid $NGDIR/nginx.pid;
error_log $NGDIR/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream backend { server 127.0.0.1:$UP; keepalive 256; }
  server {
    listen 127.0.0.1:$NG;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
NGINX

# measure NAME PORT -- COMMAND...: runs COMMAND under callgrind, warms up, counts a 5 s run.
measure() {
  local name=$1 port=$2; shift 3
  rm -f "$OUT/cg.$name".*
  valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.$name.%p" "$@" 2>"$OUT/valgrind.$name.log" &
  local pid=$!
  wait_port "$port"
  wrk -t1 -c16 -d3s -H "x-tenant: acme" "http://127.0.0.1:$port/api/items/42" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  wrk -t1 -c16 -d5s -H "x-tenant: acme" "http://127.0.0.1:$port/api/items/42" > "$OUT/wrk.$name.txt"
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  local n ir
  n=$(awk '/requests in/ {print $1}' "$OUT/wrk.$name.txt")
  ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$(ls "$OUT/cg.$name".*.1 | head -1)")
  echo "$name $n $ir"
}

{
  measure nginx "$NG" -- "$NGINX" -c "$NGDIR/nginx.conf" -p "$NGDIR"
  PALISADE_ADMIN_TOKEN=bench measure palisade "$PA" -- "$BIN" serve --config bench/palisade-bench.toml \
    --upstream "http://127.0.0.1:$UP" --listen "127.0.0.1:$PA" --admin-listen "127.0.0.1:$AD" \
    --data-dir "$OUT/data" --workers 1 --log-level warn
} > "$OUT/instructions.txt"

python3 - "$OUT/instructions.txt" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    name, n, ir = line.split()
    rows[name] = (int(n), int(ir))
print(f"{'target':<10} {'requests':>9} {'instructions/request':>21}")
for name, (n, ir) in rows.items():
    print(f"{name:<10} {n:>9} {ir // n:>21}")
(nn, ni), (pn, pi) = rows["nginx"], rows["palisade"]
print(f"palisade/nginx user-space instructions per request: {(pi / pn) / (ni / nn):.2f}x")
PY
