#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind, for nginx
# proxy_pass and for Palisade with bench/palisade-bench.toml, in one run. Instruction counts do
# not depend on what else the machine is doing, so small changes show where requests per second
# are lost in noise. (Kernel time is not counted: both make the same syscalls per request.)
#
# Usage: bench/instructions.sh      (installs valgrind, wrk and nginx-light if missing)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

need wrk:wrk valgrind:valgrind nginx:nginx-light
build
UP=$(free_port); NG=$(free_port); PA=$(free_port); AD=$(free_port)
start_upstream "$UP"
NGDIR=$(mktemp -d)
nginx_config "$NGDIR" "$UP" "$NG" "master_process off;"

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
