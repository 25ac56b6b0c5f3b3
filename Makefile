# The README's two commands are `make demo` and `make test`; everything they need is here.
CARGO ?= cargo

.PHONY: setup build demo test lint fmt bench clean-runs

setup:
	./scripts/setup-libtorch.sh

build: setup
	$(CARGO) build --release -p cli

# Main job: train the tiny preset on built-in phantom data, on the CPU.
demo: build
	./target/release/ncct2ctpa train

test: setup
	$(CARGO) test --workspace

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Benchmark ours vs the PyTorch twin (NCCT2CTPA_PYTHON=a python with torch 2.13; see README).
bench: build
	./target/release/ncct2ctpa bench --out bench.json
