# ModelGuard Makefile. `make help` lists the targets.
SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec
.DEFAULT_GOAL := help

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
K8S_VERSION := 1.37.2
BIN := $(CURDIR)/bin
K8S_BIN := $(BIN)/k8s/$(K8S_VERSION)
# Control-plane binaries are cached outside the work tree so that a fresh
# clone on the same machine (CI) does not relink them.
export MODELGUARD_CACHE ?= $(HOME)/.cache/modelguard
export KUBEBUILDER_ASSETS := $(K8S_BIN)

CONTROLLER_GEN := $(BIN)/controller-gen
# Tests find helm and kustomize through these variables and fail, naming the
# make target, when they are missing.
export HELM := $(BIN)/helm
export KUSTOMIZE := $(BIN)/kustomize
K8S_MINOR := $(word 2,$(subst ., ,$(K8S_VERSION)))
IMG ?= modelguard:$(VERSION)
# The chart's ServiceMonitor and PodMonitor are dry-run applied against the
# real prometheus-operator CRDs, taken from its Go module.
PROMETHEUS_OPERATOR_VERSION := v0.85.0
export MONITORING_CRDS := $(BIN)/crds/monitoring.coreos.com-$(PROMETHEUS_OPERATOR_VERSION)
# The chart's cert-manager Issuers and Certificates (certManager.enabled) are
# dry-run applied against the real cert-manager CRDs, taken from its Go module.
CERT_MANAGER_VERSION := v1.21.2
export CERT_MANAGER_CRDS := $(BIN)/crds/cert-manager.io-$(CERT_MANAGER_VERSION)
GO_LDFLAGS := -X github.com/modelguard/modelguard/internal/version.Version=$(VERSION)

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z0-9_-]+:.*?##/ { printf "  %-20s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate deepcopy and applyconfiguration code for the API.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths=./api/...
	$(CONTROLLER_GEN) applyconfiguration:headerFile=hack/boilerplate.go.txt paths=./api/...

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate CRDs and RBAC from the Go types and markers.
	$(CONTROLLER_GEN) crd paths=./api/... output:crd:artifacts:config=config/crd/bases
	$(CONTROLLER_GEN) rbac:roleName=manager-role paths="./controllers/...;./internal/metrics/...;./internal/keyrelease/...;./internal/webhook/..." output:rbac:artifacts:config=config/rbac

.PHONY: verify
verify: generate manifests helm-sync argocd-cm fmt-check ## Fail when generated files are stale or Go files are not gofmt'ed.
	@if [ -n "$$(git status --porcelain -- api config charts)" ]; then \
	  echo "Generated files are stale; run 'make generate manifests helm-sync argocd-cm' and commit:"; \
	  git status --porcelain -- api config charts; git --no-pager diff --stat -- api config charts; exit 1; fi

