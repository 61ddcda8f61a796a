# audit-operator: the commands a user and CI run. `make help` lists them.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo

.PHONY: help
help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-20s %s\n", $$1, $$2}'

.PHONY: testenv
testenv: ## Build (first run) or reuse the pinned test servers; prints their directory last.
	@bash hack/testenv.sh

.PHONY: lint
lint: ## cargo fmt --check, clippy with warnings as errors, shellcheck and hadolint.
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	shellcheck --severity=warning --external-sources hack/*.sh hack/lib/*.sh hack/images/*.sh
	bash hack/images/hadolint.sh

.PHONY: demo
demo: ## A local Kubernetes node and control plane, NATS, the operator and its consumer pods, until Ctrl-C.
	bin_dir=$$(bash hack/testenv.sh demo | tail -n 1); \
	images_dir=""; \
	if [[ $$EUID -eq 0 ]]; then images_dir=$$(bash hack/images.sh | tail -n 1); fi; \
	$(CARGO) build --workspace --bins --locked; \
	AUDIT_TESTENV_BIN="$$bin_dir" AUDIT_IMAGES_DIR="$$images_dir" $(CARGO) run --quiet --locked -p audit-tests --bin audit-demo

.PHONY: test
test: ## Everything CI runs: provisioning, images, lint, unit tests, tests on real servers and a real node.
	bin_dir=$$(bash hack/testenv.sh | tail -n 1); \
	images_dir=$$(bash hack/images.sh | tail -n 1); \
	$(MAKE) --no-print-directory lint; \
	$(CARGO) build --workspace --bins --locked; \
	AUDIT_TESTENV_BIN="$$bin_dir" AUDIT_IMAGES_DIR="$$images_dir" $(CARGO) test --workspace --locked

.PHONY: chaos
chaos: ## The long chaos soak on the real node (100,000 events, every fault 3 times); figures for docs/reliability.md.
	bin_dir=$$(bash hack/testenv.sh | tail -n 1); \
	images_dir=$$(bash hack/images.sh | tail -n 1); \
	$(CARGO) build --workspace --bins --locked; \
	AUDIT_TESTENV_BIN="$$bin_dir" AUDIT_IMAGES_DIR="$$images_dir" \
	AUDIT_CHAOS_EVENTS=$${AUDIT_CHAOS_EVENTS:-100000} AUDIT_CHAOS_RATE=$${AUDIT_CHAOS_RATE:-200} \
	AUDIT_CHAOS_ROUNDS=$${AUDIT_CHAOS_ROUNDS:-3} AUDIT_CHAOS_REPORT=$${AUDIT_CHAOS_REPORT:-$(CURDIR)/target/chaos-report.md} \
	$(CARGO) test --locked -p audit-tests --test node_chaos -- --nocapture

.PHONY: testnode-clean
testnode-clean: ## Remove what a test node (running, finished or crashed) left on this machine (root).
	bash hack/testnode.sh down

.PHONY: crds
crds: ## Regenerate crds/ and the Helm chart's copy from the Rust types.
	$(CARGO) run --quiet --locked --bin audit-operator -- crd --output-dir crds
	mkdir -p deploy/helm/audit-operator/crds
	$(CARGO) run --quiet --locked --bin audit-operator -- crd --output-dir deploy/helm/audit-operator/crds

.PHONY: api-reference
api-reference: ## Regenerate docs/reference/api.md from the CRDs in crds/ (tests/src/api_reference.rs).
	$(CARGO) run --quiet --locked -p audit-tests --bin api-reference

.PHONY: kustomize-base
kustomize-base: ## Regenerate the Kustomize base and production budget from the Helm chart (tests/src/manifests.rs).
	bin_dir=$$(bash hack/testenv.sh | tail -n 1); \
	AUDIT_TESTENV_BIN="$$bin_dir" AUDIT_UPDATE_FIXTURES=1 $(CARGO) test --locked -p audit-tests --test deploy_manifests the_kustomize_base_is_generated_from_the_chart

.PHONY: argocd-cm
argocd-cm: ## Regenerate deploy/argocd/argocd-cm.yaml from deploy/argocd/health.lua.
	bash hack/argocd-cm.sh > deploy/argocd/argocd-cm.yaml

.PHONY: health-fixtures
health-fixtures: ## Recapture tests/fixtures/health/ (status objects the operator writes) on the test servers.
	bin_dir=$$(bash hack/testenv.sh | tail -n 1); \
	$(CARGO) build --workspace --bins --locked; \
	AUDIT_TESTENV_BIN="$$bin_dir" AUDIT_UPDATE_FIXTURES=1 $(CARGO) test --locked -p audit-tests --test deploy_health the_fixtures_are_what_the_operator_writes

.PHONY: bench-operator
bench-operator: ## The operator at scale: N = 100, 300, 1000 streams + consumers, with and without a concurrency limit (docs/benchmarks.md).
	bin_dir=$$(bash hack/testenv.sh | tail -n 1); \
	$(CARGO) build --release --locked -p audit-operator -p audit-tests --bin audit-operator --bin audit-bench-operator; \
	report=$(CURDIR)/target/bench-operator.md; : >"$$report"; \
	for n in $${AUDIT_BENCH_COUNTS:-100 300 1000}; do \
	  for concurrency in $${AUDIT_BENCH_CONCURRENCY:-0 8}; do \
	    AUDIT_TESTENV_BIN="$$bin_dir" target/release/audit-bench-operator "$$n" "$$concurrency" $${AUDIT_BENCH_IDLE:-60} | tee -a "$$report"; \
	  done; \
	done; \
	echo "bench-operator: figures in $$report"

.PHONY: bench-operator-pods
bench-operator-pods: ## The operator with real pods on the node: as many 1-replica AuditConsumers as it holds (root; docs/benchmarks.md).
	bin_dir=$$(bash hack/testenv.sh | tail -n 1); \
	images_dir=$${AUDIT_IMAGES_DIR:-$$(bash hack/images.sh | tail -n 1)}; \
	$(CARGO) build --release --locked -p audit-operator -p audit-tests --bin audit-operator --bin audit-bench-operator; \
	report=$(CURDIR)/target/bench-operator-pods.md; \
	AUDIT_TESTENV_BIN="$$bin_dir" AUDIT_IMAGES_DIR="$$images_dir" target/release/audit-bench-operator \
	  --pods $${AUDIT_BENCH_PODS:-max} $${AUDIT_BENCH_CONCURRENCY:-8} $${AUDIT_BENCH_IDLE:-60} | tee "$$report"; \
	echo "bench-operator-pods: figures in $$report"

.PHONY: bench-autoscaling
bench-autoscaling: ## Autoscaling on the real node: a burst drained by 1 pod vs 1-4, the first event from zero, the cost at zero (root; docs/benchmarks.md).
	bin_dir=$$(bash hack/testenv.sh | tail -n 1); \
	images_dir=$${AUDIT_IMAGES_DIR:-$$(bash hack/images.sh | tail -n 1)}; \
	$(CARGO) build --release --locked -p audit-operator -p audit-tests --bin audit-operator --bin audit-bench-operator; \
	report=$(CURDIR)/target/bench-autoscaling.md; \
	AUDIT_TESTENV_BIN="$$bin_dir" AUDIT_IMAGES_DIR="$$images_dir" target/release/audit-bench-operator \
	  --autoscaling $${AUDIT_BENCH_BURST:-200000} | tee "$$report"; \
	echo "bench-autoscaling: figures in $$report"

.PHONY: bench-consumer
bench-consumer: ## Consumer benchmarks (criterion + throughput against a real nats-server).
	bash hack/bench-consumer.sh

.PHONY: bench-latency
bench-latency: ## The consumer's publish-to-line latency at fixed rates, beside a bare async-nats loop.
	bash hack/bench-latency.sh

.PHONY: fuzz
fuzz: ## The consumer's property tests of untrusted input (consumer/tests/properties_*.rs) with PROPTEST_CASES (default 100000) cases each.
	PROPTEST_CASES=$${PROPTEST_CASES:-100000} $(CARGO) test --locked --no-fail-fast -p audit-consumer --test properties_format --test properties_verify
