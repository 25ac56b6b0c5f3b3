# The README's two commands are `make demo` and `make test`; everything they need is here.
CARGO ?= cargo

.PHONY: setup setup-twin build demo test lint fmt bench clean-runs gpu-bundle

setup:
	./scripts/setup-libtorch.sh

# The full PyTorch (CUDA wheel with its dependencies, several GB) that the golden scripts in
# tools/golden and the benchmark twin in tools/pytorch_twin need, in the git-ignored
# .venv-twin. Never part of `make test`: tests read committed golden files.
setup-twin:
	. scripts/torch-version.env && python3 -m venv .venv-twin && \
	  .venv-twin/bin/pip install --quiet "torch==$$TORCH_VERSION" numpy safetensors scikit-image nibabel pydicom \
	    tensorboard onnx onnxruntime onnxscript

# The GPU bundle (no GPU needed to build it): bundle/ with the stripped binary linked against
# libtorch_cuda, configs, the PyTorch twin, ./ncct2ctpa (launcher), ./preflight.sh and
# ./gpu-check.sh. Copy bundle/ to a GPU machine with PyTorch (see torch-version.env) and run
# ./preflight.sh, then ./gpu-check.sh. See README "GPU servers".
gpu-bundle:
	./scripts/gpu-bundle.sh

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

# Benchmark ours vs the PyTorch twin (NCCT2CTPA_PYTHON=.venv-twin/bin/python from `make setup-twin`; see README):
# the training step (and its parts) of the tiny and default presets at 256x256, batch 1 and 4,
# and a whole epoch on the demo phantom with data loading. About an hour on 2 cores; override
# BENCH_ARGS for less (e.g. BENCH_ARGS="--config tiny:256:4 --steps 3 --warmup 1").
BENCH_ARGS ?= --config tiny:256:1 --config tiny:256:4 --config default:256:1 \
	--config default:256:4 --steps 3 --warmup 1 --epoch
bench: build
	./target/release/ncct2ctpa bench $(BENCH_ARGS) --out bench.json
