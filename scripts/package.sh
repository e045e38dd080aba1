#!/usr/bin/env bash
# Builds the Debian package with cargo-deb: target/debian/palisade_<version>-1_<arch>.deb.
#
#   scripts/package.sh            the release build (what you ship)
#   PROFILE=dev scripts/package.sh --no-build
#                                 packages the debug build already made (the tests do this)
#
# Generated first, into target/deb-assets/: the man pages and bash/zsh/fish completions (from
# the CLI definition) and /etc/palisade/palisade.toml (the embedded default policy with its data
# in /var/lib/palisade). Installs cargo-deb when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked --quiet
dir=$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
if [[ " $* " != *" --no-build "* ]]; then
  cargo build --locked -p palisade --profile "$PROFILE"
fi
assets=target/deb-assets
rm -rf "$assets" && mkdir -p "$assets"
"target/$dir/palisade" generate "$assets"
gzip -9n "$assets"/man/*.1
{
  cat <<'HEAD'
# /etc/palisade/palisade.toml: Palisade's policy — the embedded default, with its data in
# /var/lib/palisade. Every setting is explained in
# /usr/share/doc/palisade/examples/palisade.example.toml and in the README.
#
# Put your API behind it by adding
#
#   [[upstreams]]
#   name = "api"
#   url = "http://127.0.0.1:3000"
#
# (with no [[upstreams]] the gateway serves its built-in sample API). Check a change with
# `palisade check --config /etc/palisade/palisade.toml`, apply it with
# `systemctl reload palisade` (a config with errors is refused and the old policy kept).

HEAD
  sed 's|^data_dir = .*|data_dir = "/var/lib/palisade"|' crates/palisade-config/src/default.toml
} > "$assets/palisade.toml"
grep -q '^data_dir = "/var/lib/palisade"' "$assets/palisade.toml"
rest=()
for a in "$@"; do [ "$a" = --no-build ] || rest+=("$a"); done
# (cargo-deb warns that generated assets are not build outputs: they are not meant to be.)
cargo deb -p palisade --no-build --profile "$PROFILE" ${rest[@]+"${rest[@]}"} 2>&1 \
  | grep -v "are detected as Cargo target dir" || true
ls -1 target/debian/palisade_*.deb | tail -1
