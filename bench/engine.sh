#!/usr/bin/env bash
# The engine micro-benchmark: one request through identity + 5 matching limits + decision, warm
# state. Budget: median <= 2 µs. Prints divan's table (fastest / slowest / median / mean).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -q -p palisade-engine --bench engine "$@"