.PHONY: helm-sync
helm-sync: manifests ## Copy the generated CRDs and manager RBAC rules from config/ into the Helm chart.
	cp config/crd/bases/*.yaml charts/modelguard/crds/
	cp config/rbac/role.yaml charts/modelguard/files/manager-role.yaml

.PHONY: argocd-cm
argocd-cm: ## Regenerate the Argo CD argocd-cm patch from the health.lua checks in config/argocd.
	hack/argocd-cm.sh > config/argocd/argocd-cm-patch.yaml

.PHONY: helm-lint
helm-lint: $(HELM) ## Lint the Helm chart with default values, every option set, and cert-manager certificates.
	$(HELM) lint --strict charts/modelguard
	$(HELM) lint --strict charts/modelguard -f charts/modelguard/ci/all-options-values.yaml
	$(HELM) lint --strict charts/modelguard -f charts/modelguard/ci/cert-manager-values.yaml

.PHONY: fmt-check
fmt-check: ## Fail when a Go file is not gofmt'ed.
	@bad=$$(gofmt -l $$(git ls-files --cached --others --exclude-standard -- '*.go')); \
	  if [ -n "$$bad" ]; then echo "gofmt needed on:"; echo "$$bad"; exit 1; fi

.PHONY: vet
vet: ## Run go vet.
	go vet ./...

##@ Test

.PHONY: test
# In CI (CI=true) the test run also fails on stale generated files; locally it
# only checks formatting, so that uncommitted API edits can be tested.
test: $(if $(CI),verify,fmt-check) vet test-unit test-e2e ## Run every check and test suite (what CI runs): unit, integration, and e2e on the local cluster.

.PHONY: test-unit
test-unit: generate manifests envtest-assets $(HELM) $(KUSTOMIZE) $(MONITORING_CRDS) $(CERT_MANAGER_CRDS) ## Run unit and envtest integration tests against the real kube-apiserver.
	go test ./... -count=1
	cd hack/tools/cluster && go test ./local-volume-provisioner/ -count=1

.PHONY: envtest-assets
envtest-assets: ## Build etcd, kube-apiserver and kubectl v$(K8S_VERSION) into bin/k8s.
	hack/build-k8s.sh $(K8S_BIN) etcd kube-apiserver kubectl

.PHONY: bench-seal
bench-seal: ## Benchmark modelguard seal/unseal against cp, age -d and sha256sum on a generated 2 GiB model.
	hack/bench-seal.sh

.PHONY: bench-keyrelease
# The cluster's requests pass every check of the key-release endpoint and are
# refused only by the once-per-unseal-run ledger (test/e2e/keyrelease_bench_test.go);
# the baseline, measured in the same run, is the in-process release over
# loopback TLS with an instant verifier: the protocol, KEK unwrap and HPKE seal.
bench-keyrelease: cluster-deps cluster-images $(HELM) ## Benchmark key release on the local cluster (p50/p99 of 200 sequential and 200 concurrent requests through every check) against the in-process release over loopback TLS.
	go vet -tags e2e ./test/e2e/...
	@out=$$(mktemp -d); trap 'rm -rf "$$out"' EXIT; \
	  go test ./internal/keyrelease/ -run '^$$' -bench 'ReleaseLoopback|SealOpen' -count 1 | tee "$$out/in-process.txt"; \
	  $(LOCAL_CLUSTER) run -- go test -tags e2e ./test/e2e/ -run '^$$' -bench BenchmarkKeyReleaseOnCluster -benchtime 1x -count 1 -timeout 15m | tee "$$out/cluster.txt"; \
	  echo; echo "Key-release latency, load average $$(cut -d' ' -f1-3 /proc/loadavg) at the end:"; \
	  awk 'function metric(name, unit,  i) { for (i = 3; i < NF; i++) if ($$(i + 1) == unit) v[name, unit] = $$i } \
	    /^BenchmarkReleaseLoopback-/ { metric("loopback", "ns/op") } \
	    /^BenchmarkSealOpen-/ { metric("sealopen", "ns/op") } \
	    /^BenchmarkKeyReleaseOnCluster\/(Sequential|Concurrent)-/ { split($$1, n, /[\/-]/); \
	      metric(n[2], "p50-ms"); metric(n[2], "p99-ms"); metric(n[2], "in-flight"); metric(n[2], "load1") } \
	    END { base = v["loopback", "ns/op"] / 1e6; \
	      if (!base || !v["Sequential", "p50-ms"] || !v["Concurrent", "p50-ms"]) { print "bench-keyrelease: a figure is missing from the benchmarks output" > "/dev/stderr"; exit 1 } \
	      printf "in-process release over loopback TLS (BenchmarkReleaseLoopback): %.3f ms\n", base; \
	      printf "in-process HPKE seal and open (BenchmarkSealOpen): %.3f ms\n", v["sealopen", "ns/op"] / 1e6; \
	      split("Sequential Concurrent", subs, " "); \
	      for (j = 1; j <= 2; j++) { s = subs[j]; label = sprintf("cluster %s (%d in flight)", s, v[s, "in-flight"]); \
	        printf "%s p50: %.2f ms\n", label, v[s, "p50-ms"]; \
	        printf "%s p99: %.2f ms\n", label, v[s, "p99-ms"]; \
	        printf "%s p50 / in-process release: %.1f\n", label, v[s, "p50-ms"] / base; \
	        printf "%s p99 / in-process release: %.1f\n", label, v[s, "p99-ms"] / base; \
	        printf "%s load average (1 min) at its end: %.2f\n", label, v[s, "load1"] } }' \
	    "$$out/in-process.txt" "$$out/cluster.txt"

##@ Build

.PHONY: build
build: generate ## Build the manager and the modelguard CLI into bin/.
	CGO_ENABLED=0 go build -trimpath -ldflags '$(GO_LDFLAGS)' -o $(BIN)/manager ./cmd/manager
	CGO_ENABLED=0 go build -trimpath -ldflags '$(GO_LDFLAGS)' -o $(BIN)/modelguard ./cmd/modelguard

$(CONTROLLER_GEN): hack/tools/dev/go.mod hack/tools/dev/go.sum
	cd hack/tools/dev && go build -o $(CONTROLLER_GEN) sigs.k8s.io/controller-tools/cmd/controller-gen

# The -X flags do what Helm's own Makefile does: report the pinned version and
# assume the Kubernetes version we test against when no cluster is asked.
$(HELM): hack/tools/dev/go.mod hack/tools/dev/go.sum
	cd hack/tools/dev && go build -o $(HELM) -ldflags "\
	  -X helm.sh/helm/v3/internal/version.version=$$(go list -m -f '{{.Version}}' helm.sh/helm/v3) \
	  -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$(K8S_MINOR) \
	  -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$(K8S_MINOR)" \
	  helm.sh/helm/v3/cmd/helm

$(KUSTOMIZE): hack/tools/dev/go.mod hack/tools/dev/go.sum
	cd hack/tools/dev && go build -o $(KUSTOMIZE) sigs.k8s.io/kustomize/kustomize/v5

$(MONITORING_CRDS):
	tmp=$$(mktemp -d); \
	  dir=$$(cd "$$tmp" && go mod download -json github.com/prometheus-operator/prometheus-operator@$(PROMETHEUS_OPERATOR_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p'); \
	  rmdir "$$tmp"; test -n "$$dir"; \
	  mkdir -p $@.tmp && cp "$$dir"/example/prometheus-operator-crd/monitoring.coreos.com_{servicemonitors,podmonitors}.yaml $@.tmp/ && \
	  chmod u+w $@.tmp/* && mv $@.tmp $@

$(CERT_MANAGER_CRDS):
	tmp=$$(mktemp -d); \
	  dir=$$(cd "$$tmp" && go mod download -json github.com/cert-manager/cert-manager@$(CERT_MANAGER_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p'); \
	  rmdir "$$tmp"; test -n "$$dir"; \
	  mkdir -p $@.tmp && cp "$$dir"/deploy/crds/cert-manager.io_{certificates,issuers}.yaml $@.tmp/ && \
	  chmod u+w $@.tmp/* && mv $@.tmp $@

.PHONY: tools
tools: $(CONTROLLER_GEN) $(HELM) $(KUSTOMIZE) ## Build controller-gen, helm and kustomize into bin/.

.PHONY: docker-build
docker-build: ## Build the one image that is both the operator and the unseal image (needs Docker; IMG=modelguard:$(VERSION)).
	docker build --build-arg VERSION=$(VERSION) -t $(IMG) .

##@ Deployment

KUBECTL ?= $(K8S_BIN)/kubectl

.PHONY: install
install: manifests envtest-assets ## Install the CRDs into the cluster of the current kubeconfig.
	$(KUBECTL) apply --server-side -k config/crd

.PHONY: uninstall
uninstall: envtest-assets ## Remove the CRDs (and every ProtectedModel and TrainingJob) from the cluster.
	$(KUBECTL) delete --ignore-not-found -k config/crd

.PHONY: deploy
deploy: manifests envtest-assets ## Deploy the operator with kustomize (config/default) to the current cluster.
	$(KUBECTL) apply --server-side -k config/default

.PHONY: undeploy
undeploy: envtest-assets ## Remove the operator deployed by `make deploy`.
	$(KUBECTL) delete --ignore-not-found -k config/default

##@ Local cluster

# A real single-node Kubernetes on this machine (root, Debian) for the demo and
# the e2e tests: see hack/local-cluster. Its state lives outside the clone, in
# /var/lib/modelguard-cluster (MODELGUARD_CLUSTER_DIR), so that any clone finds
# and cleans up after a run that died.
KUBE_ROUTER_VERSION := v2.1.0
# The add-ons' versions are pinned in hack/tools/cluster and hack/tools/kueue;
# build-addon.sh checks that these agree.
COREDNS_VERSION := v1.15.0
KUEUE_VERSION := v0.17.0
KUEUE_MANIFESTS := $(BIN)/kueue/$(KUEUE_VERSION)/kueue.yaml
LOCAL_CLUSTER := $(BIN)/local-cluster -repo $(CURDIR)

.PHONY: cluster-deps
cluster-deps: ## Install the Debian packages the cluster's node needs (containerd, runc, CNI plugins, iptables, ipset, conntrack).
	hack/local-cluster/install-deps.sh

.PHONY: cluster-binaries
cluster-binaries: envtest-assets ## Build kube-scheduler, kube-controller-manager, kubelet, kube-proxy, kube-router, CoreDNS and the harness.
	hack/build-k8s.sh $(K8S_BIN) kube-scheduler kube-controller-manager kubelet kube-proxy
	hack/local-cluster/build-kube-router.sh $(KUBE_ROUTER_VERSION) $(BIN)/kube-router/$(KUBE_ROUTER_VERSION)
	hack/local-cluster/build-addon.sh coredns hack/tools/cluster github.com/coredns/coredns github.com/coredns/coredns $(COREDNS_VERSION) $(BIN)/coredns
	go build -o $(BIN)/local-cluster ./hack/local-cluster

.PHONY: cluster-images
cluster-images: cluster-binaries generate ## Build the image tarballs (pause, demo server, ModelGuard, CoreDNS; Kueue after `make kueue`), the fake GPU plugin and the volume provisioner into bin/images.
	$(LOCAL_CLUSTER) -ldflags '$(GO_LDFLAGS)' images

.PHONY: kueue
kueue: $(KUSTOMIZE) ## Build Kueue (its manager and its default install rendered by kustomize) for `local-cluster kueue`.
	hack/local-cluster/build-addon.sh kueue hack/tools/kueue sigs.k8s.io/kueue sigs.k8s.io/kueue/cmd/kueue $(KUEUE_VERSION) $(BIN)/kueue
	@if [ ! -s $(KUEUE_MANIFESTS) ]; then \
	  dir=$$(cd hack/tools/kueue && go mod download sigs.k8s.io/kueue && go list -m -f '{{.Dir}}' sigs.k8s.io/kueue); \
	  $(KUSTOMIZE) build "$$dir/config/default" > $(KUEUE_MANIFESTS).tmp && mv $(KUEUE_MANIFESTS).tmp $(KUEUE_MANIFESTS); fi

.PHONY: cluster-up
cluster-up: cluster-deps cluster-images ## Bring up the local cluster (needs root); prints the export KUBECONFIG line.
	$(LOCAL_CLUSTER) up

.PHONY: cluster-down
cluster-down: ## Tear the local cluster down and verify that nothing of it is left.
	go run ./hack/local-cluster -repo $(CURDIR) down

.PHONY: cluster-status
cluster-status: ## Show the local cluster's components, node, GPUs, DNS, StorageClasses, Secrets encryption, audit log path, Kueue and kubeconfig path.
	go run ./hack/local-cluster -repo $(CURDIR) status

.PHONY: test-e2e
# Kueue is built for its e2e test (which installs it with `local-cluster kueue`)
# before the images, so that its image tarball is written with the others.
test-e2e: cluster-deps kueue cluster-images $(HELM) ## Run the e2e tests on the local cluster, brought up before and torn down after (even on failure).
	go vet -tags e2e ./test/e2e/...
	$(LOCAL_CLUSTER) run -- go test -tags e2e ./test/e2e/... -count=1 -v -timeout 20m

##@ Demo

.PHONY: demo
demo: build envtest-assets cluster-deps cluster-images ## On the local cluster: operator, samples, a protected model serving, allowed vs denied clients (DEMO_EXIT=1 to exit; DEMO_MODE=control-plane for the no-root plumbing demo).
	go run ./hack/demo
