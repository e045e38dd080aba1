#!/usr/bin/env bash
# Loopback throughput and latency of three Palisade policies against nginx proxy_pass, all
# measured in this one run on this machine, against an upstream that is not the bottleneck (a
# separate nginx answering `return 200` with a 37-byte JSON body):
#
#   limits    Palisade, bench/palisade-bench.toml (5 limits on every request, lists; decision
#             log sampled 1% to a file)                     vs nginx proxy_pass, no access log
#   full      Palisade, bench/palisade-full.toml (the same + every detector: bot catalog, intel,
#             headers, honeypot, behaviour, scoring, a CEL rule; log sampled 1%)   vs the same nginx
#   full+log  the full policy with the decision log written for every request
#                                                           vs nginx with a JSON access log
#
# Every target is measured once per round, in an order that rotates from round to round, and
# the ratios reported are the medians of the per-round ratios: a burst of load from elsewhere on
# this shared machine then spoils one round, not the result.
#
# Beside requests per second, each round reads the CPU time (user + system) the proxy's own
# processes spent on its requests: the "CPU-bound" ratio, nginx's CPU per request over
# Palisade's, is what the throughput ratio would be with each proxy alone on its core, and moves
# far less with the load of wrk, the upstream and the machine's other tenants.
#
# Usage: bench/run.sh
#   ROUNDS=3 DURATION=4s CONNECTIONS=32 THREADS=1 change the load;
#   WORKERS=2 runs Palisade with --workers 2 and nginx with worker_processes 2 (the upstream too).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-4s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
WORKERS=${WORKERS:-1}
need wrk:wrk nginx:nginx-light
build
UP=$(free_port)
start_upstream "$UP" "$WORKERS"

# nginx: without and with a JSON access log.
NG=$(free_port); NGL=$(free_port)
NGDIR=$(mktemp -d); NGLDIR=$(mktemp -d)
NGINX_WORKERS=$WORKERS nginx_config "$NGDIR" "$UP" "$NG"
NGINX_WORKERS=$WORKERS NGINX_ACCESS_LOG="$PWD/$OUT/nginx-access.jsonl" nginx_config "$NGLDIR" "$UP" "$NGL"
rm -f "$OUT/nginx-access.jsonl" "$OUT"/decisions-*.jsonl
"$NGINX" -c "$NGDIR/nginx.conf" -p "$NGDIR" & pids+=($!); PID_nginx=$!
"$NGINX" -c "$NGLDIR/nginx.conf" -p "$NGLDIR" & pids+=($!); PID_nginx_log=$!
wait_port "$NG"; wait_port "$NGL"

# palisade NAME POLICY SAMPLE: starts Palisade on the policy with its decision log written to
# $OUT/decisions-NAME.jsonl, allowed requests sampled at SAMPLE; sets PORT_<NAME>.
palisade() {
  local name=$1 policy=$2 sample=$3 port admin
  port=$(free_port); admin=$(free_port)
  sed -e "s|^decisions = \"off\".*|decisions = \"$PWD/$OUT/decisions-$name.jsonl\"|" \
      -e "s|^sample_allow = .*|sample_allow = $sample|" "$policy" > "$OUT/policy-$name.toml"
  PALISADE_ADMIN_TOKEN=bench "$BIN" serve --config "$OUT/policy-$name.toml" --upstream "http://127.0.0.1:$UP" \
    --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" --data-dir "$OUT/data-$name" \
    --workers "$WORKERS" --log-level warn 2>"$OUT/palisade-$name.log" & pids+=($!)
  printf -v "PID_palisade_${name//-/_}" '%s' "$!"
  wait_port "$port"
  printf -v "PORT_${name//-/_}" '%s' "$port"
}
palisade limits bench/palisade-bench.toml 0.01
palisade full bench/palisade-full.toml 0.01
palisade full-log bench/palisade-full.toml 1.0

