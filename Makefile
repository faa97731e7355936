# Weir: `make demo` runs the main job on the local stack; `make test` runs every test.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/weir/target
export WEIR_CACHE ?= $(HOME)/.cache/weir
STACK := e2e/stack/stack.sh
WORKER := $(CARGO_TARGET_DIR)/debug/weir-worker

.PHONY: all deps build release stack-install stack-up stack-down stack-status test test-unit test-e2e lint demo bench bench-compare crds clean

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

test: lint test-unit test-e2e
	@echo "make test: all suites passed"

lint: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

crds:
	cargo run -q --locked --bin crdgen > crds/streamjob.yaml

demo: stack-up
	e2e/demo.sh

bench: release
	bench/run.sh
	[ "$${BENCH_RECOVERY:-1}" = 0 ] || bench/recovery.sh
	[ "$${BENCH_COMPARE:-1}" = 0 ] || bench/compare.sh

## Weir vs Apache Flink vs Kafka Streams only (see docs/benchmarks.md).
bench-compare: release
	bench/compare.sh

clean:
	$(STACK) down --purge
