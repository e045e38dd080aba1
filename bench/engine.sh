#!/usr/bin/env bash
# The engine micro-benchmarks, warm state. Prints divan's tables (fastest / slowest / median /
# mean).
#  - engine: one request through identity + 5 matching limits + decision. Budget: median <= 2 µs.
#  - keys: API key verification alone, and a request with a key (5 limits, the key's own rate,
#    a daily quota reserved and settled) against an anonymous one. Budget: verification adds
#    <= 1 µs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -q -p palisade-engine --bench engine "$@"
cargo bench -q -p palisade-keys --bench keys "$@"
