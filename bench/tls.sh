#!/usr/bin/env bash
# The TLS edge against nginx, both terminating TLS with the same certificate (ECDSA P-256, TLS
# 1.3) in front of the same fast upstream (a separate nginx `return 200`), in alternating rounds:
#
#   keep-alive   requests per second over 32 kept-alive HTTPS connections
#   handshakes   new connections per second: every request on a new connection (full TLS 1.3
#                handshake, no resumption), i.e. handshakes per second
#
# Palisade runs bench/palisade-bench.toml (5 limits, lists, decision log 1% to a file) plus
# [tls] and [fingerprints]: every connection's ClientHello is read and fingerprinted (JA4), and
# the spoofed-client checks run; nginx proxy_pass has no access log. The cost of the
# fingerprints alone, per connection, is in `cargo bench -p palisade-intel` (ja4_*, h2fp_*).
#
# Usage: bench/tls.sh        (ROUNDS=3 DURATION=4s; installs wrk, nginx-light and openssl)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-4s}
need wrk:wrk nginx:nginx-light openssl:openssl
build
UP=$(free_port)
start_upstream "$UP"

CERTS=$(mktemp -d)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench.test \
  -addext subjectAltName=DNS:bench.test -keyout "$CERTS/key.pem" -out "$CERTS/cert.pem" 2>/dev/null

# nginx terminating TLS, proxy_pass with keepalive to the upstream.
NG=$(free_port); NGDIR=$(mktemp -d)
cat > "$NGDIR/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $NGDIR/nginx.pid;
error_log $NGDIR/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$UP; keepalive 256; }
  server {
    listen 127.0.0.1:$NG ssl backlog=4096;
    ssl_certificate $CERTS/cert.pem;
    ssl_certificate_key $CERTS/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets off;
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

# Palisade: the limits policy, TLS and fingerprints.
PT=$(free_port); PP=$(free_port); PA=$(free_port)
sed -e "s|^decisions = \"off\".*|decisions = \"$PWD/$OUT/decisions-tls.jsonl\"|" bench/palisade-bench.toml > "$OUT/tls-policy.toml"
cat >> "$OUT/tls-policy.toml" <<TOML

[tls]
listen = "127.0.0.1:$PT"
[[tls.certificates]]
cert = "$CERTS/cert.pem"
key = "$CERTS/key.pem"

[fingerprints]
TOML
PALISADE_ADMIN_TOKEN=bench "$BIN" serve --config "$OUT/tls-policy.toml" --upstream "http://127.0.0.1:$UP" \
  --listen "127.0.0.1:$PP" --admin-listen "127.0.0.1:$PA" --data-dir "$OUT/tls-data" --workers 1 \
  --log-level warn & pids+=($!)
wait_port "$NG"; wait_port "$PT"

H=(-H "user-agent: python-requests/2.32.3" -H "accept: */*")
rps() { awk '/Requests\/sec/ {print $2}' "$1"; }
load() { # port mode out
  if [ "$2" = keepalive ]; then
    wrk -t1 -c32 -d"$DURATION" "${H[@]}" "https://127.0.0.1:$1/api/items/42" > "$3"
  else
    wrk -t1 -c16 -d"$DURATION" "${H[@]}" -H "connection: close" "https://127.0.0.1:$1/api/items/42" > "$3"
  fi
}
# Warm both.
load "$NG" keepalive /dev/null; load "$PT" keepalive /dev/null
: > "$OUT/tls.txt"
for r in $(seq 1 "$ROUNDS"); do
  for mode in keepalive handshakes; do
    order=("nginx:$NG" "palisade:$PT")
    [ $((r % 2)) -eq 0 ] && order=("palisade:$PT" "nginx:$NG")
    for t in "${order[@]}"; do
      name=${t%%:*}; port=${t#*:}
      load "$port" "$mode" "$OUT/wrk-tls-$name-$mode-$r.txt"
      echo "$r $mode $name $(rps "$OUT/wrk-tls-$name-$mode-$r.txt")" >> "$OUT/tls.txt"
    done
  done
done

python3 - "$OUT/tls.txt" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    r, mode, name, v = line.split()
    rows[(mode, int(r))][name] = float(v)
print(f"{'mode':<12} {'round':>5} {'nginx/s':>10} {'palisade/s':>11} {'ratio':>7}")
ratios = collections.defaultdict(list)
for (mode, r), v in sorted(rows.items()):
    ratio = v["palisade"] / v["nginx"]
    ratios[mode].append(ratio)
    print(f"{mode:<12} {r:>5} {v['nginx']:>10.0f} {v['palisade']:>11.0f} {ratio:>7.2f}")
for mode, rs in ratios.items():
    print(f"{mode}: palisade/nginx median {statistics.median(rs):.2f}x (range {min(rs):.2f}-{max(rs):.2f}), target >= 0.9")
PY
