# tekfed: the two commands are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo

.PHONY: help test demo bins crds lint fmt testbed

help:
	@echo "make test     build the Kubernetes test binaries and helm (cached), then run every test"
	@echo "make demo     start a local federation and show runs spreading (not built yet)"
	@echo "make bins     build kube-apiserver, kubectl, etcd and fetch Tekton's CRDs (cached outside the repo)"
	@echo "make crds     regenerate crds/manifests/ (and the hub chart's copies) from the Rust types"
	@echo "make lint     cargo fmt --check and clippy -D warnings"
	@echo "make testbed  start a hub + 2 members on real API servers until Ctrl-C"

# Prints the bin folder as its last line; quick when the cache is complete.
bins:
	@bash hack/k8s-bins.sh

test:
	@bin_dir=$$(bash hack/k8s-bins.sh | tail -n1) && \
	  helm_dir=$$(bash hack/helm-bin.sh | tail -n1) && \
	  $(CARGO) build --workspace --bins --examples --locked && \
	  TEKFED_K8S_BIN_DIR="$$bin_dir" TEKFED_HELM="$$helm_dir/helm" $(CARGO) test --workspace --locked

crds:
	$(CARGO) run -q -p tekfed-crds --example crdgen

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

testbed:
	@bin_dir=$$(bash hack/k8s-bins.sh | tail -n1) && \
	  TEKFED_K8S_BIN_DIR="$$bin_dir" $(CARGO) run -q -p tekfed-tests --example testbed_up

demo:
	@echo "make demo: not yet. The local federation demo (hub, members, agents and runs"
	@echo "spreading across them) comes with the cluster-lifecycle issue (kubectl tekfed dev up)."
	@echo "Today you can start the real control planes it will use: make testbed"
