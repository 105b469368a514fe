#!/usr/bin/env bash
# Builds the Tekton CLI `tkn` from its Go module, for the test that reads a
# member's runs with it (tests/tests/tkn.rs), into a cache folder of its own
# keyed by tkn's version only, so bumping tkn never rebuilds the Kubernetes
# binaries of hack/k8s-bins.sh or helm:
#
#   tkn  from github.com/tektoncd/cli cmd/tkn  (TKN_VERSION)
#
# Cache: ${TEKFED_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tekfed}/tkn-<version>/
# A folder that is complete is reused as it is. The last line printed is
# the folder, so callers can do: TKN="$(hack/tkn-bin.sh | tail -n1)/tkn".
set -euo pipefail

TKN_VERSION=${TKN_VERSION:-v0.44.0}

cache_root=${TEKFED_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tekfed}
bin_dir="$cache_root/tkn-$TKN_VERSION"

say() { printf '[tkn-bin] %s\n' "$*" >&2; }
die() { printf '[tkn-bin] error: %s\n' "$*" >&2; exit 1; }

if [ -f "$bin_dir/.complete" ] && [ -x "$bin_dir/tkn" ]; then
  say "reusing $bin_dir"
  echo "$bin_dir"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "Go is not installed. It is needed to build tkn for the tests (the product itself is Rust). Install Go 1.26 or newer and run again."
go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
[ "${go_minor:-0}" -ge 26 ] || die "Go $(go env GOVERSION) is too old; the tests build tkn $TKN_VERSION with Go 1.26 or newer."

export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-local}
work=$(mktemp -d "${TMPDIR:-/tmp}/tekfed-tkn-bin.XXXXXX")
trap 'rm -rf "$work"' EXIT

say "fetching github.com/tektoncd/cli@$TKN_VERSION (module metadata)"
if ! json=$(go mod download -json "github.com/tektoncd/cli@$TKN_VERSION" 2>&1); then
  answer=$(printf '%s' "$json" | sed -n -E 's/^\s*"Error": "(.*)",?$/\1/p')
  die "cannot fetch github.com/tektoncd/cli@$TKN_VERSION from the Go module proxy ($(go env GOPROXY)): ${answer:-$json}"
fi
gomod=$(printf '%s' "$json" | sed -n -E 's/^\s*"GoMod": "(.*)",?$/\1/p')
[ -f "$gomod" ] || die "no go.mod for github.com/tektoncd/cli@$TKN_VERSION"
go_directive=$(sed -n -E 's/^go ([0-9.]+)$/\1/p' "$gomod" | head -n1)

# tkn's go.mod pins some modules with `replace` lines (`go install
# ...@version` refuses such a module), which a wrapper module must repeat to
# resolve the same versions. Copy every one, block or single line, as
# hack/k8s-bins.sh does for Tekton.
replaces=$(awk '
  /^replace \($/ { block = 1; next }
  block && /^\)$/ { block = 0; next }
  block && /=>/ { sub(/\/\/.*/, ""); print "replace " $0; next }
  /^replace [^(]/ { sub(/\/\/.*/, ""); print }
' "$gomod")

# Except one: since v0.44.0 tkn swaps github.com/tektoncd/hub (v1.23.6) for
# the fork github.com/openshift-pipelines/hub v1.23.7, and a module proxy
# may serve neither (403 "This module version is not available") nor
# sum.golang.org a checksum for them. Then the wrapper falls back on
# github.com/tektoncd/hub v1.23.1, the version tkn v0.43.0 ships with,
# checked against the hash in tkn v0.43.0's go.sum (below) rather than the
# checksum database. Only `tkn hub` uses that module; no test runs it.
HUB_FALLBACK="github.com/tektoncd/hub v1.23.1"
HUB_FALLBACK_SUMS="github.com/tektoncd/hub v1.23.1 h1:OWHs7IpwZaF3iGn9mDLGEDajTtw5zcdvMuI+vxDUmDQ=
github.com/tektoncd/hub v1.23.1/go.mod h1:N9QdNJyvMfFJ5aVg9MBLXVbsrk8mlbe9wu3jGmdk2Xs="
kept=()
sums=""
while read -r line; do
  [ -n "$line" ] || continue
  from=${line#replace }; from=${from%% =>*}
  read -r to version <<< "${line#*=> }"
  if [ "$from" = github.com/tektoncd/hub ] && [ -n "${version:-}" ] \
    && ! answer=$(go mod download -json "$to@$version" 2>&1); then
    answer=$(printf '%s' "$answer" | sed -n -E 's/^\s*"Error": "(.*)",?$/\1/p')
    say "warning: the module proxy does not serve $to@$version, which tkn $TKN_VERSION uses for $from: ${answer:-no answer}"
    say "warning: building tkn with $HUB_FALLBACK instead (only \`tkn hub\` uses it)"
    kept+=("replace $from => $HUB_FALLBACK")
    sums=$HUB_FALLBACK_SUMS
  else
    kept+=("$line")
  fi
done <<< "$replaces"

mod="$work/tkn"
mkdir -p "$mod"
{
  echo "module tekfed.local/tknbin"
  echo
  echo "go $go_directive"
  echo
  echo "require github.com/tektoncd/cli $TKN_VERSION"
  echo
  for line in "${kept[@]}"; do echo "$line"; done
} > "$mod/go.mod"
[ -z "$sums" ] || printf '%s\n' "$sums" > "$mod/go.sum"
say "the wrapper module's replace lines:"
for line in "${kept[@]}"; do say "  $line"; done

# What tkn's release build sets (.goreleaser.yml: clientVersion={{.Version}},
# the tag without its `v`), so `tkn version` reports this version, not "dev".
ldflags="-s -w -X github.com/tektoncd/cli/pkg/cmd/version.clientVersion=${TKN_VERSION#v}"

mkdir -p "$bin_dir"
say "resolving dependencies of tkn"
(cd "$mod" && go get "github.com/tektoncd/cli/cmd/tkn@$TKN_VERSION" >&2) || die "go get github.com/tektoncd/cli/cmd/tkn@$TKN_VERSION failed"
say "building tkn $TKN_VERSION (several minutes the first time)"
(cd "$mod" && go build -trimpath -ldflags "$ldflags" -o "$bin_dir/tkn.tmp" github.com/tektoncd/cli/cmd/tkn) \
  || die "building tkn failed"
mv "$bin_dir/tkn.tmp" "$bin_dir/tkn"
# What the binary was built from, replace lines included.
cp "$mod/go.mod" "$bin_dir/tkn-wrapper.go.mod"
# No kubeconfig here on purpose: `tkn version` then prints the client only.
"$bin_dir/tkn" version --component client --kubeconfig /dev/null >&2 \
  || die "the built tkn does not run: $bin_dir/tkn version"
touch "$bin_dir/.complete"
say "built $bin_dir/tkn"
echo "$bin_dir"
