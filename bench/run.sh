#!/usr/bin/env bash
# Loopback throughput and latency, all measured in this one run on this machine:
#   1. the upstream directly,
#   2. nginx proxy_pass to it (1 worker, keepalive upstream),
#   3. Palisade with bench/palisade-bench.toml (5 limits on every request), 1 worker thread,
# then prints Palisade/nginx ratios. Everything listens on 127.0.0.1 only.
#
# Usage: bench/run.sh            (DURATION=10s CONNECTIONS=64 THREADS=1 to change the load)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
need wrk:wrk nginx:nginx-light
build
UP=$(free_port); NG=$(free_port); PA=$(free_port); AD=$(free_port)
start_upstream "$UP"

NGDIR=$(mktemp -d)
nginx_config "$NGDIR" "$UP" "$NG"
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
