# The two commands of the README. Each installs what is missing first (scripts/setup.sh is
# quick when everything is already there).

CARGO ?= cargo

.PHONY: setup demo test lint build

setup:
	@scripts/setup.sh

## Build and run the demo: the whole built pipeline on the bundled data, private database.
demo: setup
	$(CARGO) run --release --locked -p llamagen-cli --bin llamagen -- demo

## Formatting, lints, and the whole test suite.
test: setup lint
	$(CARGO) test --workspace --locked

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

build: setup
	$(CARGO) build --workspace --release --locked
