#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind, for nginx
# proxy_pass (without and with a JSON access log) and for Palisade on the three policies of
# bench/run.sh (limits only; the full policy; the full policy logging every decision), in one
# run, against the same nginx `return 200` upstream and the same library client. Instruction
# counts do not depend on what else the machine is doing, so small changes show where requests
# per second are lost in noise. (Kernel time is not counted: both make the same syscalls per
# request. Under valgrind SHA-256 runs in software: JA4H counts dearer here than on the CPU.)
#
# Usage: bench/instructions.sh [TARGET...]   (installs valgrind, wrk and nginx-light if missing)
#   TARGET: nginx nginx-log palisade-limits palisade-full palisade-full-log (default: all five;
#   the ratios are printed for the pairs measured)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

need wrk:wrk valgrind:valgrind nginx:nginx-light
build
UP=$(free_port)
start_upstream "$UP"

load() { # port duration [out]
  wrk -t1 -c16 -d"$2" -H "x-tenant: acme" -H "user-agent: python-requests/2.32.3" -H "accept: */*" \
    -H "accept-encoding: gzip, deflate" "http://127.0.0.1:$1/api/items/42" > "${3:-/dev/null}"
}

# measure NAME PORT -- COMMAND...: runs COMMAND under callgrind, warms up, counts a 5 s run.
measure() {
  local name=$1 port=$2; shift 3
  rm -f "$OUT/cg.$name".*
  valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.$name.%p" "$@" 2>"$OUT/valgrind.$name.log" &
  local pid=$!
  wait_port "$port"
  load "$port" 3s
  callgrind_control -z "$pid" >/dev/null 2>&1
  load "$port" 5s "$OUT/wrk.$name.txt"
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  local n ir
  n=$(awk '/requests in/ {print $1}' "$OUT/wrk.$name.txt")
  ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$(ls "$OUT/cg.$name".*.1 | head -1)")
  echo "$name $n $ir"
}

# nginx NAME [ACCESS_LOG]
nginx_target() {
  local dir port; dir=$(mktemp -d); port=$(free_port)
  NGINX_ACCESS_LOG=${2:-} nginx_config "$dir" "$UP" "$port" "master_process off;"
  measure "$1" "$port" -- "$NGINX" -c "$dir/nginx.conf" -p "$dir"
}

# palisade NAME POLICY SAMPLE
palisade_target() {
  local port admin; port=$(free_port); admin=$(free_port)
  sed -e "s|^decisions = \"off\".*|decisions = \"$PWD/$OUT/ir-decisions-$1.jsonl\"|" \
      -e "s|^sample_allow = .*|sample_allow = $3|" "$2" > "$OUT/ir-policy-$1.toml"
  PALISADE_ADMIN_TOKEN=bench measure "$1" "$port" -- "$BIN" serve --config "$OUT/ir-policy-$1.toml" \
    --upstream "http://127.0.0.1:$UP" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
    --data-dir "$OUT/ir-data-$1" --workers 1 --log-level warn
}

WANT=" ${*:-nginx nginx-log palisade-limits palisade-full palisade-full-log} "
want() { [[ $WANT == *" $1 "* ]]; }
{
  if want nginx; then nginx_target nginx; fi
  if want nginx-log; then nginx_target nginx-log "$PWD/$OUT/ir-nginx-access.jsonl"; fi
  if want palisade-limits; then palisade_target palisade-limits bench/palisade-bench.toml 0.01; fi
  if want palisade-full; then palisade_target palisade-full bench/palisade-full.toml 0.01; fi
  if want palisade-full-log; then palisade_target palisade-full-log bench/palisade-full.toml 1.0; fi
} > "$OUT/instructions.txt"

python3 - "$OUT/instructions.txt" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    name, n, ir = line.split()
    rows[name] = int(ir) / int(n)
print(f"{'target':<18} {'instructions/request':>21}")
for name, v in rows.items():
    print(f"{name:<18} {v:>21.0f}")
for p, n in (("palisade-limits", "nginx"), ("palisade-full", "nginx"), ("palisade-full-log", "nginx-log")):
    if p in rows and n in rows:
        print(f"{p}/{n}: {rows[p] / rows[n]:.2f}x")
PY
