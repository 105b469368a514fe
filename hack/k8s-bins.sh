#!/usr/bin/env bash
# Builds the real Kubernetes binaries tekfed's tests and demo run against,
# from their Go modules, into a cache folder outside the repository:
#
#   kube-apiserver, kubectl  from k8s.io/kubernetes        (K8S_VERSION)
#   etcd                     from go.etcd.io/etcd/server/v3 (ETCD_VERSION)
#   tekton-crds/*.yaml       from github.com/tektoncd/pipeline config/300-crds
#                            (TEKTON_VERSION), conversion webhook removed
#
# Cache: ${TEKFED_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tekfed}/<versions>/
# A folder that is complete is reused as it is. The last line printed is
# the bin folder, so callers can do: BIN=$(hack/k8s-bins.sh | tail -n1).
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
TEKTON_VERSION=${TEKTON_VERSION:-v1.9.0}

cache_root=${TEKFED_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tekfed}
bin_dir="$cache_root/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-tekton-$TEKTON_VERSION"

say() { printf '[k8s-bins] %s\n' "$*" >&2; }
die() { printf '[k8s-bins] error: %s\n' "$*" >&2; exit 1; }

if [ -f "$bin_dir/.complete" ]; then
  say "reusing $bin_dir"
  echo "$bin_dir"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "Go is not installed. It is needed to build kube-apiserver, kubectl and etcd (the product itself is Rust). Install Go 1.26 or newer and run again."
go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
[ "${go_minor:-0}" -ge 26 ] || die "Go $(go env GOVERSION) is too old; Kubernetes $K8S_VERSION needs Go 1.26 or newer."

export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-local}
mkdir -p "$bin_dir"
work=$(mktemp -d "${TMPDIR:-/tmp}/tekfed-k8s-bins.XXXXXX")
trap 'rm -rf "$work"' EXIT

download() { # module@version -> JSON field value
  local json
  json=$(go mod download -json "$1" 2>&1) || die "cannot fetch $1 from the Go module proxy ($(go env GOPROXY)): $json"
  printf '%s' "$json" | sed -n -E "s/^\s*\"$2\": \"(.*)\",?$/\1/p"
}

# --- kube-apiserver and kubectl -------------------------------------------
if [ ! -x "$bin_dir/kube-apiserver" ] || [ ! -x "$bin_dir/kubectl" ]; then
  say "fetching k8s.io/kubernetes@$K8S_VERSION (module metadata)"
  gomod=$(download "k8s.io/kubernetes@$K8S_VERSION" GoMod)
  [ -f "$gomod" ] || die "no go.mod for k8s.io/kubernetes@$K8S_VERSION"
  go_directive=$(sed -n -E 's/^go ([0-9.]+)$/\1/p' "$gomod" | head -n1)
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces
  # them with folders of its own repository; outside it they are the
  # published modules at v0.<minor>.<patch>. Generate that list from the
  # real go.mod so a new staging module is never missed.
  staging_version="v0.${K8S_VERSION#v1.}"
  mod="$work/k8s"
  mkdir -p "$mod"
  {
    echo "module tekfed.local/k8sbins"
    echo
    echo "go $go_directive"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    sed -n -E 's/^\s+(k8s\.io\/[a-z0-9.\/-]+) v0\.0\.0$/\1/p' "$gomod" | sort -u | while read -r m; do
      echo "	$m => $m $staging_version"
    done
    echo ")"
  } > "$mod/go.mod"
  say "wrapper module replaces $(grep -c '=>' "$mod/go.mod") staging modules with $staging_version"
  minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  for cmd in kube-apiserver kubectl; do
    [ -x "$bin_dir/$cmd" ] && continue
    say "resolving dependencies of $cmd"
    (cd "$mod" && go get "k8s.io/kubernetes/cmd/$cmd@$K8S_VERSION" >&2) || die "go get k8s.io/kubernetes/cmd/$cmd failed"
    say "building $cmd $K8S_VERSION (several minutes and ~2 GiB of RAM the first time)"
    (cd "$mod" && go build -trimpath -tags selinux,notest -ldflags "$ldflags" \
      -o "$bin_dir/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd") || die "building $cmd failed"
    mv "$bin_dir/$cmd.tmp" "$bin_dir/$cmd"
    say "built $bin_dir/$cmd"
  done
fi

# --- etcd ------------------------------------------------------------------
if [ ! -x "$bin_dir/etcd" ]; then
  mod="$work/etcd"
  mkdir -p "$mod"
  say "fetching go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  download "go.etcd.io/etcd/server/v3@$ETCD_VERSION" Dir >/dev/null
  # etcd's server module replaces its sibling modules with relative paths;
  # from a wrapper module those replaces do not apply and the published
  # siblings at the same version are used instead.
  printf 'module tekfed.local/etcdbin\n\ngo 1.25\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > "$mod/go.mod"
  (cd "$mod" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2) || die "go get etcd failed"
  say "building etcd $ETCD_VERSION"
  (cd "$mod" && go build -trimpath -ldflags "-s -w" -o "$bin_dir/etcd.tmp" go.etcd.io/etcd/server/v3) || die "building etcd failed"
  mv "$bin_dir/etcd.tmp" "$bin_dir/etcd"
  say "built $bin_dir/etcd"
fi

# --- Tekton CRDs -----------------------------------------------------------
if [ ! -f "$bin_dir/tekton-crds/.complete" ]; then
  say "fetching github.com/tektoncd/pipeline@$TEKTON_VERSION (CRDs only)"
  dir=$(download "github.com/tektoncd/pipeline@$TEKTON_VERSION" Dir)
  [ -d "$dir/config/300-crds" ] || die "github.com/tektoncd/pipeline@$TEKTON_VERSION has no config/300-crds"
  mkdir -p "$bin_dir/tekton-crds"
  for kind in task taskrun pipeline pipelinerun; do
    # No Tekton webhook runs in the test bed: drop the top-level
    # `spec.conversion` block (strategy Webhook). Objects stored at v1 and
    # read at v1 never need conversion.
    awk '
      /^  conversion:/ { skip = 1; next }
      skip && /^(  )?[^ ]/ { skip = 0 }
      !skip { print }
    ' "$dir/config/300-crds/300-$kind.yaml" > "$bin_dir/tekton-crds/$kind.yaml"
    grep -q 'conversion:' "$bin_dir/tekton-crds/$kind.yaml" && grep -q 'strategy: Webhook' "$bin_dir/tekton-crds/$kind.yaml" \
      && die "could not strip the conversion webhook from 300-$kind.yaml"
  done
  touch "$bin_dir/tekton-crds/.complete"
  say "Tekton $TEKTON_VERSION CRDs in $bin_dir/tekton-crds"
fi

"$bin_dir/kube-apiserver" --version >&2
"$bin_dir/etcd" --version | head -n1 >&2
touch "$bin_dir/.complete"
echo "$bin_dir"
