# tekfed: the two commands are `make demo` and `make test`.
SHELL := /bin/bash
# A script that fails in `x=$(script | tail -n1)` must fail the recipe.
.SHELLFLAGS := -o pipefail -c
.DEFAULT_GOAL := help
CARGO ?= cargo

.PHONY: help test demo demo-down bench bench-full soak bins crds lint fmt testbed

help:
	@echo "make test     build the Kubernetes test binaries, helm and tkn (cached), then run every test"
	@echo "make demo     start a local federation (hub + 3 members), show a burst spreading and a drain; it stays up"
	@echo "make demo-down  stop the demo's federation"
	@echo "make bench    quick benchmarks (about 3 minutes once built); make bench-full for the README's figures (about 8 min)"
	@echo "make soak     the chaos soak: 2,000+ runs over 10+ minutes on 3 members, a fault every ~20 s (SOAK_ARGS=\"--seed N\" repeats one)"
	@echo "make bins     build kube-apiserver, kubectl, etcd and fetch Tekton's CRDs (cached outside the repo)"
	@echo "make crds     regenerate api/manifests/ (and the hub chart's copies) from the Rust types, and the charts' RBAC rules (_rules.tpl) from api/src/rbac.rs"
	@echo "make lint     cargo fmt --check, clippy -D warnings, and cargo deny (licenses, bans, sources: deny.toml; cargo-deny built once, cached)"
	@echo "make testbed  start a hub + 2 members on real API servers until Ctrl-C"

# Prints the bin folder as its last line; quick when the cache is complete.
bins:
	@bash hack/k8s-bins.sh

test:
	@bin_dir=$$(bash hack/k8s-bins.sh | tail -n1) && \
	  helm_dir=$$(bash hack/helm-bin.sh | tail -n1) && \
	  tkn_dir=$$(bash hack/tkn-bin.sh | tail -n1) && \
	  $(CARGO) build --workspace --bins --examples --locked && \
	  TEKFED_K8S_BIN_DIR="$$bin_dir" TEKFED_HELM="$$helm_dir/helm" TEKFED_TKN="$$tkn_dir/tkn" \
	    $(CARGO) test --workspace --locked

crds:
	$(CARGO) run -q -p tekfed-api --example crdgen

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) clippy -p kubectl-tekfed --no-default-features --locked -- -D warnings
	@# The layering: the API crate has no HTTP client or TLS; a CLI built
	@# without the dev feature has no test bed.
	@! $(CARGO) tree -p tekfed-api -e normal --locked | grep -E 'hyper|rustls|tower|kube-client|tokio ' \
	  || { echo "tekfed-api must not depend on an HTTP client, TLS or a runtime (above)"; exit 1; }
	@! $(CARGO) tree -p kubectl-tekfed --no-default-features -e normal --locked | grep tekfed-testbed \
	  || { echo "kubectl-tekfed --no-default-features must not link the test bed"; exit 1; }
	@# Licenses, bans and sources against deny.toml; advisories need the
	@# RustSec database from github.com, out of CI's reach (see deny.toml).
	@deny=$$(bash hack/cargo-deny.sh | tail -n1) && \
	  "$$deny" --locked --offline check --hide-inclusion-graph licenses bans sources

fmt:
	$(CARGO) fmt --all

testbed:
	@bin_dir=$$(bash hack/k8s-bins.sh | tail -n1) && \
	  TEKFED_K8S_BIN_DIR="$$bin_dir" $(CARGO) run -q -p tekfed-tests --example testbed_up

# A local federation (hub + 3 members, hub controller, agents, the real
# Tekton on each member with pods played by kwok) that stays up after the demo.
demo:
	@bin_dir=$$(bash hack/k8s-bins.sh | tail -n1) && \
	  $(CARGO) build --workspace --bins --examples --locked && \
	  target=$$($(CARGO) metadata --format-version 1 --no-deps | sed -E 's/.*"target_directory":"([^"]*)".*/\1/') && \
	  TEKFED_K8S_BIN_DIR="$$bin_dir" "$$target/debug/kubectl-tekfed" dev up --members 3 --dir .tekfed-dev && \
	  echo "== kubectl apply -f examples/ (hello-world, git-clone-on-member-2, ci-with-credentials; build-and-deploy's run needs a PersistentVolume, which no provisioner makes here)" && \
	  "$$bin_dir/kubectl" --kubeconfig .tekfed-dev/kubeconfig --context hub apply \
	    -f examples/hello-world.yaml -f examples/git-clone-on-member-2.yaml -f examples/ci-with-credentials.yaml && \
	  "$$target/debug/examples/demo" .tekfed-dev/kubeconfig

demo-down:
	@target=$$($(CARGO) metadata --format-version 1 --no-deps | sed -E 's/.*"target_directory":"([^"]*)".*/\1/') && \
	  "$$target/debug/kubectl-tekfed" dev down --dir .tekfed-dev

# Benchmarks print figures and write target/bench/results.json; they never
# fail on time. The daemons run as release builds.
bench:
	@bin_dir=$$(bash hack/k8s-bins.sh | tail -n1) && \
	  $(CARGO) build --release --locked --workspace --bins --examples && \
	  target=$$($(CARGO) metadata --format-version 1 --no-deps | sed -E 's/.*"target_directory":"([^"]*)".*/\1/') && \
	  "$$target/release/examples/bench_scheduler" --quick && \
	  TEKFED_BIN_PROFILE=release TEKFED_K8S_BIN_DIR="$$bin_dir" "$$target/release/examples/bench"

bench-full:
	@bin_dir=$$(bash hack/k8s-bins.sh | tail -n1) && \
	  $(CARGO) build --release --locked --workspace --bins --examples && \
	  target=$$($(CARGO) metadata --format-version 1 --no-deps | sed -E 's/.*"target_directory":"([^"]*)".*/\1/') && \
	  "$$target/release/examples/bench_scheduler" && \
	  TEKFED_BIN_PROFILE=release TEKFED_K8S_BIN_DIR="$$bin_dir" "$$target/release/examples/bench" --full

# The chaos soak at full length (tests/examples/soak.rs); `make test` runs a
# short one. SOAK_ARGS passes --seed N, --runs, --minutes, --fault-every.
soak:
	@bin_dir=$$(bash hack/k8s-bins.sh | tail -n1) && \
	  $(CARGO) build --locked --workspace --bins --examples && \
	  target=$$($(CARGO) metadata --format-version 1 --no-deps | sed -E 's/.*"target_directory":"([^"]*)".*/\1/') && \
	  TEKFED_K8S_BIN_DIR="$$bin_dir" "$$target/debug/examples/soak" $(SOAK_ARGS)
