#!/usr/bin/env bash
# Builds `helm` from its Go module, for the chart test (tests/tests/helm.rs),
# into a cache folder of its own, next to the Kubernetes binaries of
# hack/k8s-bins.sh but keyed by helm's version only, so bumping helm never
# rebuilds kube-apiserver:
#
#   helm  from helm.sh/helm/v3 cmd/helm  (HELM_VERSION)
#
# Cache: ${TEKFED_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tekfed}/helm-<version>/
# A folder that is complete is reused as it is. The last line printed is
# the folder, so callers can do: HELM="$(hack/helm-bin.sh | tail -n1)/helm".
set -euo pipefail

HELM_VERSION=${HELM_VERSION:-v3.22.0}

cache_root=${TEKFED_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tekfed}
bin_dir="$cache_root/helm-$HELM_VERSION"

say() { printf '[helm-bin] %s\n' "$*" >&2; }
die() { printf '[helm-bin] error: %s\n' "$*" >&2; exit 1; }

if [ -f "$bin_dir/.complete" ] && [ -x "$bin_dir/helm" ]; then
  say "reusing $bin_dir"
  echo "$bin_dir"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "Go is not installed. It is needed to build helm for the chart test (the product itself is Rust). Install Go 1.26 or newer and run again."
go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
[ "${go_minor:-0}" -ge 26 ] || die "Go $(go env GOVERSION) is too old; helm $HELM_VERSION needs Go 1.26 or newer."

export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-local}
mkdir -p "$bin_dir"
work=$(mktemp -d "${TMPDIR:-/tmp}/tekfed-helm-bin.XXXXXX")
trap 'rm -rf "$work"' EXIT

say "fetching helm.sh/helm/v3@$HELM_VERSION (module metadata)"
json=$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" 2>&1) \
  || die "cannot fetch helm.sh/helm/v3@$HELM_VERSION from the Go module proxy ($(go env GOPROXY)): $json"
gomod=$(printf '%s' "$json" | sed -n -E 's/^\s*"GoMod": "(.*)",?$/\1/p')
[ -f "$gomod" ] || die "no go.mod for helm.sh/helm/v3@$HELM_VERSION"
go_directive=$(sed -n -E 's/^go ([0-9.]+)$/\1/p' "$gomod" | head -n1)
# helm's go.mod has no replace directives, so a wrapper module that only
# requires it resolves exactly helm's own dependency versions.
grep -q '^replace' "$gomod" && die "helm.sh/helm/v3@$HELM_VERSION has replace directives; the wrapper module must copy them"

# What helm's Makefile sets: its version, and the Kubernetes version it
# reports as .Capabilities.KubeVersion (client-go's minor, major 0 -> 1).
client_go=$(sed -n -E 's/^\s+k8s\.io\/client-go v0\.([0-9]+)\..*$/\1/p' "$gomod" | head -n1)
[ -n "$client_go" ] || die "cannot find k8s.io/client-go in helm's go.mod"
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$client_go"
done

mod="$work/helm"
mkdir -p "$mod"
printf 'module tekfed.local/helmbin\n\ngo %s\n\nrequire helm.sh/helm/v3 %s\n' "$go_directive" "$HELM_VERSION" > "$mod/go.mod"
say "resolving dependencies of helm"
(cd "$mod" && go get "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2) || die "go get helm.sh/helm/v3/cmd/helm failed"
say "building helm $HELM_VERSION (a few minutes the first time)"
(cd "$mod" && go build -trimpath -ldflags "$ldflags" -o "$bin_dir/helm.tmp" helm.sh/helm/v3/cmd/helm) \
  || die "building helm failed"
mv "$bin_dir/helm.tmp" "$bin_dir/helm"
"$bin_dir/helm" version --short >&2
touch "$bin_dir/.complete"
say "built $bin_dir/helm"
echo "$bin_dir"
