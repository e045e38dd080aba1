#!/usr/bin/env bash
# The Debian package, end to end (run by scripts/test.sh as root, after the Rust tests built
# target/debug/palisade): build it with cargo-deb, install it with dpkg -i, check its files,
# its user, its unit (systemd-analyze verify), start the installed binary as that user with the
# installed config, reload it, stop it, and purge the package. Needs root; skipped (saying so)
# otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "test-package: SKIPPED (needs root to install the package)"
  exit 0
fi
fail() { echo "test-package: FAILED: $*" >&2; exit 1; }
deb=$(PROFILE=dev scripts/package.sh --no-build | tail -1)
[ -f "$deb" ] || fail "no package built"
pkill -u palisade 2>/dev/null || true
dpkg --purge palisade >/dev/null 2>&1 || true
DEBIAN_FRONTEND=noninteractive dpkg -i "$deb" >/dev/null || fail "dpkg -i"
trap 'pkill -u palisade 2>/dev/null; sleep 0.2; dpkg --purge palisade >/dev/null 2>&1 || true' EXIT

# Files.
for f in /usr/bin/palisade /etc/palisade/palisade.toml /usr/lib/systemd/system/palisade.service \
         /usr/share/man/man1/palisade.1.gz /usr/share/man/man1/palisade-serve.1.gz \
         /usr/share/bash-completion/completions/palisade /usr/share/zsh/vendor-completions/_palisade \
         /usr/share/fish/vendor_completions.d/palisade.fish \
         /usr/share/doc/palisade/examples/palisade.example.toml \
         /usr/share/palisade/deploy/nginx/palisade-auth-request.conf \
         /usr/share/palisade/deploy/prometheus/palisade-alerts.yml; do
  [ -e "$f" ] || fail "missing $f"
done
grep -qx /etc/palisade/palisade.toml /var/lib/dpkg/info/palisade.conffiles || fail "config is not a conffile"
zcat /usr/share/man/man1/palisade-replay.1.gz | grep -q "access logs" || fail "man page content"
grep -q "palisade" /usr/share/bash-completion/completions/palisade || fail "completions content"

# The user, and who owns what.
getent passwd palisade | grep -q ":/usr/sbin/nologin$" || fail "no palisade system user with nologin"
[ "$(stat -c %U:%G /var/lib/palisade)" = palisade:palisade ] || fail "/var/lib/palisade owner $(stat -c %U:%G /var/lib/palisade)"
[ "$(stat -c %a:%G /etc/palisade/palisade.toml)" = 640:palisade ] || fail "config mode/group $(stat -c %a:%G /etc/palisade/palisade.toml)"

# The unit.
out=$(systemd-analyze verify /usr/lib/systemd/system/palisade.service 2>&1) || fail "systemd-analyze verify: $out"
[ -z "$(echo "$out" | grep -i palisade || true)" ] || fail "systemd-analyze verify: $out"
for d in 'NoNewPrivileges=yes' 'ProtectSystem=strict' 'CapabilityBoundingSet=CAP_NET_BIND_SERVICE' 'ExecReload=/bin/kill -HUP $MAINPID'; do
  grep -qF "$d" /usr/lib/systemd/system/palisade.service || fail "unit lacks $d"
done

# The installed binary with the installed config, as the palisade user.
runuser -u palisade -- /usr/bin/palisade check --config /etc/palisade/palisade.toml >/dev/null || fail "palisade check of the installed config"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
p=$(port); a=$(port)
log=$(mktemp)
setpriv --reuid=palisade --regid=palisade --init-groups /usr/bin/palisade serve --config /etc/palisade/palisade.toml \
  --data-dir /var/lib/palisade --listen "127.0.0.1:$p" --admin-listen "127.0.0.1:$a" >"$log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$a/healthz" && break; sleep 0.1; done
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p/api/items/1") || true
[ "$code" = 200 ] || { cat "$log"; fail "proxy answered $code"; }
[ -s /var/lib/palisade/admin.token ] || fail "no admin token written in the data dir"
[ "$(stat -c %U /var/lib/palisade/admin.token)" = palisade ] || fail "admin token not owned by palisade"
kill -HUP "$pid"; sleep 0.5
kill -0 "$pid" || fail "died on SIGHUP"
kill -TERM "$pid"; wait "$pid" || fail "exit status $? on SIGTERM"

# Purge: the user and the data go.
trap - EXIT
dpkg --purge palisade 2>&1 | grep -v crontab || true
dpkg -s palisade >/dev/null 2>&1 && fail "still installed after purge"
! getent passwd palisade >/dev/null || fail "user left after purge"
[ ! -e /var/lib/palisade ] || fail "data left after purge"
echo "test-package: ok ($deb: installed, files, user, unit verified, served, reloaded, stopped, purged)"
