#!/usr/bin/env bash
# Palisade as nginx's decision service: requests per second and latency (p50/p99) of nginx with
# `auth_request` to Palisade's decision endpoint (the shipped deploy/nginx snippet; Palisade on
# the bench policy, 5 limits, plus [decision]) against nginx alone, `proxy_pass` to the same
# nginx `return 200` upstream, in alternating rounds; and the decision endpoint's own throughput
# (wrk straight at /_palisade/authz with X-Original-URI). One command: bench/decision.sh
# (ROUNDS=3, DURATION=4s). Installs wrk and nginx-light if missing.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-4s}
need wrk:wrk nginx:nginx-light
build
UP=$(free_port)
start_upstream "$UP"

# nginx alone.
NG=$(free_port); NGDIR=$(mktemp -d)
nginx_config "$NGDIR" "$UP" "$NG"
"$NGINX" -c "$NGDIR/nginx.conf" -p "$NGDIR" & pids+=($!)

# Palisade deciding.
PP=$(free_port); PA=$(free_port)
sed -e "s|^decisions = \"off\".*|decisions = \"off\"|" bench/palisade-bench.toml > "$OUT/decision-policy.toml"
printf '\n[decision]\n' >> "$OUT/decision-policy.toml"
if grep -q '^trusted_proxies' "$OUT/decision-policy.toml"; then :; else
  sed -i 's|^\[server\]|[server]\ntrusted_proxies = ["127.0.0.1"]|' "$OUT/decision-policy.toml"
  grep -q '^trusted_proxies' "$OUT/decision-policy.toml" || printf '\n[server]\ntrusted_proxies = ["127.0.0.1"]\n' >> "$OUT/decision-policy.toml"
fi
PALISADE_ADMIN_TOKEN=bench "$BIN" serve --config "$OUT/decision-policy.toml" --upstream "http://127.0.0.1:$UP" \
  --listen "127.0.0.1:$PP" --admin-listen "127.0.0.1:$PA" --data-dir "$OUT/decision-data" --workers 1 \
  --log-level warn & pids+=($!)

# nginx asking Palisade.
NA=$(free_port); NADIR=$(mktemp -d)
cat > "$NADIR/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $NADIR/nginx.pid;
error_log $NADIR/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream api { server 127.0.0.1:$UP; keepalive 256; }
  upstream palisade { server 127.0.0.1:$PP; keepalive 256; }
  server {
    listen 127.0.0.1:$NA backlog=4096;
    include $PWD/deploy/nginx/palisade-auth-request.conf;
  }
}
NGINX
"$NGINX" -c "$NADIR/nginx.conf" -p "$NADIR" & pids+=($!)
wait_port "$NG"; wait_port "$PP"; wait_port "$NA"

H=(-H "user-agent: python-requests/2.32.3" -H "accept: */*" -H "x-tenant: acme")
rps() { awk '/Requests\/sec/ {print $2}' "$1"; }
lat() { awk -v p="$2" '$1 == p"%" {print $2}' "$1"; }
load() { wrk -t1 -c32 -d"$DURATION" --latency "${H[@]}" "http://127.0.0.1:$1/api/items/42" > "$2"; }
load "$NG" /dev/null; load "$NA" /dev/null
: > "$OUT/decision.txt"
for r in $(seq 1 "$ROUNDS"); do
  order=("nginx:$NG" "nginx+palisade:$NA")
  [ $((r % 2)) -eq 0 ] && order=("nginx+palisade:$NA" "nginx:$NG")
  for t in "${order[@]}"; do
    name=${t%%:*}; port=${t#*:}
    f="$OUT/wrk-decision-${name//+/-}-$r.txt"
    load "$port" "$f"
    echo "$r $name $(rps "$f") $(lat "$f" 50) $(lat "$f" 99)" >> "$OUT/decision.txt"
  done
done
wrk -t1 -c32 -d"$DURATION" --latency "${H[@]}" -H "x-original-uri: /api/items/42" -H "x-original-method: GET" \
  "http://127.0.0.1:$PP/_palisade/authz" > "$OUT/wrk-decision-endpoint.txt"

python3 - "$OUT/decision.txt" "$OUT/wrk-decision-endpoint.txt" <<'PY'
import sys, statistics, collections, re
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    n, u = float(m.group(1)), m.group(2)
    return n / 1000 if u == "us" else n * 1000 if u == "s" else n
rows = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    r, name, v, p50, p99 = line.split()
    rows[int(r)][name] = (float(v), ms(p50), ms(p99))
print(f"{'round':>5} {'nginx/s':>10} {'+palisade/s':>12} {'ratio':>6} {'p50 ms':>14} {'p99 ms':>14}")
ratios, add50, add99 = [], [], []
for r in sorted(rows):
    a, b = rows[r]["nginx"], rows[r]["nginx+palisade"]
    ratios.append(b[0] / a[0]); add50.append(b[1] - a[1]); add99.append(b[2] - a[2])
    print(f"{r:>5} {a[0]:>10.0f} {b[0]:>12.0f} {b[0]/a[0]:>6.2f} {a[1]:>6.2f}/{b[1]:<6.2f} {a[2]:>6.2f}/{b[2]:<6.2f}")
print(f"median ratio {statistics.median(ratios):.2f}; added latency p50 {statistics.median(add50):.2f} ms, p99 {statistics.median(add99):.2f} ms")
t = open(sys.argv[2]).read()
rps = re.search(r"Requests/sec:\s+([\d.]+)", t).group(1)
print(f"decision endpoint alone: {float(rps):.0f} decisions/s")
PY
