# Weir: `make demo` runs the main job on the local stack; `make test` runs every test.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/weir/target
export WEIR_CACHE ?= $(HOME)/.cache/weir
STACK := e2e/stack/stack.sh
WORKER := $(CARGO_TARGET_DIR)/debug/weir-worker

.PHONY: all deps build release stack-install stack-up stack-down stack-status test test-unit test-images test-e2e test-failover test-scale faults soak lint images fuzz demo bench bench-compare crds clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	@scripts/prune-target.sh
	cargo build --workspace --all-targets --locked

release: deps
	cargo build --release --locked --workspace --bins

stack-install: deps
	$(STACK) install

stack-up: build stack-install
	$(STACK) up

stack-down:
	$(STACK) down

stack-status:
	$(STACK) status

# Every cargo command selects --workspace: selecting single packages unifies features
# differently and rebuilds RocksDB, librdkafka and DataFusion.

## Unit and component tests (no services needed).
test-unit: build
	python3 -m unittest -q bench/compare/test_results.py
	cargo test --workspace --locked --lib --bins 2>&1 | tee $(WEIR_CACHE)/test-unit.log | grep -E '^(test result|running|error|failures:|---- )' ; exit $${PIPESTATUS[0]}

## End-to-end tests against the real local stack (started if needed).
test-e2e: stack-up
	cargo test --workspace --locked --test '*' -- --test-threads=1 2>&1 | tee $(WEIR_CACHE)/test-e2e.log | grep -E '^(test |test result|running|error|failures:|---- )' ; exit $${PIPESTATUS[0]}

## The broker failover case of the fault suite, on a three-broker cluster started beside the
## stack's broker (replication factor 3, min.insync.replicas 2) and stopped after.
test-failover: stack-up
	e2e/stack/kafka.sh cluster start
	KAFKA_BROKERS=$$(e2e/stack/kafka.sh cluster brokers) WEIR_E2E_REPLICATION=3 cargo test --workspace --locked --test faults -- --ignored three_broker --test-threads=1 --nocapture 2>&1 | tee $(WEIR_CACHE)/test-failover.log | grep -E '^(test |test result|running|error|failures:|---- )|lost 0' ; status=$${PIPESTATUS[0]}; e2e/stack/kafka.sh cluster stop; exit $$status

test: lint test-unit test-images test-e2e test-failover
	@echo "make test: all suites passed"

## Fuzzing (cargo-fuzz on the nightly toolchain), FUZZ_SECONDS per target (default 600).
fuzz:
	scripts/fuzz.sh

## The container images as OCI archives, without a container engine (docs/operations.md).
images: release
	scripts/build-images.sh

## The image build checked in CI, on the debug binaries: each image holds all its program needs.
test-images: build
	WEIR_IMAGE_PROFILE=debug WEIR_IMAGE_OUT=$(WEIR_CACHE)/images scripts/build-images.sh

## The slow tier, not part of `make test`: the operator with 100 workers on a 300-partition
## topic, rescaled 100 -> 50 -> 100 (about 10 minutes on 2 cores; see docs/operations.md,
## "Autoscaling").
test-scale: stack-up
	cargo test --workspace --locked --test operator_k8s -- --ignored --test-threads=1 --nocapture 2>&1 | tee $(WEIR_CACHE)/test-scale.log | grep -E '^(test |test result|running|error|failures:|---- |step |thread )' ; exit $${PIPESTATUS[0]}

## A soak run, not in CI: SOAK_MINUTES (60) at 70 % of capacity with checkpoints and a rescale;
## memory, open files, state and latency over time (bench/soak.sh, docs/benchmarks.md).
soak: release stack-up
	bench/soak.sh

## The fault-injection suite on its own (e2e/tests/faults.rs and the cluster cases of
## operator_k8s.rs: a deleted Pod, an API server restart and S3 down; the operator cut off from
## its workers; the operator killed mid-upgrade and mid-rescale; `make test` runs them too, with
## 30 s outages): S3 and the broker down for 2 minutes, then the three-broker failover.
faults: stack-up
	WEIR_FAULT_OUTAGE_SECS=120 cargo test --workspace --locked --test faults -- --skip three_broker --test-threads=1 --nocapture 2>&1 | tee $(WEIR_CACHE)/faults.log | grep -E '^(test |test result|running|error|failures:|---- |thread )|lost 0' ; exit $${PIPESTATUS[0]}
	cargo test --workspace --locked --test operator_k8s -- a_deleted_pod an_operator_cut_off a_restarted_operator --test-threads=1 --nocapture 2>&1 | tee -a $(WEIR_CACHE)/faults.log | grep -E '^(test |test result|running|error|failures:|---- |thread )|lost 0' ; exit $${PIPESTATUS[0]}
	$(MAKE) test-failover

lint: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	scripts/deny.sh

crds:
	cargo run -q --locked --bin crdgen > crds/streamjob.yaml
	cp crds/streamjob.yaml charts/weir/crds/streamjob.yaml

demo: stack-up
	e2e/demo.sh

bench: release
	bench/run.sh
	[ "$${BENCH_RECOVERY:-1}" = 0 ] || bench/recovery.sh
	[ "$${BENCH_RESCALE:-1}" = 0 ] || bench/rescale.sh
	[ "$${BENCH_COMPARE:-1}" = 0 ] || bench/compare.sh

## Weir vs Apache Flink vs Kafka Streams only (see docs/benchmarks.md).
bench-compare: release
	bench/compare.sh

clean:
	$(STACK) down --purge
