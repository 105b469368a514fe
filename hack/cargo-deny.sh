#!/usr/bin/env bash
# Installs cargo-deny from crates.io, for `make lint` (licenses, bans and
# sources of the dependency tree against deny.toml), into a cache folder of
# its own keyed by cargo-deny's version only, next to the binaries of
# hack/k8s-bins.sh, hack/helm-bin.sh and hack/tkn-bin.sh:
#
#   cargo-deny  from crates.io  (CARGO_DENY_VERSION), built with --locked
#
# Cache: ${TEKFED_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tekfed}/cargo-deny-<version>/
# A folder that is complete is reused as it is. The last line printed is
# the binary, so callers can do: DENY="$(hack/cargo-deny.sh | tail -n1)".
set -euo pipefail

CARGO_DENY_VERSION=${CARGO_DENY_VERSION:-0.20.2}

cache_root=${TEKFED_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tekfed}
root="$cache_root/cargo-deny-$CARGO_DENY_VERSION"
bin="$root/bin/cargo-deny"

say() { printf '[cargo-deny] %s\n' "$*" >&2; }
die() { printf '[cargo-deny] error: %s\n' "$*" >&2; exit 1; }

if [ -f "$root/.complete" ] && [ -x "$bin" ]; then
  say "reusing $bin"
  echo "$bin"
  exit 0
fi

command -v "${CARGO:-cargo}" >/dev/null 2>&1 || die "cargo is not installed; install Rust (rustup.rs) and run again."

# Built in a target folder of its own (not the workspace's), removed
# afterwards: only the binary is kept.
work=$(mktemp -d "${TMPDIR:-/tmp}/tekfed-cargo-deny.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$root"
say "building cargo-deny $CARGO_DENY_VERSION from crates.io (a few minutes the first time)"
CARGO_TARGET_DIR="$work/target" "${CARGO:-cargo}" install --locked --quiet \
  cargo-deny --version "=$CARGO_DENY_VERSION" --root "$root" >&2 \
  || die "cargo install cargo-deny $CARGO_DENY_VERSION failed (above)"
"$bin" --version >&2 || die "the built cargo-deny does not run: $bin --version"
touch "$root/.complete"
say "built $bin"
echo "$bin"
