# membrane: the two set-up commands are `make demo` and `make test`.
# Each installs what it needs (scripts/install-deps.sh) when it is missing.

# A target directory outside the clone keeps CI and repeated runs incremental.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/membrane-target
CARGO ?= cargo
FUZZ_SECONDS ?= 60

.PHONY: deps build demo test lint bench fuzz clean

deps:
	@./scripts/install-deps.sh

build: deps
	$(CARGO) build --release --workspace --bins

demo: deps
	$(CARGO) build --release -p membrane-cli -p membrane-proxy -p membrane-xds -p membrane-datapath -p membrane-agent
	$(CARGO_TARGET_DIR)/release/membrane demo

# Doc tests first, so the run closes on nextest's summary of every test.
test: deps
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --doc
	$(CARGO) nextest run --workspace --no-fail-fast

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: build
	./bench/run.sh

fuzz:
	./scripts/fuzz.sh $(FUZZ_SECONDS)

clean:
	$(CARGO) clean