PATH_UNDER_TEST=/api/items/42
TARGETS=(nginx palisade-limits palisade-full nginx-log palisade-full-log)
port_of() {
  case $1 in
    nginx) echo "$NG" ;; nginx-log) echo "$NGL" ;;
    palisade-limits) echo "$PORT_limits" ;; palisade-full) echo "$PORT_full" ;;
    palisade-full-log) echo "$PORT_full_log" ;;
  esac
}
# cpu_ticks TARGET: user and system CPU ticks (1/100 s) the target's processes have used so
# far, as "user system" (nginx: its workers, the children of the master).
cpu_ticks() {
  local var="PID_${1//-/_}" pid procs
  pid=${!var}
  case $1 in nginx*) procs=$(pgrep -P "$pid" | tr '\n' ' ') ;; *) procs=$pid ;; esac
  local user=0 sys=0 p
  for p in $procs; do
    [ -r "/proc/$p/stat" ] || continue
    read -r pu ps < <(awk '{print $14, $15}' "/proc/$p/stat")
    user=$(( user + pu )); sys=$(( sys + ps ))
  done
  echo "$user $sys"
}
# A library client with the headers such clients send; the same for every target.
load() { # port duration [out]
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$2" --latency -H "x-tenant: acme" \
    -H "user-agent: python-requests/2.32.3" -H "accept: */*" -H "accept-encoding: gzip, deflate" \
    "http://127.0.0.1:$1$PATH_UNDER_TEST" > "${3:-/dev/null}"
}
load "$UP" 2s; load "$UP" "$DURATION" "$OUT/upstream.txt"
for t in "${TARGETS[@]}"; do load "$(port_of "$t")" 2s; done
n=${#TARGETS[@]}
for r in $(seq "$ROUNDS"); do
  for i in $(seq 0 $((n - 1))); do
    t=${TARGETS[$(( (i + r - 1) % n ))]}
    read -r u0 s0 < <(cpu_ticks "$t")
    load "$(port_of "$t")" "$DURATION" "$OUT/$t-$r.txt"
    read -r u1 s1 < <(cpu_ticks "$t")
    echo "$(( u1 - u0 )) $(( s1 - s0 ))" > "$OUT/$t-$r.cpu"
  done
done

python3 - "$OUT" "$ROUNDS" "$WORKERS" <<'PY'
import re, sys, pathlib, statistics
out, rounds, workers = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def parse(name):
    t = (out / f"{name}.txt").read_text()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    def lat(label):
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", t, re.M)
        v, u = float(m.group(1)), m.group(2)
        return v * {"us": 0.001, "ms": 1.0, "s": 1000.0}[u]
    errs = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
    # CPU the proxy spent per request (µs): what the throughput ratio would be, were the proxy
    # alone on its core, without the neighbours' load (wrk, the upstream, other tenants).
    cpu = out / f"{name}.cpu"
    n = int(re.search(r"(\d+) requests in", t).group(1))
    if cpu.exists() and n:
        user, system = (int(v) * 10_000 / n for v in cpu.read_text().split())
    else:
        user = system = float("nan")
    return rps, lat("50%"), lat("99%"), int(errs.group(1)) if errs else 0, user + system, user, system
u = parse("upstream")
print(f"workers {workers}; upstream directly: {u[0]:.0f} req/s, p99 {u[2]:.3f} ms\n")
print(f"{'round':<6} {'target':<18} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'CPU us/req':>11} {'user':>6} {'system':>7}")
rows = [("limits", "palisade-limits", "nginx", ">= 0.95"), ("full", "palisade-full", "nginx", ">= 0.90, p99 <= 1.2"),
        ("full + log every request", "palisade-full-log", "nginx-log", ">= 1.00 (vs nginx's JSON access log)")]
ratios = {r[0]: ([], [], [], []) for r in rows}
cpu_split = {}
for r in range(1, rounds + 1):
    got = {t: parse(f"{t}-{r}") for t in ["nginx", "nginx-log", "palisade-limits", "palisade-full", "palisade-full-log"]}
    for t, (rps, l50, l99, e, us, user, system) in got.items():
        print(f"{r:<6} {t:<18} {rps:>9.0f} {l50:>8.3f} {l99:>8.3f} {e:>8} {us:>11.2f} {user:>6.2f} {system:>7.2f}")
        cpu_split.setdefault(t, []).append((user, system))
    for name, p, n, _ in rows:
        tp, p99, p50, cpu = ratios[name]
        tp.append(got[p][0] / got[n][0]); p99.append(got[p][2] / got[n][2]); p50.append(got[p][1] / got[n][1])
        cpu.append(got[n][4] / got[p][4])
m = statistics.median
print(f"\npalisade/nginx over {rounds} rounds, median (range):")
print(f"{'policy':<26} {'throughput':>20} {'p99':>20} {'p50':>7} {'CPU-bound':>20}   target")
for name, _, _, target in rows:
    tp, p99, p50, cpu = ratios[name]
    print(f"{name:<26} {m(tp):>5.2f}x ({min(tp):.2f}-{max(tp):.2f}) {m(p99):>8.2f}x ({min(p99):.2f}-{max(p99):.2f}) {m(p50):>6.2f}x {m(cpu):>5.2f}x ({min(cpu):.2f}-{max(cpu):.2f})   {target}")
print("\nCPU-bound: nginx's CPU per request over Palisade's (user + system time of the proxy's")
print("processes during its rounds): the throughput ratio were each proxy alone on its core.")
print("\nCPU per request, median over the rounds (µs): user space (the proxy's own code) and the kernel")
for t, split in cpu_split.items():
    print(f"  {t:<18} user {m(u for u, _ in split):>6.2f}   system {m(s for _, s in split):>6.2f}")
PY
for f in "$OUT"/decisions-full-log.jsonl "$OUT"/nginx-access.jsonl; do
  [ -f "$f" ] && echo "$(basename "$f"): $(wc -l < "$f") lines, $(( $(wc -c < "$f") / $(wc -l < "$f" | awk '{print ($1 > 0 ? $1 : 1)}') )) bytes a line"
done
