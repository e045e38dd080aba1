#!/usr/bin/env bash
# Cluster mode against the embedded store, one run on this machine: one Palisade (1 worker
# thread, bench/palisade-bench.toml: 5 limits on every request) on the embedded store, then the
# same with [store] backend = "redis" (a local redis-server, sync = "strict", then "batched"),
# each under wrk.
# Prints throughput and p99 ratios and Redis commands per request.
#
# Usage: bench/cluster.sh        (DURATION=10s CONNECTIONS=64 to change the load)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
need wrk:wrk redis-server:redis-server nginx:nginx-light
build
UP=$(free_port); RD=$(free_port)
start_upstream "$UP"
redis-server --port "$RD" --bind 127.0.0.1 --save "" --appendonly no >"$OUT/redis.log" 2>&1 & pids+=($!)
wait_port "$RD"

metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m { print $2 }'; }

bench() { # name config
  local PA AD pid
  PA=$(free_port); AD=$(free_port)
  rm -rf "$OUT/data-$1"
  PALISADE_ADMIN_TOKEN=bench "$BIN" serve --config "$2" --upstream "http://127.0.0.1:$UP" \
    --listen "127.0.0.1:$PA" --admin-listen "127.0.0.1:$AD" --data-dir "$OUT/data-$1" --workers 1 \
    --log-level warn 2>"$OUT/palisade-$1.log" &
  pid=$!
  wait_port "$PA"; sleep 1
  wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$PA/api/items/42" >/dev/null
  local before
  before=$(metric "$AD" palisade_shared_store_commands_total); before=${before:-0}
  wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -H "x-tenant: acme" "http://127.0.0.1:$PA/api/items/42" > "$OUT/cluster-$1.txt"
  local after fallbacks
  after=$(metric "$AD" palisade_shared_store_commands_total); after=${after:-0}
  fallbacks=$(metric "$AD" palisade_shared_store_fallbacks_total); fallbacks=${fallbacks:-0}
  echo "$((after - before)) $fallbacks" > "$OUT/cluster-$1.store"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

sed 's|^decisions = "off".*|decisions = "off"|' bench/palisade-bench.toml > "$OUT/cluster-embedded.toml"
{ cat "$OUT/cluster-embedded.toml"; printf '\n[store]\nbackend = "redis"\nurl = "redis://127.0.0.1:%s"\ntimeout = "20ms"\nsync = "strict"\n' "$RD"; } > "$OUT/cluster-strict.toml"
sed 's|^sync = "strict"|sync = "batched"|' "$OUT/cluster-strict.toml" > "$OUT/cluster-batched.toml"
bench embedded "$OUT/cluster-embedded.toml"
bench strict "$OUT/cluster-strict.toml"
bench batched "$OUT/cluster-batched.toml"

python3 - "$OUT" "$DURATION" <<'PY'
import re, sys
out, dur = sys.argv[1], sys.argv[2]
def parse(name):
    t = open(f"{out}/cluster-{name}.txt").read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    def ms(v, u): return float(v) * {"us": 0.001, "ms": 1, "s": 1000}[u]
    p99 = ms(*re.search(r"99%\s+([\d.]+)(us|ms|s)", t).groups())
    total = int(re.search(r"(\d+) requests in", t).group(1))
    return rps, p99, total
e = parse("embedded")
print(f"{'store':<10} {'req/s':>10} {'p99 ms':>8}")
print(f"{'embedded':<10} {e[0]:>10.0f} {e[1]:>8.2f}")
for name in ["strict", "batched"]:
    s = parse(name)
    cmds, fb = map(int, open(f"{out}/cluster-{name}.store").read().split())
    print(f"{name:<10} {s[0]:>10.0f} {s[1]:>8.2f}   /embedded: throughput {s[0]/e[0]:.2f}x, "
          f"p99 {s[1]/e[1]:.2f}x; Redis commands per request {cmds/max(s[2],1):.3f}; fallbacks {fb}")
PY
