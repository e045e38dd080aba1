#!/usr/bin/env bash
# Loopback throughput and latency, all measured in this one run on this machine:
#   1. the upstream directly,
#   2. nginx proxy_pass to it (1 worker, keepalive upstream),
#   3. Palisade with bench/palisade-bench.toml (5 limits on every request), 1 worker thread,
# then prints Palisade/nginx ratios. Everything listens on 127.0.0.1 only.
#
# nginx and Palisade are measured in ROUNDS alternating rounds (nginx first in odd rounds,
# Palisade first in even ones), and the ratios reported are the medians of the per-round ratios:
# a burst of load from elsewhere on this shared machine then spoils one round, not the result.
#
# Usage: bench/run.sh   (ROUNDS=5 DURATION=5s CONNECTIONS=64 THREADS=1 to change the load)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
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
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "x-tenant: acme" "http://127.0.0.1:$2$PATH_UNDER_TEST" > "$OUT/$1.txt"
}
warm() { wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://127.0.0.1:$1$PATH_UNDER_TEST" >/dev/null; }
warm "$UP"; run upstream "$UP"
warm "$NG"; warm "$PA"
for r in $(seq "$ROUNDS"); do
  if (( r % 2 )); then run "nginx-$r" "$NG"; run "palisade-$r" "$PA"
  else run "palisade-$r" "$PA"; run "nginx-$r" "$NG"; fi
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import re, sys, pathlib, statistics
out, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
def parse(name):
    t = (out / f"{name}.txt").read_text()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    def lat(label):
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", t, re.M)
        v, u = float(m.group(1)), m.group(2)
        return v * {"us": 0.001, "ms": 1.0, "s": 1000.0}[u]
    errs = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
    return rps, lat("50%"), lat("99%"), int(errs.group(1)) if errs else 0
print(f"{'round':<6} {'target':<10} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}   palisade/nginx")
u = parse("upstream")
print(f"{'-':<6} {'upstream':<10} {u[0]:>10.0f} {u[1]:>8.3f} {u[2]:>8.3f} {u[3]:>8}")
tp, p99, p50 = [], [], []
for r in range(1, rounds + 1):
    n, p = parse(f"nginx-{r}"), parse(f"palisade-{r}")
    tp.append(p[0] / n[0]); p99.append(p[2] / n[2]); p50.append(p[1] / n[1])
    for name, (rps, l50, l99, e) in (("nginx", n), ("palisade", p)):
        print(f"{r:<6} {name:<10} {rps:>10.0f} {l50:>8.3f} {l99:>8.3f} {e:>8}", end="")
        print(f"   throughput {tp[-1]:.2f}x  p99 {p99[-1]:.2f}x  p50 {p50[-1]:.2f}x" if name == "palisade" else "")
m = statistics.median
print(f"palisade/nginx over {rounds} rounds (median; range): throughput {m(tp):.2f}x ({min(tp):.2f}-{max(tp):.2f}, target >= 0.90)"
      f"   p99 {m(p99):.2f}x ({min(p99):.2f}-{max(p99):.2f}, target <= 1.50)   p50 {m(p50):.2f}x")
PY
