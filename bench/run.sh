#!/usr/bin/env bash
# Loopback throughput and latency, all measured in this one run on this machine:
#   1. the upstream directly,
#   2. nginx proxy_pass to it (1 worker, keepalive upstream),
#   3. Palisade with bench/palisade-bench.toml (5 limits on every request), 1 worker thread,
# then prints Palisade/nginx ratios. Everything listens on 127.0.0.1 only.
#
# Usage: bench/run.sh            (DURATION=10s CONNECTIONS=64 THREADS=1 to change the load)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
OUT=bench/out
mkdir -p "$OUT"

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release -q -p palisade
BIN=target/release/palisade

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); NG=$(free_port); PA=$(free_port); AD=$(free_port)

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_port() { for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

# The upstream: Palisade's own sample API, one worker thread.
"$BIN" sample-api --listen "127.0.0.1:$UP" --workers 1 2>"$OUT/upstream.log" & pids+=($!)
wait_port "$UP"

# nginx: one worker, keepalive to the upstream, no access log.
NGDIR=$(mktemp -d)
cat > "$NGDIR/nginx.conf" <<NGINX
worker_processes 1;
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
"$NGINX" -c "$NGDIR/nginx.conf" -p "$NGDIR" & pids+=($!)
wait_port "$NG"

# Palisade: one worker thread, the bench policy, decision log sampled to a file.
sed "s|^decisions = \"off\".*|decisions = \"$OUT/decisions.jsonl\"|" bench/palisade-bench.toml > "$OUT/palisade-bench.toml"
PALISADE_ADMIN_TOKEN=bench "$BIN" serve --config "$OUT/palisade-bench.toml" --upstream "http://127.0.0.1:$UP" \
  --listen "127.0.0.1:$PA" --admin-listen "127.0.0.1:$AD" --data-dir "$OUT/data" --workers 1 \
  --log-level warn 2>"$OUT/palisade.log" & pids+=($!)
wait_port "$PA"

PATH_UNDER_TEST=/api/items/42
run() { # name port
  wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://127.0.0.1:$2$PATH_UNDER_TEST" >/dev/null  # warm-up
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "x-tenant: acme" "http://127.0.0.1:$2$PATH_UNDER_TEST" > "$OUT/$1.txt"
}
run upstream "$UP"
run nginx "$NG"
run palisade "$PA"

python3 - "$OUT" <<'PY'
import re, sys, pathlib
out = pathlib.Path(sys.argv[1])
def parse(name):
    t = (out / f"{name}.txt").read_text()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    def lat(label):
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", t, re.M)
        v, u = float(m.group(1)), m.group(2)
        return v * {"us": 0.001, "ms": 1.0, "s": 1000.0}[u]
    errs = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
    return rps, lat("50%"), lat("99%"), int(errs.group(1)) if errs else 0
rows = {n: parse(n) for n in ("upstream", "nginx", "palisade")}
print(f"{'target':<10} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
for n, (rps, p50, p99, e) in rows.items():
    print(f"{n:<10} {rps:>10.0f} {p50:>8.3f} {p99:>8.3f} {e:>8}")
n, p = rows["nginx"], rows["palisade"]
print(f"palisade/nginx throughput {p[0]/n[0]:.2f}x (target >= 0.90)   p99 {p[2]/n[2]:.2f}x (target <= 1.50)   p50 {p[1]/n[1]:.2f}x")
PY
