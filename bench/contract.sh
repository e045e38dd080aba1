#!/usr/bin/env bash
# What the API's contract and the injection-probe scan cost on the proxy path: loopback
# throughput and latency of Palisade on bench/palisade-bench.toml (5 limits, lists) with
# nothing more, with [openapi] (the public Petstore spec from the shared testdata), and with
# [probes], against nginx proxy_pass, all in this one run against an upstream that is not the
# bottleneck (a separate nginx answering `return 200`). Two requests: a GET the spec validates
# (a path parameter and an enum query) and a POST of a 150-byte JSON body the spec validates
# (and the probe scan reads). Ratios are medians of per-round ratios.
#
# The per-request cost of each step alone is in the micro-benchmarks:
#   cargo bench -p palisade-intel --bench intel -- probes
#
# Usage: bench/contract.sh   (ROUNDS=3 DURATION=4s CONNECTIONS=32 PALISADE_TESTDATA=...)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-4s}
CONNECTIONS=${CONNECTIONS:-32}
SPEC=${PALISADE_TESTDATA:-$PWD/../shared/testdata}/openapi/petstore.yaml
[ -f "$SPEC" ] || { echo "the Petstore spec is missing ($SPEC): set PALISADE_TESTDATA" >&2; exit 1; }
need wrk:wrk nginx:nginx-light
build
UP=$(free_port)
start_upstream "$UP" 1
NG=$(free_port); NGDIR=$(mktemp -d)
nginx_config "$NGDIR" "$UP" "$NG"
"$NGINX" -c "$NGDIR/nginx.conf" -p "$NGDIR" & pids+=($!)
wait_port "$NG"

# palisade NAME EXTRA: the bench policy plus EXTRA (TOML), on its own ports; sets PORT_<NAME>.
palisade() {
  local name=$1 extra=$2 port admin
  port=$(free_port); admin=$(free_port)
  { cat bench/palisade-bench.toml; printf '\n%s\n' "$extra"; } > "$OUT/contract-$name.toml"
  sed -i -e "s|^decisions = .*|decisions = \"off\"|" "$OUT/contract-$name.toml"
  PALISADE_ADMIN_TOKEN=bench "$BIN" serve --config "$OUT/contract-$name.toml" --upstream "http://127.0.0.1:$UP" \
    --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" --data-dir "$OUT/data-contract-$name" \
    --workers 1 --log-level warn 2>"$OUT/contract-$name.log" & pids+=($!)
  wait_port "$port"
  printf -v "PORT_${name//-/_}" '%s' "$port"
}
palisade off ""
palisade openapi "$(printf '[openapi]\nspec = "%s"\n' "$SPEC")"
palisade probes "$(printf '[probes]\nactions = { log4shell = "block" }\n')"
palisade both "$(printf '[openapi]\nspec = "%s"\n\n[probes]\nactions = { log4shell = "block" }\n' "$SPEC")"

cat > "$OUT/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"id":10,"name":"doggie","category":{"id":1,"name":"Dogs"},"photoUrls":["https://example.com/a.jpg"],"tags":[{"id":0,"name":"good"}],"status":"available"}'
wrk.headers["content-type"] = "application/json"
LUA
TARGETS=(nginx palisade-off palisade-openapi palisade-probes palisade-both)
port_of() {
  case $1 in
    nginx) echo "$NG" ;; palisade-off) echo "$PORT_off" ;; palisade-openapi) echo "$PORT_openapi" ;;
    palisade-probes) echo "$PORT_probes" ;; palisade-both) echo "$PORT_both" ;;
  esac
}
load() { # kind port duration [out]
  local script=() path=/api/v3/pet/findByStatus?status=sold
  if [ "$1" = post ]; then script=(-s "$OUT/post.lua"); path=/api/v3/pet; fi
  wrk -t1 -c"$CONNECTIONS" -d"$3" --latency "${script[@]}" -H "x-tenant: acme" \
    -H "user-agent: python-requests/2.32.3" -H "accept: */*" -H "api_key: special-key" \
    "http://127.0.0.1:$2$path" > "${4:-/dev/null}"
}
for kind in get post; do
  for t in "${TARGETS[@]}"; do load "$kind" "$(port_of "$t")" 2s; done
  n=${#TARGETS[@]}
  for r in $(seq "$ROUNDS"); do
    for i in $(seq 0 $((n - 1))); do
      t=${TARGETS[$(( (i + r - 1) % n ))]}
      load "$kind" "$(port_of "$t")" "$DURATION" "$OUT/contract-$kind-$t-$r.txt"
    done
  done
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import re, sys, pathlib, statistics
out, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
def parse(name):
    t = (out / f"{name}.txt").read_text()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    def lat(label):
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", t, re.M)
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    errs = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
    return rps, lat("50%"), lat("99%"), int(errs.group(1)) if errs else 0
targets = ["nginx", "palisade-off", "palisade-openapi", "palisade-probes", "palisade-both"]
m = statistics.median
for kind in ["get", "post"]:
    print(f"\n{kind.upper()}: median over {rounds} rounds")
    print(f"{'target':<18} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'vs nginx':>9} {'vs off':>7}")
    got = {t: [parse(f"contract-{kind}-{t}-{r}") for r in range(1, rounds + 1)] for t in targets}
    for t in targets:
        rows = got[t]
        vs_n = m([a[0] / b[0] for a, b in zip(rows, got["nginx"])])
        vs_o = m([a[0] / b[0] for a, b in zip(rows, got["palisade-off"])])
        print(f"{t:<18} {m([x[0] for x in rows]):>9.0f} {m([x[1] for x in rows]):>8.3f} {m([x[2] for x in rows]):>8.3f} {sum(x[3] for x in rows):>8} {vs_n:>8.2f}x {vs_o:>6.2f}x")
PY
