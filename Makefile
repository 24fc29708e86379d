# The two entry points of the README. Each installs what it needs first.
PACKAGE := .cache/packages/smollm2-135m-instruct
GGUF := .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
HEARTH := target/release/hearth
PROMPT ?= Give me three tips for writing clear code.
# Vulkan's loader wants a private runtime directory; without one it prints a harmless warning.
export XDG_RUNTIME_DIR ?= /tmp/hearth-xdg-$(shell id -u)

PORT ?= 8080

.PHONY: demo chat test setup setup-demo model lint wasm browser-test

## demo: build the wasm package, download SmolLM2-135M-Instruct and convert it, then serve the demo
## page (www/) on http://127.0.0.1:$(PORT)/ until Ctrl+C. Open the printed URL in Chrome.
demo: setup-demo wasm $(PACKAGE)/manifest.json
	node scripts/serve-demo.mjs --port $(PORT)

## chat: the same model from the command line (native GPU, or the CPU without one).
chat: setup $(PACKAGE)/manifest.json
	$(HEARTH) generate --model $(PACKAGE) --chat --prompt "$(PROMPT)" --max-tokens 200

## test: formatting, lints and the whole test suite: Rust (native, on lavapipe where there is no
## GPU), each fuzz target for a minute, then the npm package in headless Chromium (WebGPU on SwiftShader).
test: setup model lint
	cargo test --release $(TEST_TARGETS)
	bash scripts/test-wasm-kernels.sh
	bash scripts/fuzz.sh
	$(MAKE) browser-test HEARTH_TARGETS="$(TEST_TARGETS)"

## browser-test: build the wasm into pkg/ and run tests/browser/ against the real package.
browser-test: wasm $(PACKAGE)/manifest.json
	node --test --test-concurrency=1 tests/browser/

wasm:
	bash scripts/build-wasm.sh

setup:
	@bash scripts/setup.sh
	@bash scripts/browser-setup.sh
	@mkdir -p -m 0700 $(XDG_RUNTIME_DIR)

setup-demo:
	@bash scripts/setup.sh
	@bash scripts/browser-setup.sh --no-chromium
	@mkdir -p -m 0700 $(XDG_RUNTIME_DIR)

model:
	@bash scripts/fetch-smollm2.sh
	@bash scripts/fetch-gemma3.sh
	@bash scripts/split-ggufs.sh
	@bash scripts/fetch-minilm.sh

lint:
	cargo fmt --all -- --check
	cargo fmt --manifest-path fuzz/Cargo.toml -- --check
	cargo clippy --release --workspace --all-targets -- -D warnings
	# The engine as the browser will build it: no threads, async GPU read-backs only.
	cargo clippy --release --target wasm32-unknown-unknown -p hearth-core -p hearth-gpu -p hearth-web -- -D warnings
	# The threaded browser build's own code (the CPU engine's pool), with the relaxed-SIMD kernels.
	cargo clippy --release --target wasm32-unknown-unknown -p hearth-web --features threads,relaxed-simd -- -D warnings

# What `cargo build` builds to get $(HEARTH). `make test` asks for the test build's own targets:
# the dependencies' features depend on what else is in the build, so `-p hearth-cli` alone would
# compile them all a second time (5 minutes) where the test build's CLI is already there.
TEST_TARGETS := --workspace --lib --bins --tests
HEARTH_TARGETS ?= -p hearth-cli
$(HEARTH): FORCE
	cargo build --release $(HEARTH_TARGETS)

$(PACKAGE)/manifest.json: $(HEARTH)
	@bash scripts/fetch-smollm2.sh
	$(HEARTH) convert $(GGUF) --out $(PACKAGE) --force

FORCE:
