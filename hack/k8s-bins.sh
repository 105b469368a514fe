#!/usr/bin/env bash
# Builds the real Kubernetes binaries tekfed's tests and demo run against,
# from their Go modules, into a cache folder outside the repository:
#
#   kube-apiserver, kubectl,  from k8s.io/kubernetes        (K8S_VERSION)
#   kube-scheduler,
#   kube-controller-manager
#   etcd                      from go.etcd.io/etcd/server/v3 (ETCD_VERSION)
#   tekton-controller,        from github.com/tektoncd/pipeline cmd/controller
#   tekton-webhook                 and cmd/webhook (TEKTON_VERSION)
#   tekton-crds/*.yaml        its config/300-crds, conversion webhook removed
#   tekton-config/*.yaml      its config/100-namespace, config-*.yaml, 500-webhooks
#   tekton-examples/          its examples/v1 (the end-to-end tests run some)
#   kwok, kwok-stages/*.yaml  from sigs.k8s.io/kwok (KWOK_VERSION) and its
#                             kustomize/stage (node and pod stages)
#   kwok-crds/*.yaml          its Logs CRD (kustomize/crd/bases), through
#                             which kwok serves container logs
#
# Each member of the test bed runs the real Tekton controller and webhook,
# kube-scheduler (binds pods), kube-controller-manager (the `default`
# ServiceAccount of each namespace) and kwok (plays the bound pods on a
# fake Node), since no kubelet or container runtime runs here.
#
# Cache: ${TEKFED_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tekfed}/<versions>/
# A folder that is complete is reused as it is; a part added later (each
# has a .complete of its own) is added to it without rebuilding the rest.
# The last line printed is the bin folder, so callers can do:
# BIN=$(hack/k8s-bins.sh | tail -n1).
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
TEKTON_VERSION=${TEKTON_VERSION:-v1.9.0}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}

cache_root=${TEKFED_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tekfed}
bin_dir="$cache_root/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-tekton-$TEKTON_VERSION-kwok-$KWOK_VERSION"

say() { printf '[k8s-bins] %s\n' "$*" >&2; }
die() { printf '[k8s-bins] error: %s\n' "$*" >&2; exit 1; }

if [ -f "$bin_dir/.complete" ] && [ -f "$bin_dir/kwok-crds/.complete" ]; then
  say "reusing $bin_dir"
  echo "$bin_dir"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "Go is not installed. It is needed to build kube-apiserver, kubectl, etcd, Tekton and kwok (the product itself is Rust). Install Go 1.26 or newer and run again."
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

# --- kube-apiserver, kubectl, kube-scheduler, kube-controller-manager -------
k8s_cmds="kube-apiserver kubectl kube-scheduler kube-controller-manager"
missing=""
for cmd in $k8s_cmds; do [ -x "$bin_dir/$cmd" ] || missing+=" $cmd"; done
if [ -n "$missing" ]; then
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
  for cmd in $missing; do
    say "resolving dependencies of $cmd"
    (cd "$mod" && go get "k8s.io/kubernetes/cmd/$cmd@$K8S_VERSION" >&2) || die "go get k8s.io/kubernetes/cmd/$cmd failed"
    say "building $cmd $K8S_VERSION (a few minutes and ~2 GiB of RAM the first time; later ones share the build cache)"
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
  say "fetching github.com/tektoncd/pipeline@$TEKTON_VERSION (CRDs and config)"
  dir=$(download "github.com/tektoncd/pipeline@$TEKTON_VERSION" Dir)
  [ -d "$dir/config/300-crds" ] || die "github.com/tektoncd/pipeline@$TEKTON_VERSION has no config/300-crds"
  mkdir -p "$bin_dir/tekton-crds"
  # All eight: the controller starts its controllers only once every
  # Tekton kind it watches is served.
  for kind in task taskrun pipeline pipelinerun customrun stepaction resolutionrequest verificationpolicy; do
    # Drop the top-level `spec.conversion` block (strategy Webhook, service
    # port 443): the webhook serves on a port of its own per member, and
    # tekfed reads and writes every kind at its storage version, which
    # never needs conversion. Admission (defaulting, validation) does go
    # through the real webhook.
    awk '
      /^  conversion:/ { skip = 1; next }
      skip && /^(  )?[^ ]/ { skip = 0 }
      !skip { print }
    ' "$dir/config/300-crds/300-$kind.yaml" > "$bin_dir/tekton-crds/$kind.yaml"
    grep -q 'conversion:' "$bin_dir/tekton-crds/$kind.yaml" && grep -q 'strategy: Webhook' "$bin_dir/tekton-crds/$kind.yaml" \
      && die "could not strip the conversion webhook from 300-$kind.yaml"
  done
  mkdir -p "$bin_dir/tekton-config"
  cp "$dir/config/100-namespace/100-namespace.yaml" "$bin_dir/tekton-config/100-namespace.yaml"
  cp "$dir/config/500-webhooks.yaml" "$bin_dir/tekton-config/500-webhooks.yaml"
  for f in "$dir"/config/config-*.yaml; do cp "$f" "$bin_dir/tekton-config/"; done
  chmod -R u+w "$bin_dir/tekton-crds" "$bin_dir/tekton-config"
  # A source build says "devel"; tools (tkn, the agent) read the version here.
  sed -i -E "s/^(  version: )\"devel\"/\1\"$TEKTON_VERSION\"/" "$bin_dir/tekton-config/config-info.yaml"
  touch "$bin_dir/tekton-crds/.complete"
  say "Tekton $TEKTON_VERSION CRDs in $bin_dir/tekton-crds, its config in $bin_dir/tekton-config"
