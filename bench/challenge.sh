#!/usr/bin/env bash
# What a proof-of-work challenge costs, on this machine:
#  1. the gateway: issuing a puzzle, opening a clearance, checking a solution (divan, µs);
#  2. a client: solve time at each difficulty, median and p95 over 21 fresh puzzles, for the
#     native reference solver (`palisade solve`) and for the page's own JavaScript worker run in
#     node (V8, as in Chromium).
# One command: bench/challenge.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -q -p palisade-gateway --bench challenge
cargo build -q --release -p palisade
bin=target/release/palisade
runs=21
stats() { sort -n | awk '{a[NR]=$1} END {printf "median %8.1f ms   p95 %8.1f ms\n", a[int((NR+1)/2)], a[int(NR*0.95+0.999)]}'; }
echo
echo "native solver (palisade solve), $runs puzzles per difficulty:"
for bits in 12 14 16 18 20; do
  printf "  %2d bits  " "$bits"
  for i in $(seq "$runs"); do
    tok="bench$RANDOM$RANDOM$i"
    s=$(date +%s%N); "$bin" solve --difficulty "$bits" "$tok" >/dev/null 2>&1; e=$(date +%s%N)
    echo $(( (e - s) / 1000 )) | awk '{print $1/1000}'
  done | stats
done
if command -v node >/dev/null 2>&1; then
  echo
  echo "the page's JavaScript worker in node, $runs puzzles per difficulty:"
  worker=$(awk '/^const WORKER: &str = r#"/{on=1; next} /^"#;/{on=0} on' crates/palisade-gateway/src/challenge/page.rs)
  WORKER="$worker" node -e '
    const src = process.env.WORKER;
    let posted;
    // The worker globals become function locals (a vm context would make them slow).
    const onmessage = new Function("postMessage", "var onmessage;" + src + "; return onmessage;")((m) => { posted = m; });
    for (const bits of [12, 14, 16, 18, 20]) {
      const t = [];
      for (let i = 0; i < '"$runs"'; i++) {
        const s = process.hrtime.bigint();
        onmessage({ data: { t: "bench" + Math.random(), bits } });
        t.push(Number(process.hrtime.bigint() - s) / 1e6);
      }
      t.sort((a, b) => a - b);
      const p95 = t[Math.ceil(t.length * 0.95) - 1];
      console.log(`  ${String(bits).padStart(2)} bits  median ${t[(t.length - 1) / 2].toFixed(1).padStart(8)} ms   p95 ${p95.toFixed(1).padStart(8)} ms`);
    }'
fi
