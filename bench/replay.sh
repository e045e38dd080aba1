#!/usr/bin/env bash
# `palisade replay` throughput: log lines per second through the full engine, with the full
# policy of bench/palisade-full.toml (every detector on) and with the embedded default, on a
# generated combined log of LINES lines (default 1,000,000): 2,000 people on addresses all
# over, browsing and searching; ten clients flooding; a scanner; a credential stuffer over
# 200 addresses — four hours of traffic, in time order with a little jitter. Reports the median
# of ROUNDS (3) runs each. The target is 200,000 lines per second on 2 cores.
#
# Usage: bench/replay.sh        (LINES=..., ROUNDS=...)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
build
LINES=${LINES:-1000000}
ROUNDS=${ROUNDS:-3}
LOG=$OUT/replay-access.log
python3 - "$LOG" "$LINES" <<'PY'
import random, sys, time
random.seed(11)
path, n = sys.argv[1], int(sys.argv[2])
t0 = 1796630400
months = ["Jan","Feb","Mar","Apr","May","Jun","Jul","Aug","Sep","Oct","Nov","Dec"]
def clf(t):
    g = time.gmtime(t)
    return f"{g.tm_mday:02d}/{months[g.tm_mon-1]}/{g.tm_year}:{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d} +0000"
people = [f"{random.randint(11,199)}.{random.randint(0,255)}.{random.randint(0,255)}.{random.randint(1,254)}" for _ in range(2000)]
floods = [f"203.0.113.{i}" for i in range(10)]
ua_people = "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0"
span = 4 * 3600
with open(path, "w") as f:
    for i in range(n):
        t = t0 + i * span // n
        r = random.random()
        if r < 0.70:
            ip = random.choice(people); ua = ua_people
            p = random.choice([f"/api/items/{random.randint(1,5000)}", "/api/search?q=shoes", "/"])
            m, st = "GET", 200
        elif r < 0.95:
            ip = random.choice(floods); ua = "python-requests/2.32.3"
            p, m, st = f"/api/items/{i % 1000}", "GET", 200
        elif r < 0.97:
            ip = "192.0.2.50"; ua = "Mozilla/5.0 zgrab/0.x"
            p, m, st = random.choice(["/.env", "/wp-login.php", "/.git/config"]), "GET", 404
        else:
            ip = f"198.18.{random.randint(0,3)}.{random.randint(1,50)}"; ua = "python-requests/2.32.3"
            p, m, st = "/api/login", "POST", 401
        f.write(f'{ip} - - [{clf(t)}] "{m} {p} HTTP/1.1" {st} 512 "-" "{ua}"\n')
PY
echo "log: $LOG ($(wc -l < "$LOG") lines, $(du -h "$LOG" | cut -f1))"
run() { # name config...
  local name=$1; shift
  for r in $(seq "$ROUNDS"); do
    "$BIN" replay "$LOG" "$@" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["lines_per_second"])'
  done | sort -n | awk -v name="$name" '{v[NR]=$1} END {printf "%-28s %10d lines/s (median of %d; min %d, max %d)\n", name, v[int((NR+1)/2)], NR, v[1], v[NR]}'
}
{
  run "full policy" --config bench/palisade-full.toml
  run "embedded default" 
  run "full, --against default" --config bench/palisade-full.toml --against crates/palisade-config/src/default.toml
} | tee "$OUT/replay.txt"