fi

if [ ! -f "$bin_dir/tekton-examples/.complete" ]; then
  dir=$(download "github.com/tektoncd/pipeline@$TEKTON_VERSION" Dir)
  rm -rf "$bin_dir/tekton-examples"
  cp -r "$dir/examples/v1" "$bin_dir/tekton-examples"
  chmod -R u+w "$bin_dir/tekton-examples"
  touch "$bin_dir/tekton-examples/.complete"
  say "Tekton $TEKTON_VERSION examples in $bin_dir/tekton-examples"
fi

# --- Tekton controller and webhook -----------------------------------------
if [ ! -x "$bin_dir/tekton-controller" ] || [ ! -x "$bin_dir/tekton-webhook" ]; then
  say "fetching github.com/tektoncd/pipeline@$TEKTON_VERSION (module metadata)"
  gomod=$(download "github.com/tektoncd/pipeline@$TEKTON_VERSION" GoMod)
  [ -f "$gomod" ] || die "no go.mod for github.com/tektoncd/pipeline@$TEKTON_VERSION"
  go_directive=$(sed -n -E 's/^go ([0-9.]+)$/\1/p' "$gomod" | head -n1)
  mod="$work/tekton"
  mkdir -p "$mod"
  # Tekton's go.mod pins some modules with `replace` lines, which a
  # wrapper module must repeat to resolve the same versions (`go install
  # ...@version` refuses a module with replace lines). Copy every one,
  # block or single line.
  {
    echo "module tekfed.local/tektonbins"
    echo
    echo "go $go_directive"
    echo
    echo "require github.com/tektoncd/pipeline $TEKTON_VERSION"
    echo
    awk '
      /^replace \($/ { block = 1; next }
      block && /^\)$/ { block = 0; next }
      block && /=>/ { sub(/\/\/.*/, ""); print "replace " $0; next }
      /^replace [^(]/ { sub(/\/\/.*/, ""); print }
    ' "$gomod"
  } > "$mod/go.mod"
  say "wrapper module repeats Tekton's $(grep -c '=>' "$mod/go.mod") replace lines"
  (cd "$mod" && go get "github.com/tektoncd/pipeline/cmd/controller@$TEKTON_VERSION" "github.com/tektoncd/pipeline/cmd/webhook@$TEKTON_VERSION" >&2) \
    || die "go get github.com/tektoncd/pipeline/cmd/{controller,webhook} failed"
  for cmd in controller webhook; do
    [ -x "$bin_dir/tekton-$cmd" ] && continue
    say "building Tekton's $cmd $TEKTON_VERSION (several minutes and ~1.3 GiB of RAM the first time)"
    (cd "$mod" && go build -trimpath -ldflags "-s -w" -o "$bin_dir/tekton-$cmd.tmp" "github.com/tektoncd/pipeline/cmd/$cmd") \
      || die "building Tekton's $cmd failed"
    mv "$bin_dir/tekton-$cmd.tmp" "$bin_dir/tekton-$cmd"
    say "built $bin_dir/tekton-$cmd"
  done
fi

# --- kwok and its stages ---------------------------------------------------
if [ ! -x "$bin_dir/kwok" ] || [ ! -f "$bin_dir/kwok-stages/.complete" ]; then
  say "fetching sigs.k8s.io/kwok@$KWOK_VERSION"
  dir=$(download "sigs.k8s.io/kwok@$KWOK_VERSION" Dir)
  if [ ! -x "$bin_dir/kwok" ]; then
    say "building kwok $KWOK_VERSION (a few minutes the first time)"
    GOBIN="$work/kwok-bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" \
      || die "building kwok failed"
    mv "$work/kwok-bin/kwok" "$bin_dir/kwok"
    say "built $bin_dir/kwok"
  fi
  # kwok ships no stages by default: its own for a Node's life and for a
  # pod's readiness and deletion. How a Tekton pod ends is tekfed's
  # (tests/kwok/), since kwok's pod-complete only matches Job pods.
  mkdir -p "$bin_dir/kwok-stages"
  for f in node/fast/node-initialize node/heartbeat/node-heartbeat pod/fast/pod-ready pod/fast/pod-delete; do
    [ -f "$dir/kustomize/stage/$f.yaml" ] || die "sigs.k8s.io/kwok@$KWOK_VERSION has no kustomize/stage/$f.yaml"
    cp "$dir/kustomize/stage/$f.yaml" "$bin_dir/kwok-stages/"
  done
  chmod -R u+w "$bin_dir/kwok-stages"
  touch "$bin_dir/kwok-stages/.complete"
fi

# kwok serves a container's log from the file a Logs object names (one per
# pod, written by the test bed); it watches them once the CRD is installed.
if [ ! -f "$bin_dir/kwok-crds/.complete" ]; then
  dir=$(download "sigs.k8s.io/kwok@$KWOK_VERSION" Dir)
  crd="$dir/kustomize/crd/bases/kwok.x-k8s.io_logs.yaml"
  [ -f "$crd" ] || die "sigs.k8s.io/kwok@$KWOK_VERSION has no kustomize/crd/bases/kwok.x-k8s.io_logs.yaml"
  mkdir -p "$bin_dir/kwok-crds"
  cp "$crd" "$bin_dir/kwok-crds/"
  chmod -R u+w "$bin_dir/kwok-crds"
  touch "$bin_dir/kwok-crds/.complete"
  say "kwok's Logs CRD in $bin_dir/kwok-crds"
fi

"$bin_dir/kube-apiserver" --version >&2
"$bin_dir/etcd" --version | head -n1 >&2
touch "$bin_dir/.complete"
echo "$bin_dir"
